"""ASGI entry point: bin/serve runs it under uvicorn, so slow clients cost a coroutine, not a thread.

Django runs each request's sync code in a thread of its own (asgiref ThreadSensitiveContext), so a
connection kept in that thread would be orphaned when it ends: Django's docs say to turn persistent
connections off under ASGI, which is the default here (set IMAGESEARCH_DB_CONN_MAX_AGE to override)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
os.environ.setdefault("IMAGESEARCH_DB_CONN_MAX_AGE", "0")
application = get_asgi_application()
