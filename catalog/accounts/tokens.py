"""API tokens (django-rest-knox): stored as SHA-512 digests; the plain token exists only in the
answer to its creation. A token is named by its first characters, its "prefix"."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db.models import QuerySet
from django.utils.translation import gettext as _
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings

# Longest lifetime asked of a token when tokens may live for ever (TTL 0): far below what
# datetime can add to now (year 9999), so a large number is a clear 400, never an overflow.
MAX_EXPIRES_DAYS = 36500


class TokenError(ValueError):
    """The token request is unusable; ``str(exc)`` says why."""


def create_token(*, user, expires_days: int | None = None) -> tuple[AuthToken, str]:
    """A new token for ``user``, expiring after ``expires_days`` (at most the configured TTL;
    None: the TTL). Returns the stored row and the plain token, which is not kept anywhere."""
    ttl = knox_settings.TOKEN_TTL
    if expires_days is not None:
        if expires_days < 1:
            raise TokenError(_("expires_days must be at least 1."))
        most = ttl.days if ttl is not None else MAX_EXPIRES_DAYS  # compared before timedelta() can overflow
        if expires_days > most:
            raise TokenError(_("expires_days can be at most %(most)d.") % {"most": most})
        ttl = timedelta(days=expires_days)
    return AuthToken.objects.create(user=user, expiry=ttl)


def user_tokens(*, user) -> QuerySet[AuthToken]:
    return AuthToken.objects.filter(user=user).order_by("-created")


def is_token_prefix(prefix: str) -> bool:
    """Whether ``prefix`` has the form of a token's stored prefix: knox's TOKEN_PREFIX, then hex
    digits, TOKEN_KEY_LENGTH characters in all."""
    start = knox_settings.TOKEN_PREFIX[:CONSTANTS.TOKEN_KEY_LENGTH]
    hex_digits = CONSTANTS.TOKEN_KEY_LENGTH - len(start)
    return re.fullmatch(re.escape(start) + f"[0-9a-f]{{{hex_digits}}}", prefix) is not None


def revoke_tokens(*, prefix: str, user=None) -> int:
    """Delete the token(s) with this prefix (of ``user`` only, when given). Returns how many."""
    if not is_token_prefix(prefix):
        return 0  # never reaches the database (a NUL would be a database error there)
    tokens = AuthToken.objects.filter(token_key=prefix)
    if user is not None:
        tokens = tokens.filter(user=user)
    return tokens.delete()[0]


def may_create_token(*, by, user) -> bool:
    """A token acts as its user: only superusers may make one for someone else (the admin's add form)."""
    return by.is_superuser or by.pk == user.pk


def revoke_user_tokens(*, user) -> int:
    """Delete every token of ``user`` (their password changed: tokens made with the old one must not
    outlive it). Returns how many."""
    return AuthToken.objects.filter(user=user).delete()[0]
