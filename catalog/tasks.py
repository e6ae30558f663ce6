"""Background tasks (django-tasks; run by ``manage.py db_worker``). They receive ids only."""

from __future__ import annotations

import uuid
from datetime import datetime

from django_tasks import task


@task()
def run_import(job_id: str) -> str:
    """Work on import job ``job_id`` until it is finished. Safe to run any number of times:
    a finished job is left alone and a job another live worker holds is looked at again later."""
    from catalog.ingest.runner import run_job

    return run_job(uuid.UUID(job_id))


def enqueue_import(job_id: uuid.UUID, *, run_after: datetime | None = None) -> None:
    """Queue ``run_import`` for the job. Call from ``transaction.on_commit`` so the worker
    never sees a task before the rows it needs."""
    if run_after is not None:
        if not run_import.get_backend().supports_defer:
            return  # e.g. the immediate backend: nothing runs later, nothing to schedule
        run_import.using(run_after=run_after).enqueue(str(job_id))
    else:
        run_import.enqueue(str(job_id))


def has_queued_import(job_id: uuid.UUID) -> bool:
    """Whether a ``run_import`` for the job waits in the database queue (DB backend only)."""
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    if not isinstance(run_import.get_backend(), DatabaseBackend):
        return False
    return DBTaskResult.objects.filter(status="READY", task_path=run_import.module_path,
                                       args_kwargs__args__0=str(job_id)).exists()
