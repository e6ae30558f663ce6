"""Who may do what: reading is public or login-only (IMAGESEARCH_PUBLIC_READ), writing needs a user
with the matching permission, every job and image records who added it, pages use session logins
with CSRF, and repeated failed logins are locked out (django-axes)."""

import uuid

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from catalog.jobs import requests as jobs
from catalog.jobs import tasks
from catalog.models import Image, ImportJob
from tests.conftest import ingest_in_cities, make_user, varied_picture

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def login_only(settings):
    settings.PUBLIC_READ = False  # the default; tests/settings.py opens reading for the other test modules
    settings.IMPORT_LEASE_SECONDS = 600


@pytest.fixture
def stored():
    return ingest_in_cities("acc", ["Paris", "Lima"])


@pytest.fixture
def failed_job():
    job = jobs.create_job(urls=["https://example.com/a.jpg"], via=ImportJob.Via.API)
    ImportJob.objects.filter(pk=job.pk).update(state=ImportJob.State.FAILED, error="model missing")
    return job


def upload(name="w.png", index=1):
    return SimpleUploadedFile(name, varied_picture(index), content_type="image/png")


def api_error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return body["error"]


def staff_client(*permissions) -> Client:
    client = Client()
    client.force_login(make_user("staffer", *permissions, is_staff=True))
    return client


# --- anonymous visitors -------------------------------------------------------------------------

def test_anonymous_api_writes_are_401_and_store_nothing(client, media_root):
    for path, data, kind in [("/api/images/", {"file": upload()}, None),
                             ("/api/imports/", {"file": [upload()]}, None),
                             ("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, "application/json")]:
        response = client.post(path, data, **({"content_type": kind} if kind else {}))
        assert response.status_code == 401, (path, response.content)
        assert api_error(response)["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == "Bearer"
    assert not ImportJob.objects.exists()
    assert not (media_root / "imports").exists()


def test_anonymous_page_and_admin_writes_go_to_login(client, stored, failed_job):
    page = client.post("/imports/", {"files": upload(), "urls": ""})
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/?next=/imports/")
    admin_add = client.post("/admin/catalog/importjob/add/", {"files": upload(), "urls": ""})
    assert admin_add.status_code == 302 and "/admin/login/" in admin_add["Location"]
    retry = client.post("/admin/catalog/importjob/", {"action": "retry", "_selected_action": [str(failed_job.pk)]})
    assert retry.status_code == 302 and "/admin/login/" in retry["Location"]
    image = stored[0]
    change = client.post(f"/admin/catalog/image/{image.pk}/change/", {"original_name": "hacked", "city": "X"})
    assert change.status_code == 302 and "/admin/login/" in change["Location"]
    delete = client.post(f"/admin/catalog/image/{image.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 302 and "/admin/login/" in delete["Location"]

    assert ImportJob.objects.count() == 1
    failed_job.refresh_from_db()
    assert failed_job.state == ImportJob.State.FAILED
    image.refresh_from_db()
    assert image.original_name != "hacked" and Image.objects.count() == 2


def test_login_only_reading_refuses_anonymous_readers_everywhere(client, stored):
    image = stored[0]
    for path in ["/", f"/images/{image.pk}/", f"/media/{image.file.name}", "/imports/",
                 f"/imports/{uuid.uuid4()}/"]:
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next="), path
    for method, path in [("get", "/api/images/"), ("get", f"/api/images/{image.pk}/"),
                         ("get", f"/api/images/{image.pk}/similar/"), ("get", "/api/imports/")]:
        assert getattr(client, method)(path).status_code == 401, path
    search = client.post("/api/search/", {"q": "a red bus"}, content_type="application/json")
    assert search.status_code == 401 and api_error(search)["code"] == "not_authenticated"
    # The API's description is read like the API: client generators log in (or use a token) too.
    for path in ["/api/schema/", "/api/docs/"]:
        assert client.get(path).status_code == 401, path


def test_public_reading_opens_reads_but_not_writes(client, settings, stored):
    settings.PUBLIC_READ = True
    image = stored[0]
    for path in ["/", f"/images/{image.pk}/", f"/media/{image.file.name}", "/api/images/",
                 f"/api/images/{image.pk}/similar/"]:
        assert client.get(path).status_code == 200, path
    assert client.post("/api/search/", {"q": "a bus"}, content_type="application/json").status_code == 200
    assert client.post("/api/images/", {"file": upload()}).status_code == 401
    assert client.get("/imports/").status_code == 302  # import jobs are never public


def test_any_logged_in_user_may_read(client, stored):
    client.force_login(make_user("reader"))
    image = stored[0]
    for path in ["/", f"/images/{image.pk}/", f"/media/{image.file.name}", "/api/images/"]:
        assert client.get(path).status_code == 200, path
    assert client.post("/api/search/", {"q": "a bus"}, content_type="application/json").status_code == 200
    page = client.get("/").content.decode()
    assert "Logged in as <strong>reader</strong>" in page and 'action="/accounts/logout/"' in page
    assert 'href="/imports/"' not in page  # no import permission, no import link


def test_media_files_accept_a_bearer_token(client, stored, api_token):
    path = f"/media/{stored[0].file.name}"
    assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {api_token}").status_code == 200
    assert client.get(path, HTTP_AUTHORIZATION="Bearer not-a-token").status_code == 302


@pytest.mark.parametrize("header", ["Bearer \xe9", "Bearer \x00abc"])  # not UTF-8 once encoded; NUL
def test_unreadable_bearer_headers_leave_pages_and_media_anonymous(client, settings, stored, header):
    image = stored[0]
    for path in ["/", "/?q=bus", f"/images/{image.pk}/", f"/media/{image.file.name}"]:
        response = client.get(path, HTTP_AUTHORIZATION=header)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), path
    settings.PUBLIC_READ = True
    assert client.get(f"/media/{image.file.name}", HTTP_AUTHORIZATION=header).status_code == 200
    assert client.get("/", HTTP_AUTHORIZATION=header).status_code == 200


# --- logged in, without the permission -----------------------------------------------------------

def test_user_without_permission_gets_403_on_every_write(client, stored, failed_job):
    client.force_login(make_user("reader"))
    for path, data, kind in [("/api/images/", {"file": upload()}, None),
                             ("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, "application/json")]:
        response = client.post(path, data, **({"content_type": kind} if kind else {}))
        assert response.status_code == 403, path
        assert "catalog.add_importjob" in api_error(response)["message"]
    assert client.post("/imports/", {"files": upload(), "urls": ""}).status_code == 403
    assert ImportJob.objects.count() == 1


def test_staff_without_permissions_cannot_write_in_the_admin(stored, failed_job):
    client = staff_client("view_importjob", "view_image")
    assert client.post("/admin/catalog/importjob/add/", {"files": upload(), "urls": ""}).status_code == 403
    image = stored[0]
    assert client.post(f"/admin/catalog/image/{image.pk}/change/",
                       {"original_name": "hacked", "city": "X", "group_key": ""}).status_code == 403
    assert client.post(f"/admin/catalog/image/{image.pk}/delete/", {"post": "yes"}).status_code == 403
    # The retry action is not offered, and posting it anyway changes nothing.
    assert b'value="retry"' not in client.get("/admin/catalog/importjob/").content
    client.post("/admin/catalog/importjob/", {"action": "retry", "_selected_action": [str(failed_job.pk)]})
    failed_job.refresh_from_db()
    assert failed_job.state == ImportJob.State.FAILED
    image.refresh_from_db()
    assert image.original_name != "hacked" and ImportJob.objects.count() == 1 and Image.objects.count() == 2


def test_staff_with_permissions_can_write_in_the_admin(stored, failed_job, django_capture_on_commit_callbacks):
    client = staff_client("view_importjob", "add_importjob", "change_importjob", "view_image", "change_image",
                          "delete_image")
    with django_capture_on_commit_callbacks(execute=False):
        client.post("/admin/catalog/importjob/", {"action": "retry", "_selected_action": [str(failed_job.pk)]})
    failed_job.refresh_from_db()
    assert failed_job.state == ImportJob.State.QUEUED
    added = client.post("/admin/catalog/importjob/add/", {"files": upload(), "urls": ""})
    assert added.status_code == 302
    assert ImportJob.objects.get(created_via=ImportJob.Via.ADMIN).created_by.username == "staffer"
    image = stored[0]
    client.post(f"/admin/catalog/image/{image.pk}/change/", {"original_name": "renamed", "city": "Rome",
                                                              "group_key": ""})
    image.refresh_from_db()
    assert image.city == "Rome"
    assert client.post(f"/admin/catalog/image/{image.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Image.objects.filter(pk=image.pk).exists()


# --- who added what -----------------------------------------------------------------------------

def test_every_entry_point_records_who_added_the_job_and_its_images(writer_client, writer, admin_client,
                                                                   admin_user):
    writer_client.post("/api/images/", {"file": upload("api.png", 1)})
    writer_client.post("/imports/", {"files": upload("page.png", 2), "urls": ""})
    admin_client.post("/admin/catalog/importjob/add/", {"files": upload("admin.png", 3), "urls": ""})
    by_via = {job.created_via: job for job in ImportJob.objects.all()}
    assert {via: job.created_by for via, job in by_via.items()} == {
        ImportJob.Via.API: writer, ImportJob.Via.PAGE: writer, ImportJob.Via.ADMIN: admin_user}
    for job in by_via.values():
        assert tasks.run_job(job.pk) == "done"
    assert dict(Image.objects.values_list("original_name", "added_by__username")) == {
        "api.png": "writer", "page.png": "writer", "admin.png": admin_user.username}
    listing = admin_client.get("/admin/catalog/image/").content.decode()
    assert "Added by" in listing and "writer" in listing
    assert "Created by" in admin_client.get("/admin/catalog/importjob/").content.decode()


def test_users_see_their_own_import_jobs_unless_allowed_to_see_all(writer_client):
    mine = writer_client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]},
                              content_type="application/json").json()["id"]
    client = Client()
    client.force_login(make_user("other", "add_importjob"))
    assert client.get(f"/api/imports/{mine}/").status_code == 404
    assert client.get(f"/imports/{mine}/").status_code == 404
    assert client.get("/api/imports/").json() == []
    assert writer_client.get(f"/api/imports/{mine}/").status_code == 200  # writer holds view_importjob too
    watcher = make_user("watcher", "view_importjob")
    client.force_login(watcher)
    assert [job["id"] for job in client.get("/api/imports/").json()] == [mine]


# --- session login pages and CSRF ------------------------------------------------------------------

def test_login_page_redirects_to_next_and_logout_is_a_post(client):
    make_user("reader", password="s3cret-pass")
    page = client.get("/accounts/login/?next=/images/1/")
    assert page.status_code == 200 and b'name="password"' in page.content and b"site.css" in page.content
    response = client.post("/accounts/login/", {"username": "reader", "password": "s3cret-pass",
                                                "next": "/api/images/"})
    assert response.status_code == 302 and response["Location"] == "/api/images/"
    assert client.get("/api/images/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405  # a link cannot log anyone out
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/api/images/").status_code == 401


def test_login_refuses_an_outside_next(client):
    make_user("reader", password="s3cret-pass")
    response = client.post("/accounts/login/", {"username": "reader", "password": "s3cret-pass",
                                                "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/"


def test_csrf_is_enforced_on_page_forms(writer):
    client = Client(enforce_csrf_checks=True)
    make_user("reader", password="s3cret-pass")
    assert client.post("/accounts/login/", {"username": "reader", "password": "s3cret-pass"}).status_code == 403
    client.force_login(writer)
    assert client.post("/imports/", {"urls": "https://example.com/a.jpg"}).status_code == 403
    assert client.post("/accounts/logout/").status_code == 403
    assert not ImportJob.objects.exists()
    form = client.get("/imports/")
    token = form.context["csrf_token"]
    accepted = client.post("/imports/", {"urls": "https://example.com/a.jpg", "csrfmiddlewaretoken": str(token)})
    assert accepted.status_code == 302 and ImportJob.objects.count() == 1


def test_session_api_writes_need_the_csrf_token(writer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(writer)
    response = client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in api_error(response)["message"]
    assert not ImportJob.objects.exists()


# --- failed logins ------------------------------------------------------------------------------

def test_repeated_failed_page_logins_lock_the_username_out_from_that_address(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user("reader", password="s3cret-pass")
    for _ in range(2):
        assert client.post("/accounts/login/", {"username": "reader", "password": "wrong"}).status_code == 200
    locked = client.post("/accounts/login/", {"username": "reader", "password": "wrong"})
    assert locked.status_code == 429 and int(locked["Retry-After"]) == 15 * 60
    assert b"Too many failed logins" in locked.content
    # Now even the right password is refused from this address ...
    right = client.post("/accounts/login/", {"username": "reader", "password": "s3cret-pass"})
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    # ... but not from another one, and other usernames are not affected.
    other = Client(REMOTE_ADDR="10.1.2.3")
    assert other.post("/accounts/login/", {"username": "reader", "password": "s3cret-pass"}).status_code == 302
    make_user("second", password="s3cret-pass")
    assert client.post("/accounts/login/", {"username": "second", "password": "s3cret-pass"}).status_code == 302


def test_admin_login_is_locked_out_too(client, settings, admin_user):
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(2):
        response = client.post("/admin/login/", {"username": admin_user.username, "password": "wrong"})
    assert response.status_code == 429
    response = client.post("/admin/login/", {"username": admin_user.username, "password": "password"})
    assert response.status_code == 429


def test_api_token_login_is_locked_out_in_the_error_shape(client, settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_user("reader", password="s3cret-pass")
    for _ in range(2):
        response = client.post("/api/auth/token/", {"username": "reader", "password": "wrong"},
                               content_type="application/json")
    assert response.status_code == 429 and api_error(response)["code"] == "locked_out"
    assert int(response["Retry-After"]) > 0
    again = client.post("/api/auth/token/", {"username": "reader", "password": "s3cret-pass"},
                        content_type="application/json")
    assert again.status_code == 429 and "token" not in again.json()
    assert User.objects.get(username="reader").auth_token_set.count() == 0
