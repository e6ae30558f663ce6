"""Starting imports over the API, the import page and the admin; reading them back.

URLs given here are never fetched: these tests only create jobs (or run upload-only jobs)."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django_tasks_db.models import DBTaskResult
from PIL import Image as PILImage

from catalog.jobs import tasks
from catalog.models import Image, ImportItem, ImportJob

pytestmark = pytest.mark.django_db


def picture(index: int = 0) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (24, 16), ((index * 71) % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("x.jpg", picture(7))
    return buffer.getvalue()


def media_files(media_root: Path) -> list[Path]:
    return [p for p in Path(media_root).rglob("*") if p.is_file()] if Path(media_root).exists() else []


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code
    return body["error"]


@pytest.fixture(autouse=True)
def logged_in(client, writer):
    """Imports need a user with the import permission (tests/test_access.py covers who may)."""
    client.force_login(writer)


@pytest.fixture(autouse=True)
def long_lease(settings):
    settings.IMPORT_LEASE_SECONDS = 600  # the heartbeat never needs the uncommitted test rows


@pytest.fixture
def client(writer_client):
    """Imports need a logged-in user with the import permission (tests/test_access.py checks who may)."""
    return writer_client


# --------------------------------------------------------------------------
# POST /api/imports/


def test_urls_as_json_start_a_queued_job(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/imports/", {"urls": ["https://example.com/a.jpg", " http://example.org/p/b.png "],
                                                 "city": "Lisbon", "group_key": "sku-9"},
                               content_type="application/json")
    assert response.status_code == 202, response.content
    body = response.json()
    job = ImportJob.objects.get(pk=body["id"])
    assert response["Location"] == body["url"] and body["url"].endswith(f"/api/imports/{job.pk}/")
    assert body["state"] == "queued" and body["errors"] == [] and body["error"] == ""
    assert body["counts"] == {"total": 2, "done": 0, "added": 0, "duplicates": 0, "failed": 0}
    assert (body["city"], body["group_key"], job.created_via) == ("Lisbon", "sku-9", ImportJob.Via.API)
    assert list(job.items.values_list("kind", "url", "name")) == [
        ("url", "https://example.com/a.jpg", "a.jpg"), ("url", "http://example.org/p/b.png", "b.png")]
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)], status="READY").count() == 1


def test_multipart_files_are_stored_before_the_job_is_queued(client, media_root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", picture(1)),
                                                          SimpleUploadedFile("more.zip", small_zip())],
                                                 "urls": ["https://example.com/c.jpg"]})
        assert response.status_code == 202, response.content
        job = ImportJob.objects.get(pk=response.json()["id"])
        items = {item.name: item for item in job.items.all()}
        assert {name: item.kind for name, item in items.items()} == {
            "a.jpg": ImportItem.Kind.UPLOAD, "more.zip": ImportItem.Kind.ARCHIVE, "c.jpg": ImportItem.Kind.URL}
        assert (Path(media_root) / items["a.jpg"].payload).read_bytes() == picture(1)
        assert items["a.jpg"].payload.startswith(f"imports/{job.pk}/")
        assert not DBTaskResult.objects.exists()  # queued only once committed
    assert len(callbacks) == 1
    callbacks[0]()
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)]).exists()


@pytest.mark.parametrize(("payload", "field", "message"), [
    ({}, "non_field_errors", 'Give at least one URL in "urls" or upload a "file".'),
    ({"urls": []}, "non_field_errors", 'Give at least one URL in "urls" or upload a "file".'),
    ({"urls": ["ftp://example.com/a.jpg"]}, "urls.0", "Only http and https URLs can be imported"),
    ({"urls": ["https://example.com/a.jpg", "no url at all"]}, "urls.1", "Only http and https URLs can be imported"),
    ({"urls": ["https://user:secret@example.com/a.jpg"]}, "urls.0", "URLs with user names or passwords"),
    ({"urls": ["http:///a.jpg"]}, "urls.0", "URL has no host"),
    ({"urls": ["https://example.com:99999/a.jpg"]}, "urls.0", "Not a valid URL"),
    ({"urls": "https://example.com/a.jpg"}, "urls", "Expected a list"),
    ({"urls": [f"https://example.com/{i}.jpg" for i in range(4)]}, "urls", "At most 3 URLs per import."),
    ({"urls": ["https://example.com/a.jpg"], "city": "x" * 121}, "city", "no more than 120 characters"),
    ({"urls": ["https://example.com/a.jpg"], "file": "not a file"}, "file", "Expected a list"),
])
def test_bad_import_requests_are_400_with_a_message_and_create_nothing(client, settings, media_root, payload, field,
                                                                       message):
    settings.IMPORT_MAX_URLS = 3
    response = client.post("/api/imports/", payload, content_type="application/json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid"
    assert any(message in text for text in error["fields"][field]), error
    assert error["message"] in error["fields"][field] or field == "non_field_errors"
    assert not ImportJob.objects.exists() and not media_files(media_root)


def test_a_form_giving_a_single_value_twice_is_refused_and_creates_nothing(client, media_root):
    # Found by schemathesis: two "city" fields were taken as the last one.
    response = client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", picture(1))],
                                             "city": ["Lima", "Paris"]})
    assert response.status_code == 400
    assert error_of(response)["fields"]["city"] == ['Give "city" once.']
    assert not ImportJob.objects.exists() and not media_files(media_root)
    # Several files are a list: accepted.
    response = client.post("/api/imports/", {"file": [SimpleUploadedFile(f"{n}.jpg", picture(n)) for n in (1, 2)],
                                             "city": "Lima"})
    assert response.status_code == 202


def test_too_large_upload_is_refused_and_nothing_is_written(client, settings, media_root):
    settings.IMPORT_MAX_UPLOAD_BYTES = 100
    response = client.post("/api/imports/", {"file": [SimpleUploadedFile("big.jpg", picture(1))]})
    assert response.status_code == 413  # refused while receiving it (catalog.uploads)
    error = error_of(response)
    assert error["code"] == "too_large"
    assert error["message"] == "big.jpg is larger than 100 bytes (IMAGESEARCH_MAX_UPLOAD_BYTES)."
    assert not ImportJob.objects.exists() and not media_files(media_root)


def test_malformed_json_is_a_clear_400(client):
    response = client.post("/api/imports/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in error_of(response)["message"]


# --------------------------------------------------------------------------
# POST /api/images/


def test_image_upload_becomes_an_import_job(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/images/", {"file": SimpleUploadedFile("cat.jpg", picture(3)), "city": "Oslo"})
    assert response.status_code == 202, response.content
    body = response.json()
    job = ImportJob.objects.get(pk=body["id"])
    assert body["counts"]["total"] == 1 and job.city == "Oslo"
    assert job.items.get().kind == ImportItem.Kind.UPLOAD
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)]).exists()


def test_image_upload_of_an_archive(client):
    response = client.post("/api/images/", {"file": SimpleUploadedFile("set.zip", small_zip())})
    assert response.status_code == 202
    assert ImportJob.objects.get().items.get().kind == ImportItem.Kind.ARCHIVE


def test_image_upload_without_a_file_is_400(client):
    response = client.post("/api/images/", {"city": "Oslo"})
    assert response.status_code == 400
    assert "file" in error_of(response)["fields"]
    assert not ImportJob.objects.exists()


# --------------------------------------------------------------------------
# GET


def test_job_detail_reports_counts_and_per_item_errors(client):
    response = client.post("/api/imports/", {"file": [SimpleUploadedFile("good.jpg", picture(1)),
                                                      SimpleUploadedFile("bad.jpg", b"plain text, not pixels")]})
    job_id = response.json()["id"]
    assert tasks.run_job(uuid.UUID(job_id)) == "done"
    body = client.get(f"/api/imports/{job_id}/").json()
    assert body["state"] == "done" and body["percent"] == 100 and body["finished_at"]
    assert body["counts"] == {"total": 2, "done": 2, "added": 1, "duplicates": 0, "failed": 1}
    assert body["errors"] == [{"item": "bad.jpg", "source": "bad.jpg",
                               "message": "not an image (unrecognised format)"}]


def test_unknown_job_is_404_in_the_error_format(client):
    response = client.get(f"/api/imports/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_job_list_newest_first(client):
    for index in range(2):
        client.post("/api/imports/", {"urls": [f"https://example.com/{index}.jpg"]}, content_type="application/json")
    body = client.get("/api/imports/").json()
    assert [job["counts"]["total"] for job in body] == [1, 1]
    assert body[0]["created_at"] >= body[1]["created_at"] and "errors" not in body[0]


@pytest.mark.django_db(transaction=True)  # the worker closes connections between tasks
def test_end_to_end_through_the_task_queue(client):
    response = client.post("/api/images/", {"file": SimpleUploadedFile("e2e.jpg", picture(5))})
    call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", "--skip-checks", verbosity=0)
    body = client.get(response["Location"]).json()
    assert body["state"] == "done" and body["counts"]["added"] == 1
    assert Image.objects.get().original_name == "e2e.jpg"


def test_openapi_schema_describes_the_import_endpoints(client):
    schema = client.get("/api/schema/?format=json").json()
    create = schema["paths"]["/api/imports/"]["post"]
    assert "202" in create["responses"]
    assert set(create["requestBody"]["content"]) >= {"application/json", "multipart/form-data"}
    assert "202" in schema["paths"]["/api/images/"]["post"]["responses"]
    assert "multipart/form-data" in schema["paths"]["/api/images/"]["post"]["requestBody"]["content"]
    assert "200" in schema["paths"]["/api/imports/{id}/"]["get"]["responses"]
    job = schema["components"]["schemas"]["ImportJob"]["properties"]
    assert {"id", "state", "counts", "errors"} <= set(job)


# --------------------------------------------------------------------------
# import page


def test_import_page_form_and_recent_jobs(client):
    client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, content_type="application/json")
    response = client.get("/imports/")
    assert response.status_code == 200
    content = response.content.decode()
    assert 'enctype="multipart/form-data"' in content and 'name="files"' in content and "0 / 1" in content


def test_import_page_upload_redirects_to_progress_page(client):
    response = client.post("/imports/", {"files": [SimpleUploadedFile("a.jpg", picture(1)),
                                                   SimpleUploadedFile("b.zip", small_zip())],
                                         "urls": "https://example.com/x.jpg\n\n  https://example.com/y.jpg ",
                                         "city": "Porto", "group_key": ""})
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/imports/{job.pk}/"
    assert job.created_via == ImportJob.Via.PAGE and job.city == "Porto" and job.total == 4

    page = client.get(response["Location"]).content.decode()
    assert '<meta http-equiv="refresh"' in page and "<progress" in page and f"/api/imports/{job.pk}/" in page


@pytest.mark.parametrize(("data", "message"), [
    ({"urls": ""}, "Choose a file to upload or enter at least one URL."),
    ({"urls": "file:///etc/passwd"}, "Only http and https URLs can be imported"),
])
def test_import_page_bad_input_is_400_with_the_message(client, data, message):
    response = client.post("/imports/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ImportJob.objects.exists()


def test_finished_job_page_shows_problems_and_stops_refreshing(client):
    client.post("/imports/", {"files": [SimpleUploadedFile("good.jpg", picture(1)),
                                        SimpleUploadedFile("zero.jpg", b"")]})
    job = ImportJob.objects.get()
    tasks.run_job(job.pk)
    page = client.get(f"/imports/{job.pk}/").content.decode()
    assert "refresh" not in page and "zero.jpg" in page and "empty file" in page
    assert "1</span> added" in page


def test_unknown_import_page_is_404(client):
    assert client.get(f"/imports/{uuid.uuid4()}/").status_code == 404


# --------------------------------------------------------------------------
# admin


def test_admin_lists_jobs_and_uploads_start_one(admin_client):
    assert admin_client.get("/admin/catalog/importjob/").status_code == 200
    assert 'type="file"' in admin_client.get("/admin/catalog/importjob/add/").content.decode()
    response = admin_client.post("/admin/catalog/importjob/add/", {
        "files": [SimpleUploadedFile("a.jpg", picture(1)), SimpleUploadedFile("bad.jpg", b"nope")],
        "group_key": "g-1"})
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/admin/catalog/importjob/{job.pk}/change/"
    assert job.created_via == ImportJob.Via.ADMIN and job.group_key == "g-1"
    tasks.run_job(job.pk)
    change = admin_client.get(response["Location"]).content.decode()
    assert "bad.jpg" in change and "not an image (unrecognised format)" in change
    listing = admin_client.get("/admin/catalog/importjob/").content.decode()
    assert "2 / 2" in listing


def test_admin_add_with_nothing_shows_the_error(admin_client):
    response = admin_client.post("/admin/catalog/importjob/add/", {"urls": ""})
    assert response.status_code == 200
    assert "Choose a file to upload or enter at least one URL." in response.content.decode()
    assert not ImportJob.objects.exists()
