"""API tokens for mobile and script clients: log in with username + password to get a bearer
token (shown once), list and revoke your tokens, log the current token out."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.accounts import tokens
from catalog.accounts.authentication import BearerTokenAuthentication
from catalog.accounts.throttling import ScopeThrottle
from catalog.api.serializers import StrictQueryMixin, StrictSerializer  # unknown fields are 400s


class TokenRequestSerializer(StrictSerializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})
    expires_days = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.TOKEN_TTL_DAYS or tokens.MAX_EXPIRES_DAYS, help_text=(
        "Ask for a token that expires sooner than the server's default (IMAGESEARCH_TOKEN_TTL_DAYS)."))


class TokenInfoSerializer(serializers.Serializer):
    prefix = serializers.CharField(source="token_key", help_text="The token's first characters; names it for revoking.")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="null: never expires.")


class NewTokenSerializer(TokenInfoSerializer):
    token = serializers.CharField(help_text="Send as \"Authorization: Bearer <token>\". Shown only this once.")


class TokenCreateView(StrictQueryMixin, APIView):
    # Credentials come in the body: no session (so no CSRF) and no token needed.
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopeThrottle]
    throttle_scope = "login"

    @extend_schema(summary="Log in: exchange username and password for an API token",
                   request=TokenRequestSerializer, responses={201: NewTokenSerializer}, auth=[])
    def post(self, request: Request) -> Response:
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The Django request: django-axes records the failure (username + address) and flags lockouts on it.
        user = authenticate(request._request, username=data.validated_data["username"],
                            password=data.validated_data["password"])
        if user is None:
            raise ValidationError({"non_field_errors": [_("Unable to log in with the given username and password.")]},
                                  code="invalid_credentials")
        try:
            token, plain = tokens.create_token(user=user, expires_days=data.validated_data.get("expires_days"))
        except tokens.TokenError as error:
            raise ValidationError({"expires_days": [str(error)]}) from None
        return Response({**TokenInfoSerializer(token).data, "token": plain}, status=status.HTTP_201_CREATED)


class TokenListView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Your API tokens (never the tokens themselves)",
                   responses={200: TokenInfoSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(TokenInfoSerializer(tokens.user_tokens(user=request.user), many=True).data)


class TokenDetailView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Revoke one of your API tokens", responses={204: OpenApiResponse(description="Revoked.")})
    def delete(self, request: Request, prefix: str) -> Response:
        if not tokens.revoke_tokens(prefix=prefix, user=request.user):
            raise NotFound(_("You have no token with this prefix."))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenLogoutView(StrictQueryMixin, APIView):
    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Revoke the token this request is made with", request=None,
                   responses={204: OpenApiResponse(description="Revoked.")})
    def post(self, request: Request) -> Response:
        request.auth.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
