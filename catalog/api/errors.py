"""One error format for every API failure:

    {"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"top_k": ["..."]}}}

``fields`` is present only for validation errors.
"""

from __future__ import annotations

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.embedder import EmbedderUnavailable
from catalog.search import SearchError


def error_body(http_status: int, code: str, message: str, fields: dict | None = None) -> dict:
    body = {"status": http_status, "code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def api_exception_handler(exc, context):
    if isinstance(exc, SearchError):
        exc = exceptions.ValidationError({"non_field_errors": [str(exc)]})
    if isinstance(exc, EmbedderUnavailable):
        return Response(error_body(503, "model_unavailable", str(exc)), status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _field_messages(exc.detail)
        first = next(iter(fields.values()))[0] if fields else "Invalid input."
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
