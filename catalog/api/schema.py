"""OpenAPI generation: every operation documents the error responses it can give, all in the one
error shape (component "Error", catalog.api.errors), so generated clients can decode them."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.openapi import AutoSchema
from rest_framework.permissions import SAFE_METHODS, AllowAny

from catalog.api.errors import ErrorSerializer

ERROR_DESCRIPTIONS = {
    400: "Invalid input (each bad or unknown field is named in error.fields).",
    401: "Not logged in: send \"Authorization: Bearer <token>\" (or use a session).",
    403: "Logged in, but not allowed to do this.",
    404: "No such object (or page).",
    413: "The request body or an uploaded file is too large.",
    414: "The URL is too long.",
    415: "Unsupported Content-Type for the request body.",
    429: "Too many requests: wait for Retry-After seconds.",
    503: "The model or the database is unavailable for a moment: retry after Retry-After seconds.",
    507: "The server has no room to store the request's files (disk full); nothing was kept.",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
_BODY_METHODS = ("POST", "PUT", "PATCH")


class ApiAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self.error_statuses():
            response = self._get_response_for_code(ErrorSerializer, str(status), direction=direction)
            response["description"] = ERROR_DESCRIPTIONS[status]
            if status in (429, 503):
                response["headers"] = _RETRY_AFTER
            responses.setdefault(str(status), response)
        return responses

    def get_auth(self):
        """With IMAGESEARCH_PUBLIC_READ on, reading needs no credentials: say so ({} = anonymous),
        as drf-spectacular does only for its own permission classes."""
        auth = super().get_auth()
        method = self.method.upper()
        reads = method in SAFE_METHODS or method in getattr(self.view, "read_methods", ())
        if settings.PUBLIC_READ and reads and {} not in auth:
            auth.append({})
        return auth

    def error_statuses(self) -> list[int]:
        """What this operation can answer besides success: 400 (unknown query parameters are refused
        everywhere), 414 (URL length) and 503 always; the rest as the view's permissions, throttles, path and body imply."""
        view, method = self.view, self.method.upper()
        statuses = {400, 414, 503}
        if not all(isinstance(permission, AllowAny) for permission in view.get_permissions()):
            statuses |= {401, 403}
        paginated = method == "GET" and self._get_paginator() is not None  # an invalid page is a 404
        if "{" in self.path or paginated or 404 in getattr(view, "error_statuses", ()):
            statuses.add(404)
        if method in _BODY_METHODS:
            statuses |= {413, 415, 507}  # 507: a file of the body met a full disk (spooled or stored)
        if getattr(view, "throttle_classes", None):
            statuses.add(429)
        return sorted(statuses)
