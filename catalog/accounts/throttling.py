"""Request throttles counted in the shared (database) cache, so the limits hold across every web
process and machine. One rate per scope (settings.THROTTLE_RATES), counted per user, or per
client address for anonymous callers. API views use ScopeThrottle; pages (search, import, login,
admin login) use ``throttled_page``/``throttle_posts``, which count in the same keys, so the API
and the pages share one budget per scope."""

from __future__ import annotations

import math
from functools import wraps
from types import SimpleNamespace

from django.conf import settings
from django.core.cache import caches
from django.utils.translation import ngettext
from rest_framework.throttling import SimpleRateThrottle


def client_ip(request) -> str:
    """The caller's address: REMOTE_ADDR, or the X-Forwarded-For entry set by the nearest of
    IMAGESEARCH_PROXY_COUNT trusted proxies (entries further left can be forged by the client)."""
    remote = request.META.get("REMOTE_ADDR", "")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if not settings.PROXY_COUNT or not forwarded:
        return remote
    addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
    return addresses[-min(settings.PROXY_COUNT, len(addresses))] if addresses else remote


class ScopeThrottle(SimpleRateThrottle):
    """Like DRF's ScopedRateThrottle, but the scope may depend on the method
    (``throttle_scopes = {"POST": "upload"}`` on the view; ``throttle_scope`` for all methods), and
    rates are read at request time (DRF binds them at import, which settings overrides cannot reach)."""

    def __init__(self):
        pass  # the rate depends on the view: set in allow_request

    @property
    def cache(self):
        return caches["shared"]

    def allow_request(self, request, view) -> bool:
        scopes = getattr(view, "throttle_scopes", {})
        self.scope = scopes.get(request.method, getattr(view, "throttle_scope", None))
        if not self.scope:
            return True
        self.rate = settings.THROTTLE_RATES[self.scope]
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str:
        ident = request.user.pk if request.user and request.user.is_authenticated else client_ip(request)
        kind = "user" if request.user and request.user.is_authenticated else "anon"
        return f"throttle:{self.scope}:{kind}:{ident}"


def throttle_wait(request, scope: str, *, user=None) -> int | None:
    """Count the request in ``scope``: None while the scope allows it, else the seconds to wait.
    ``user``: who to count when it is not ``request.user`` (e.g. a page request authenticated by
    a bearer token)."""
    counted = _AsUser(request, user) if user is not None and user is not getattr(request, "user", None) else request
    throttle = ScopeThrottle()
    if throttle.allow_request(counted, SimpleNamespace(throttle_scope=scope)):
        return None
    return max(1, math.ceil(throttle.wait() or 1))


def too_many_requests(wait: int) -> str:
    return ngettext("Too many requests; try again in %(wait)d second.",
                    "Too many requests; try again in %(wait)d seconds.", wait) % {"wait": wait}


def throttled_page(request, scope: str, *, user=None):
    """For plain Django views: None while ``scope`` allows the request (and counts it), else a 429
    page (the JSON error shape under /api/) with Retry-After."""
    from catalog.request_input import refusal

    wait = throttle_wait(request, scope, user=user)
    if wait is None:
        return None
    response = refusal(request, 429, too_many_requests(wait))
    response["Retry-After"] = str(wait)
    return response


def throttle_posts(scope: str):
    """Decorator: POSTs to the view are counted in ``scope`` (login forms: "login")."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "POST":
                refused = throttled_page(request, scope)
                if refused is not None:
                    return refused
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


class _AsUser:
    """The request, seen as made by ``user`` (the throttle reads only .user and .META)."""

    def __init__(self, request, user):
        self._request, self.user = request, user

    def __getattr__(self, name):
        return getattr(self._request, name)
