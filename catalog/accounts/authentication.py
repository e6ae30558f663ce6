"""Bearer tokens (django-rest-knox), refusing headers that knox cannot read with a 401."""

from __future__ import annotations

from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from django.utils.translation import gettext as _
from knox.auth import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


class BearerTokenAuthentication(TokenAuthentication):
    """knox's TokenAuthentication; a token that is not printable ASCII (knox's are hex) is
    "Invalid token." instead of a UnicodeDecodeError (bytes not UTF-8) or a database error (NUL)."""

    def authenticate_credentials(self, token: bytes):
        if not (token.isascii() and token.decode("ascii").isprintable()):
            raise AuthenticationFailed(_("Invalid token."))
        return super().authenticate_credentials(token)


class BearerTokenScheme(KnoxTokenScheme):
    """The OpenAPI security scheme of knox's class, for this subclass."""

    target_class = "catalog.accounts.authentication.BearerTokenAuthentication"
