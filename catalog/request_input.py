"""Request input that no view should have to guard against, refused with a clear 4xx, and every
error under /api/ in the API's one JSON shape (catalog.api.errors), whoever produced it.

* URLs longer than MAX_URL_LENGTH: 414.
* A NUL character in the query string (PostgreSQL text cannot hold one; filters such as the
  admin's ``?city=`` would otherwise reach the database with it): 400.
* Django's own refusals (unknown path, wrong method outside DRF, oversized or malformed bodies,
  CSRF failures, server errors) under /api/: rewritten into the error shape, status kept.
Bodies are refused where they are parsed (catalog.uploads, catalog.api.parsers, the handlers
below), never read here.
"""

from __future__ import annotations

from http import HTTPStatus

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _, gettext_lazy

API_PREFIX = "/api/"
MAX_URL_LENGTH = 8192  # what common proxies accept (nginx: 8 KiB headers); longer URLs are mistakes

_CODES = {400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
          405: "method_not_allowed", 406: "not_acceptable", 413: "too_large", 414: "uri_too_long",
          415: "unsupported_media_type", 429: "throttled", 500: "server_error", 503: "unavailable"}
_MESSAGES = {404: gettext_lazy("There is no API endpoint at this address; see /api/schema/."),
             500: gettext_lazy("The server failed to answer this request; it has been logged.")}


# Titles of the error pages (HTTPStatus' phrases are English only); the others fall back to the phrase.
_STATUS_TITLES = {400: gettext_lazy("Bad Request"), 401: gettext_lazy("Unauthorized"), 403: gettext_lazy("Forbidden"),
                  404: gettext_lazy("Not Found"), 405: gettext_lazy("Method Not Allowed"),
                  413: gettext_lazy("Request Entity Too Large"), 414: gettext_lazy("Request-URI Too Long"),
                  415: gettext_lazy("Unsupported Media Type"), 429: gettext_lazy("Too Many Requests"),
                  500: gettext_lazy("Internal Server Error"), 503: gettext_lazy("Service Unavailable")}


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def refusal(request: HttpRequest, status: int, message: str, code: str | None = None) -> HttpResponse:
    """A 4xx/5xx: the JSON error shape under /api/, a page in the site's style elsewhere."""
    from catalog.api.errors import error_response

    if is_api(request):
        return error_response(status, code or _CODES.get(status, "error"), str(message))
    title = _phrase(status)
    html = render_to_string("request_error.html", {"title": title, "message": message}, request=request)
    return HttpResponse(html, status=status)


class RequestInputMiddleware:
    """First in MIDDLEWARE, so that it also sees the responses of every other middleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # This runs ahead of LocaleMiddleware: its refusals pick the request's language themselves.
        with translation.override(translation.get_language_from_request(request)):
            refused = self._refuse(request)
        response = refused or self.get_response(request)
        if is_api(request) and response.status_code >= 400 and not _is_json(response):
            response = _as_api_error(response)
        return response

    def _refuse(self, request: HttpRequest) -> HttpResponse | None:
        if len(request.get_full_path()) > MAX_URL_LENGTH:
            return refusal(request, 414, _("The URL is longer than %(limit)d characters.") % {"limit": MAX_URL_LENGTH})
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            return refusal(request, 400, _("The query string contains a NUL character."), code="invalid")
        return None


def _phrase(status: int) -> str:
    if status in _STATUS_TITLES:
        return str(_STATUS_TITLES[status])
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else _("Error")


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip() in ("application/json", "application/problem+json")


def _as_api_error(response: HttpResponse) -> HttpResponse:
    """The same status (and headers such as Allow, Retry-After) with a JSON error body."""
    from catalog.api.errors import error_response

    status = response.status_code
    message = str(_MESSAGES.get(status, f"{_phrase(status)}."))
    if status == 403 and b"CSRF" in getattr(response, "content", b""):
        message = _("CSRF check failed: send the CSRF token with session-authenticated requests, or use a token.")
    rewritten = error_response(status, _CODES.get(status, "error"), message)
    for header in ("Allow", "Retry-After", "WWW-Authenticate", "Vary"):
        if header in response:
            rewritten[header] = response[header]
    return rewritten


# --------------------------------------------------------------------------
# Django's error handlers (imagesearch/urls.py): refused bodies keep their reason


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    from catalog.api.errors import request_problem

    problem = request_problem(exception)
    if problem:
        status, code, message = problem
        return refusal(request, status, message, code=code)
    return refusal(request, 400, _("The request could not be understood."))


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    if is_api(request):
        return refusal(request, 404, _MESSAGES[404])
    html = render_to_string("404.html", {"path": request.path}, request=request)
    return HttpResponse(html, status=404)


def forbidden(request: HttpRequest, exception=None) -> HttpResponse:
    """handler403: Django's default is a bare English "403 Forbidden"; this says why, in the site's style."""
    reason = str(exception) if exception is not None and str(exception) else ""
    return refusal(request, 403, reason or _("Your account may not open this page."))


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api(request):
        return refusal(request, 500, _MESSAGES[500])
    # 500.html stands alone (no base.html, no context processors: those may be what failed); if even
    # it fails, plain text.
    try:
        body = render_to_string("500.html")
    except Exception:  # noqa: BLE001 - a server error page must not raise
        title, message = _("Server error"), _("The server failed to answer; it has been logged.")
        body = f"<h1>{title}</h1><p>{message}</p>"
    return HttpResponse(body, status=500)
