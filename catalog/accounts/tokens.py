"""API tokens (django-rest-knox): stored as SHA-512 digests; the plain token exists only in the
answer to its creation. A token is named by its first characters, its "prefix"."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import QuerySet
from knox.models import AuthToken
from knox.settings import knox_settings


class TokenError(ValueError):
    """The token request is unusable; ``str(exc)`` says why."""


def create_token(*, user, expires_days: int | None = None) -> tuple[AuthToken, str]:
    """A new token for ``user``, expiring after ``expires_days`` (at most the configured TTL;
    None: the TTL). Returns the stored row and the plain token, which is not kept anywhere."""
    ttl = knox_settings.TOKEN_TTL
    if expires_days is not None:
        if expires_days < 1:
            raise TokenError("expires_days must be at least 1.")
        if ttl is not None and timedelta(days=expires_days) > ttl:
            raise TokenError(f"expires_days can be at most {ttl.days}.")
        ttl = timedelta(days=expires_days)
    return AuthToken.objects.create(user=user, expiry=ttl)


def user_tokens(*, user) -> QuerySet[AuthToken]:
    return AuthToken.objects.filter(user=user).order_by("-created")


def revoke_tokens(*, prefix: str, user=None) -> int:
    """Delete the token(s) with this prefix (of ``user`` only, when given). Returns how many."""
    tokens = AuthToken.objects.filter(token_key=prefix)
    if user is not None:
        tokens = tokens.filter(user=user)
    return tokens.delete()[0]
