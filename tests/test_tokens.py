"""API tokens: log in through the API, use the bearer token, list, expire and revoke; the admin and
the `tokens` command manage them; `bootstrap_admin` gives a fresh install its first account."""

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken

from catalog.models import ImportJob
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-pass"


@pytest.fixture(autouse=True)
def login_only(settings):
    settings.PUBLIC_READ = False


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def get_token(client, username="writer", **extra) -> dict:
    response = client.post("/api/auth/token/", {"username": username, "password": PASSWORD, **extra},
                           content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def api_error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return body["error"]


@pytest.fixture
def writer_with_password():
    return make_user("writer", "add_importjob", password=PASSWORD)


def test_login_returns_a_token_once_that_is_stored_hashed(client, writer_with_password):
    body = get_token(client)
    assert set(body) == {"token", "prefix", "created", "expiry"}
    token = body["token"]
    assert len(token) == 64 and body["prefix"] == token[:15]
    stored = AuthToken.objects.get()
    assert stored.user == writer_with_password and token not in stored.digest
    expiry = timezone.now() + timedelta(days=30)
    assert abs((stored.expiry - expiry).total_seconds()) < 60
    listed = client.get("/api/auth/tokens/", **bearer(token)).json()
    assert listed == [{"prefix": body["prefix"], "created": body["created"], "expiry": body["expiry"]}]
    assert token not in client.get("/api/auth/tokens/", **bearer(token)).content.decode()


def test_bad_credentials_are_400_and_make_no_token(client, writer_with_password):
    for payload in [{"username": "writer", "password": "wrong"}, {"username": "nobody", "password": PASSWORD},
                    {"username": "writer"}]:
        response = client.post("/api/auth/token/", payload, content_type="application/json")
        assert response.status_code == 400, payload
        assert api_error(response)["code"] == "invalid"
    writer_with_password.is_active = False
    writer_with_password.save()
    assert client.post("/api/auth/token/", {"username": "writer", "password": PASSWORD},
                       content_type="application/json").status_code == 400
    assert not AuthToken.objects.exists()


def test_token_is_a_bearer_credential_for_reads_and_writes_without_csrf(writer_with_password):
    client = Client(enforce_csrf_checks=True)  # a token request needs no CSRF token: no cookie is involved
    token = get_token(client)["token"]
    assert client.get("/api/images/", **bearer(token)).status_code == 200
    response = client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, content_type="application/json",
                           **bearer(token))
    assert response.status_code == 202, response.content
    assert ImportJob.objects.get().created_by == writer_with_password
    wrong = client.get("/api/images/", **bearer("x" * 64))
    assert wrong.status_code == 401 and api_error(wrong)["code"] == "authentication_failed"


def test_a_shorter_expiry_may_be_asked_for_but_not_a_longer_one(client, settings, writer_with_password):
    body = get_token(client, expires_days=2)
    assert abs((AuthToken.objects.get(token_key=body["prefix"]).expiry - timezone.now()
                - timedelta(days=2)).total_seconds()) < 60
    too_long = client.post("/api/auth/token/", {"username": "writer", "password": PASSWORD, "expires_days": 31},
                           content_type="application/json")
    assert too_long.status_code == 400 and "expires_days" in api_error(too_long)["fields"]
    assert AuthToken.objects.count() == 1


def test_huge_expiry_requests_are_400_not_server_errors(client, settings, writer_with_password):
    from catalog.accounts import tokens

    for days in (10**30, 10**9, 31):
        response = client.post("/api/auth/token/", {"username": "writer", "password": PASSWORD, "expires_days": days},
                               content_type="application/json")
        assert response.status_code == 400 and "expires_days" in api_error(response)["fields"], days
    # Also where tokens never expire (TTL 0): no overflow, a clear refusal.
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": None}
    for days in (10**30, tokens.MAX_EXPIRES_DAYS + 1):
        with pytest.raises(tokens.TokenError, match="at most"):
            tokens.create_token(user=writer_with_password, expires_days=days)
    with pytest.raises(CommandError, match="at most"):
        call_command("tokens", "create", "writer", "--expires-days", str(10**30))
    assert not AuthToken.objects.exists()


@pytest.mark.parametrize("header", ["Bearer \xe9", "Bearer \xff\xfe", "Bearer \x00abc", "Bearer abc\x7f"])
def test_unreadable_bearer_headers_are_401_in_the_error_shape(client, writer_with_password, header):
    # The test client passes the str on as the server would: bytes decoded as latin-1 (\xe9 is not UTF-8).
    for method, path in [("get", "/api/images/"), ("post", "/api/search/"), ("get", "/api/auth/tokens/"),
                         ("post", "/api/auth/logout/"), ("delete", "/api/auth/tokens/0123456789abcde/")]:
        response = getattr(client, method)(path, HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, (header, path, response.content)
        assert api_error(response)["code"] == "authentication_failed"


def test_revoking_a_malformed_prefix_is_404(client, writer_with_password):
    from catalog.accounts.tokens import is_token_prefix

    token = get_token(client)
    assert is_token_prefix(token["prefix"])
    for prefix in ["%00", "abc%00def", "%E9", token["prefix"].upper(), token["prefix"] + "0", token["prefix"][:-1]]:
        response = client.delete(f"/api/auth/tokens/{prefix}/", **bearer(token["token"]))
        assert response.status_code == 404 and api_error(response)["code"] == "not_found", prefix
    with pytest.raises(CommandError, match="No token with prefix"):
        call_command("tokens", "revoke", "\x00")
    assert AuthToken.objects.count() == 1


def test_expired_tokens_are_refused_and_deleted(client, writer_with_password):
    token = get_token(client)["token"]
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/images/", **bearer(token))
    assert response.status_code == 401
    assert not AuthToken.objects.exists()


def test_revoke_by_prefix_and_logout(client, writer_with_password):
    first, second = get_token(client), get_token(client)
    other = make_user("other", password=PASSWORD)
    others = get_token(client, username="other")
    # Someone else's token cannot be revoked, and is not listed.
    assert client.delete(f"/api/auth/tokens/{others['prefix']}/", **bearer(first["token"])).status_code == 404
    assert {t["prefix"] for t in client.get("/api/auth/tokens/", **bearer(first["token"])).json()} == {
        first["prefix"], second["prefix"]}
    assert client.delete(f"/api/auth/tokens/{second['prefix']}/", **bearer(first["token"])).status_code == 204
    assert client.get("/api/images/", **bearer(second["token"])).status_code == 401
    assert client.post("/api/auth/logout/", **bearer(first["token"])).status_code == 204
    assert client.get("/api/images/", **bearer(first["token"])).status_code == 401
    assert list(AuthToken.objects.values_list("user", flat=True)) == [other.pk]


def test_token_endpoints_need_a_login(client):
    assert client.get("/api/auth/tokens/").status_code == 401
    assert client.post("/api/auth/logout/").status_code == 401
    assert client.delete("/api/auth/tokens/abc/").status_code == 401


def test_the_schema_declares_bearer_tokens(client, writer):
    client.force_login(writer)  # login-only reading covers the schema too
    schema = client.get("/api/schema/?format=json").json()
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"} in schemes.values()
    assert schema["paths"]["/api/auth/token/"]["post"].get("security") in (None, [], [{}])  # no credentials


def test_admin_creates_a_token_and_shows_it_once(admin_client, writer):
    response = admin_client.post("/admin/knox/authtoken/add/", {"user": writer.pk, "expiry": ""}, follow=True)
    message = next(str(m) for m in response.context["messages"])
    token = message.rsplit(" ", 1)[-1]
    stored = AuthToken.objects.get(user=writer)
    assert token.startswith(stored.token_key) and token not in stored.digest
    assert Client().get("/api/images/", **bearer(token)).status_code == 200
    listing = admin_client.get("/admin/knox/authtoken/").content.decode()
    assert stored.token_key in listing and token not in listing
    admin_client.post("/admin/knox/authtoken/", {"action": "delete_selected", "_selected_action": [stored.pk],
                                                "post": "yes"})
    assert not AuthToken.objects.exists()


def test_tokens_command_creates_lists_and_revokes(writer):
    out, err = io.StringIO(), io.StringIO()
    call_command("tokens", "create", "writer", "--expires-days", "3", stdout=out, stderr=err)
    token = out.getvalue().strip()
    prefix = AuthToken.objects.get().token_key
    assert token.startswith(prefix) and "shown only now" in err.getvalue()
    assert Client().get("/api/images/", **bearer(token)).status_code == 200
    listing = io.StringIO()
    call_command("tokens", "list", stdout=listing)
    assert prefix in listing.getvalue() and "writer" in listing.getvalue() and token not in listing.getvalue()
    call_command("tokens", "revoke", prefix, stdout=io.StringIO())
    assert Client().get("/api/images/", **bearer(token)).status_code == 401
    with pytest.raises(CommandError, match="No token with prefix"):
        call_command("tokens", "revoke", prefix)
    with pytest.raises(CommandError, match="No user named"):
        call_command("tokens", "create", "nobody")
    with pytest.raises(CommandError, match="at most 30"):
        call_command("tokens", "create", "writer", "--expires-days", "400")


def test_bootstrap_admin_creates_one_superuser_once_with_a_usable_one_time_password(client):
    out = io.StringIO()
    call_command("bootstrap_admin", stdout=out)
    password = next(line.split(":", 1)[1].strip() for line in out.getvalue().splitlines() if "password:" in line)
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and len(password) >= 16
    assert password not in admin.password  # only the hash is stored
    assert client.post("/accounts/login/", {"username": "admin", "password": password}).status_code == 302
    again = io.StringIO()
    call_command("bootstrap_admin", stdout=again)
    assert again.getvalue() == "" and User.objects.count() == 1
