"""While the database cannot be reached, answer 503 (and recover by itself) instead of a 500.

Django opens a new connection for the next request (CONN_HEALTH_CHECKS drops broken ones),
so nothing needs resetting when the database is back."""

from __future__ import annotations

import logging
import sys

from django.http import HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

from catalog.api.errors import (DATABASE_ERRORS, DATABASE_UNAVAILABLE, DISK_FULL, RETRY_AFTER_SECONDS,
                                 error_response, is_disk_full)
from catalog.request_input import is_api

logger = logging.getLogger(__name__)


def database_unavailable_response(request) -> HttpResponse:
    """503 in the API's one error shape under /api/, a short page elsewhere."""
    if is_api(request):
        response = error_response(503, "database_unavailable", DATABASE_UNAVAILABLE)
    else:
        # Rendered without the request: the site's context (user, messages) would need the database.
        response = HttpResponse(render_to_string("503_database.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def disk_full_response(request) -> HttpResponse:
    """507 with the message (the error shape under /api/): an upload met a full disk (or quota)."""
    from catalog.request_input import refusal

    return refusal(request, 507, str(DISK_FULL), code="storage_full")


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request, exception):
        if is_disk_full(exception):  # also a full disk: a page's upload that could not be stored
            return disk_full_response(request)
        if not isinstance(exception, DATABASE_ERRORS):
            return None
        logger.warning("database unavailable (%s %s): %s", request.method, request.path,
                       str(exception).splitlines()[0] if str(exception) else type(exception).__name__)
        return database_unavailable_response(request)


def server_error(request) -> HttpResponse:
    """handler500. Django calls it inside its ``except`` block: a database outage met outside a
    view (a session saved by middleware, say) is a 503 like any other, not a 500."""
    from catalog.request_input import server_error as plain_server_error

    if isinstance(sys.exc_info()[1], DATABASE_ERRORS):
        return database_unavailable_response(request)
    if is_disk_full(sys.exc_info()[1]):  # e.g. spooling an upload while CsrfViewMiddleware reads the form
        return disk_full_response(request)
    return plain_server_error(request)
