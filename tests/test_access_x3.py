"""Access and faults found by the hostile review (X3): a full disk during an upload keeps nothing and
answers 507; staff mint API tokens for themselves only; the image page and the image list count in
the search budget; password changes are throttled and revoke API tokens; the API's schema follows
login-only reading; the health probes send nosniff."""

from __future__ import annotations

import errno
import resource
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import InMemoryUploadedFile, SimpleUploadedFile
from django.test import Client
from knox.models import AuthToken

from catalog.accounts.tokens import create_token
from catalog.models import ImportItem, ImportJob
from tests.conftest import ingest_pictures, make_user, varied_picture

pytestmark = pytest.mark.django_db

FILE_SIZE_LIMIT = 60_000
OLD_PASSWORD, NEW_PASSWORD = "right-password-1", "Zx9!kkLmq2-new"


def api_error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return body["error"]


def stored_files(media_root) -> list[Path]:
    return [path for path in Path(media_root).rglob("*") if path.is_file()]


def payload_folders(media_root) -> list[Path]:
    imports = Path(media_root) / "imports"
    return list(imports.iterdir()) if imports.exists() else []


def incompressible(size: int) -> bytes:
    """Bytes that look like a PNG to the sniffer, ``size`` long (the upload is refused before decoding)."""
    import numpy as np

    return b"\x89PNG\r\n\x1a\n" + np.random.default_rng(size).bytes(size - 8)


@pytest.fixture
def small_disk():
    """This process may write no file past FILE_SIZE_LIMIT bytes: writes beyond fail with EFBIG,
    as on a full disk (the signal the kernel sends instead is ignored, as servers do)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, old_limit[1]))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


# --- item 4: disk full while an upload is stored ----------------------------------------------------

def test_api_upload_on_a_full_disk_is_a_507_and_keeps_nothing(writer_client, media_root, small_disk):
    big = SimpleUploadedFile("big.png", incompressible(2 * FILE_SIZE_LIMIT), content_type="image/png")
    response = writer_client.post("/api/images/", {"file": big})
    assert response.status_code == 507, response.content
    error = api_error(response)
    assert error["code"] == "storage_full" and "no room" in error["message"]
    # The first file was stored whole, the second only in part: neither is left, nor their folder.
    small = SimpleUploadedFile("small.png", incompressible(1000), content_type="image/png")
    big = SimpleUploadedFile("big.png", incompressible(2 * FILE_SIZE_LIMIT), content_type="image/png")
    response = writer_client.post("/api/imports/", {"file": [small, big]})
    assert response.status_code == 507 and api_error(response)["code"] == "storage_full"
    assert not ImportJob.objects.exists() and not ImportItem.objects.exists()
    assert stored_files(media_root) == [] and payload_folders(media_root) == []


def test_api_upload_spooled_to_a_full_disk_is_a_507(writer_client, settings, media_root, small_disk):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000  # spooled to a temporary file while the body is read
    big = SimpleUploadedFile("big.png", incompressible(2 * FILE_SIZE_LIMIT), content_type="image/png")
    response = writer_client.post("/api/images/", {"file": big})
    assert response.status_code == 507 and api_error(response)["code"] == "storage_full"
    assert not ImportJob.objects.exists() and stored_files(media_root) == []


def test_import_page_on_a_full_disk_shows_the_message_and_keeps_nothing(writer_client, media_root, monkeypatch):
    chunks = InMemoryUploadedFile.chunks

    def half_then_no_space(self, chunk_size=None):
        # The storage writes the first half to the file, then the disk is full.
        data = b"".join(chunks(self, chunk_size))
        yield data[:len(data) // 2]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(InMemoryUploadedFile, "chunks", half_then_no_space)
    files = [SimpleUploadedFile(f"{name}.png", varied_picture(index), content_type="image/png")
             for index, name in enumerate(["one", "two"])]
    response = writer_client.post("/imports/", {"files": files})
    assert response.status_code == 507
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert 'class="site-header"' in page and "no room to store this upload" in page
    assert not ImportJob.objects.exists() and stored_files(media_root) == [] and payload_folders(media_root) == []


# --- item 5: staff mint tokens for themselves only ---------------------------------------------------

@pytest.fixture
def token_clerk():
    clerk = make_user("clerk", is_staff=True)
    clerk.user_permissions.add(*Permission.objects.filter(content_type__app_label="knox",
                                                          codename__in=["add_authtoken", "view_authtoken"]))
    return clerk


def test_staff_cannot_mint_a_token_for_another_user(admin_user, token_clerk):
    client = Client()
    client.force_login(token_clerk)
    response = client.post("/admin/knox/authtoken/add/", {"user": admin_user.pk, "expiry_0": "", "expiry_1": ""})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not AuthToken.objects.filter(user=admin_user).exists()
    # For themselves it works, and shows the token once.
    response = client.post("/admin/knox/authtoken/add/", {"user": token_clerk.pk, "expiry_0": "", "expiry_1": ""},
                           follow=True)
    assert "copy it now" in response.content.decode()
    assert AuthToken.objects.filter(user=token_clerk).count() == 1


def test_token_admin_refuses_another_users_token_whatever_the_form_allowed(rf, admin_user, token_clerk,
                                                                             monkeypatch):
    from django.contrib import admin
    from django.core.exceptions import PermissionDenied

    token_admin = admin.site._registry[AuthToken]
    monkeypatch.setattr(token_admin, "message_user", lambda *args, **kwargs: None)
    request = rf.post("/admin/knox/authtoken/add/")
    request.user = token_clerk
    with pytest.raises(PermissionDenied):
        token_admin.save_model(request, AuthToken(user=admin_user), change=False,
                               form=SimpleNamespace(token="shown once"))
    assert not AuthToken.objects.exists()


def test_superusers_still_mint_tokens_for_others(admin_client, token_clerk):
    admin_client.post("/admin/knox/authtoken/add/", {"user": token_clerk.pk, "expiry_0": "", "expiry_1": ""})
    assert AuthToken.objects.filter(user=token_clerk).count() == 1


# --- item 6: the image page and the image list count in the search budget ----------------------------

def test_image_page_neighbours_count_in_the_search_budget(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "2/min"}
    image = ingest_pictures([("a.png", varied_picture(1)), ("b.png", varied_picture(2))])[0]
    assert [client.get(f"/images/{image.pk}/").status_code for _ in range(2)] == [200, 200]
    over = client.get(f"/images/{image.pk}/")
    # Over budget: the picture and its metadata still show, the neighbours (a vector search) do not.
    assert over.status_code == 429 and 0 < int(over["Retry-After"]) <= 60
    assert over.context["neighbours"] == [] and "Too many requests" in over.context["note"]
    assert image.file.url in over.content.decode()
    assert client.get("/", {"similar_to": image.pk}).status_code == 429  # one budget with "more like this"


def test_image_list_counts_in_the_search_budget(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "2/min"}
    assert [client.get("/api/images/", {"cities": "Paris"}).status_code for _ in range(2)] == [200, 200]
    response = client.get("/api/images/", {"min_width": "10"})
    assert response.status_code == 429 and api_error(response)["code"] == "throttled"
    assert client.post("/api/search/", {}, content_type="application/json").status_code == 429


# --- item 7: password changes ------------------------------------------------------------------------

def change_password(client, path: str, old: str):
    return client.post(path, {"old_password": old, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})


@pytest.mark.parametrize("path", ["/accounts/password/", "/admin/password_change/"])
def test_old_password_guesses_are_throttled_like_logins(settings, path):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": "3/min"}
    user = make_user("victim", password=OLD_PASSWORD, is_staff=True)
    client = Client()
    client.force_login(user)
    assert [change_password(client, path, f"guess-{n}").status_code for n in range(3)] == [200, 200, 200]
    refused = change_password(client, path, OLD_PASSWORD)
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 60
    user.refresh_from_db()
    assert user.check_password(OLD_PASSWORD)  # the throttled guess was not even tried


@pytest.mark.parametrize("path", ["/accounts/password/", "/admin/password_change/"])
def test_changing_ones_password_revokes_ones_api_tokens(settings, path):
    settings.PUBLIC_READ = False
    user = make_user("owner", password=OLD_PASSWORD, is_staff=True)
    other = make_user("other")
    token = create_token(user=user)[1]
    create_token(user=other)
    client = Client()
    client.force_login(user)
    assert change_password(client, path, "a wrong guess").status_code == 200
    assert Client().get("/api/images/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200  # not yet
    assert change_password(client, path, OLD_PASSWORD).status_code == 302
    assert Client().get("/api/images/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert list(AuthToken.objects.values_list("user__username", flat=True)) == ["other"]
    assert client.get("/api/images/").status_code == 200  # the session that changed it stays logged in


def test_a_password_set_in_the_admin_revokes_that_users_tokens(admin_client):
    user = make_user("forgetful", password=OLD_PASSWORD)
    token = create_token(user=user)[1]
    response = admin_client.post(f"/admin/auth/user/{user.pk}/password/",
                                 {"usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 302, response.content[:500]
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert not AuthToken.objects.filter(user=user).exists()
    assert Client().get("/api/auth/tokens/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


# --- item 9: the schema follows login-only reading; probes send nosniff ----------------------------

@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_api_schema_and_docs_need_a_login_unless_reading_is_public(settings, writer, path):
    settings.PUBLIC_READ = False
    anonymous = Client()
    assert anonymous.get(path).status_code == 401
    token = create_token(user=writer)[1]
    assert anonymous.get(path, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    settings.PUBLIC_READ = True
    assert anonymous.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_send_nosniff(client, path, monkeypatch):
    from imagesearch import health

    monkeypatch.setattr(health, "_model", lambda: "ok")  # no model load for a header
    response = client.get(path)
    assert response.status_code == 200 and response["X-Content-Type-Options"] == "nosniff"


def test_the_schema_documents_507_for_uploads(client):
    responses = client.get("/api/schema/?format=json").json()["paths"]["/api/images/"]["post"]["responses"]
    assert responses["507"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
