"""Durable background import jobs, in layers that only import downwards:

``requests``  the web side: validate, create a job and its items, retry, resume, errors
``tasks``     the task-queue entry points (django-tasks) and the queue the worker schedules with
``builds``    build an embedding space in the background (a peer of ``worker``)
``worker``    run a job: claim chunks of items, expand archives, feed the ingestion pipeline
``claims``    which worker may work on which items (claims with leases), finishing and failing jobs
``payloads``  uploaded bytes kept while a job runs

Bytes-to-stored-image (``catalog.ingest``) never imports from here.
"""
