"""One error format for every API failure:

    {"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"top_k": ["..."]}}}

``fields`` is present only for validation errors. DRF's exceptions come through
``api_exception_handler``; everything Django answers by itself under /api/ (unknown paths,
over-long URLs, refused bodies, server errors) is rewritten by ``catalog.request_input``.
"""

from __future__ import annotations

import errno

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.utils.translation import gettext as _, gettext_lazy
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.embedder import EmbedderUnavailable
from catalog.search import ImageNotFound, SearchBusy, SearchError
from catalog.uploads import BodyTooLarge, body_too_large_message


# The disk (or the user's quota, or the largest file it allows) is full while a request writes:
# 507, never a 500; nothing of the request is kept (catalog.jobs.requests.create_job).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
DISK_FULL = gettext_lazy("The server has no room to store this upload right now; nothing was kept. Try again "
                         "later, or ask the administrator to free disk space.")


def is_disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


DATABASE_UNAVAILABLE = gettext_lazy("The database cannot be reached right now; try again in a few seconds.")
DATABASE_ERRORS = (OperationalError, InterfaceError)  # down or restarting: 503, never 500
RETRY_AFTER_SECONDS = 5


def error_body(http_status: int, code: str, message: str, fields: dict | None = None) -> dict:
    body = {"status": http_status, "code": code, "message": str(message)}  # str(): lazy translations
    if fields:
        body["fields"] = fields
    return {"error": body}


def error_response(http_status: int, code: str, message: str) -> JsonResponse:
    """The error shape as a plain Django response (for answers given outside DRF's views)."""
    return JsonResponse(error_body(http_status, code, message), status=http_status)


def request_problem(exc) -> tuple[int, str, str] | None:
    """Status, code and message for Django's refusals of a request body, or None."""
    if isinstance(exc, RequestDataTooBig):
        return 413, "too_large", str(exc) if isinstance(exc, BodyTooLarge) else body_too_large_message()
    if isinstance(exc, TooManyFilesSent):
        return 400, "too_many_files", (_("At most %(limit)d files per request.")
                                       % {"limit": settings.DATA_UPLOAD_MAX_NUMBER_FILES})
    if isinstance(exc, TooManyFieldsSent):
        return 400, "too_many_fields", (_("At most %(limit)d fields per request.")
                                        % {"limit": settings.DATA_UPLOAD_MAX_NUMBER_FIELDS})
    return None


def api_exception_handler(exc, context):
    problem = request_problem(exc)
    if problem:
        return Response(error_body(*problem), status=problem[0])
    if isinstance(exc, SearchBusy):
        return Response(error_body(503, "busy", str(exc)), status=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, ImageNotFound):
        exc = exceptions.NotFound(str(exc))
    elif isinstance(exc, SearchError):
        exc = exceptions.ValidationError({"non_field_errors": [str(exc)]})
    if isinstance(exc, EmbedderUnavailable):
        return Response(error_body(503, "model_unavailable", str(exc)), status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if is_disk_full(exc):  # storing an upload (or spooling it to a temporary file) ran out of room
        return Response(error_body(507, "storage_full", DISK_FULL), status=status.HTTP_507_INSUFFICIENT_STORAGE)
    if isinstance(exc, DATABASE_ERRORS):  # the database is down or restarting
        return Response(error_body(503, "database_unavailable", DATABASE_UNAVAILABLE),
                        status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _field_messages(exc.detail)
        first = next(iter(fields.values()))[0] if fields else _("Invalid input.")
        response.data = error_body(response.status_code, "invalid", first, fields)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        response.data = error_body(response.status_code, code if isinstance(code, str) else "error", str(detail))
    return response


def _field_messages(detail, prefix: str = "") -> dict[str, list[str]]:
    """Flatten DRF's nested error detail into {"field" or "field.sub": [messages]}."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_field_messages(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_field_messages(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


# --------------------------------------------------------------------------
# the shape, for the OpenAPI schema (catalog.api.schema adds it to every operation)


class ErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text="The HTTP status, repeated.")
    code = serializers.CharField(help_text="Machine-readable reason, e.g. invalid, not_found, throttled.")
    message = serializers.CharField(help_text="What went wrong, for people.")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="Validation errors per field (\"field\" or \"field.index\").")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
