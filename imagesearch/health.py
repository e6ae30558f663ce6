"""Probes for supervisors and load balancers: tiny JSON, no login, no templates.

/healthz: the process answers (liveness). /readyz: the database answers and the CLIP model is
loaded (readiness); the first call starts loading the model in the background.

Answered by ``HealthCheckMiddleware``, first in MIDDLEWARE: a probe from inside the container
(``Host: 127.0.0.1``, plain http) must not be refused by ALLOWED_HOSTS nor redirected to https by
the production switch."""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

_loader: threading.Thread | None = None
_loader_lock = threading.Lock()
_load_error: str | None = None


class HealthCheckMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        probe = PROBES.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        response = probe(request)
        # Answered ahead of SecurityMiddleware, which therefore never sees the probes' responses.
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


@never_cache
@require_safe
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request):
    checks = {"database": _database(), "model": _model()}
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503)


PROBES = {"/healthz": healthz, "/readyz": readyz}


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def _model() -> str:
    from catalog import embedder
    from catalog.spaces import serving_config

    # The model searches use (after a switch, the active space's): the configured one would load a third.
    config = serving_config()
    if embedder.is_loaded(config):  # a peek, never triggers a load here
        return "ok"
    _start_loading(config)
    return f"failed: {_load_error}" if _load_error else "loading"


def _start_loading(config) -> None:
    global _loader
    with _loader_lock:
        if _loader is None or not _loader.is_alive():
            _loader = threading.Thread(target=_load, args=(config,), name="readyz-model-load", daemon=True)
            _loader.start()


def _load(config) -> None:
    global _load_error
    from catalog.embedder import get_embedder

    try:
        get_embedder(config)
        _load_error = None
    except Exception as exc:  # noqa: BLE001 - reported by /readyz, retried on its next call
        _load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
