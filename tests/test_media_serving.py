"""Stored media: only pictures are served, as images, with nosniff; uploaded import payloads are never
served, and are deleted when their job fails as well as when it finishes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.jobs import claims, payloads, tasks
from catalog.jobs import requests as jobs
from catalog.models import ImportItem, ImportJob
from tests.conftest import ingest_pictures, make_image_bytes

pytestmark = pytest.mark.django_db

XSS = b"<html><script>alert(document.cookie)</script></html>"


@pytest.fixture(autouse=True)
def long_lease(settings):
    settings.IMPORT_LEASE_SECONDS = 600


def put(media_root: Path, name: str, data: bytes) -> None:
    path = Path(media_root) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_stored_pictures_are_served_as_images_with_nosniff(writer_client):
    image = ingest_pictures([("a.png", make_image_bytes(fmt="PNG"))])[0]
    for url, content_type in ((image.file.url, "image/png"), (image.thumbnail.url, "image/jpeg")):
        response = writer_client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"] == content_type
        assert response["X-Content-Type-Options"] == "nosniff"


def test_an_uploaded_html_payload_is_never_served(writer_client, media_root):
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("x.html", XSS, "text/html")]})
    job = ImportJob.objects.get(pk=response.json()["id"])
    payload = job.items.get().payload
    assert (Path(media_root) / payload).read_bytes() == XSS  # stored, pending
    assert writer_client.get(f"/media/{payload}").status_code == 404
    assert writer_client.get(f"/media/images/../{payload}").status_code == 404


@pytest.mark.parametrize("name", ["images/ab/evil.html", "images/ab/evil.svg", "thumbnails/ab/x.js",
                                  "images/ab/noext", "other/a.jpg", "imports/x/00000-a.jpg", "secret_key"])
def test_anything_but_a_picture_in_the_picture_folders_is_404(writer_client, media_root, name):
    put(media_root, name, XSS)
    response = writer_client.get(f"/media/{name}")
    assert response.status_code == 404
    assert b"<script>" not in response.content


def test_a_picture_named_file_with_html_inside_is_still_served_as_an_image(writer_client, media_root):
    put(media_root, "images/ab/fake.jpg", XSS)
    response = writer_client.get("/media/images/ab/fake.jpg")
    assert response["Content-Type"] == "image/jpeg" and response["X-Content-Type-Options"] == "nosniff"


def test_a_failed_job_loses_its_payloads(writer_client, media_root, django_capture_on_commit_callbacks):
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", make_image_bytes())]})
    job = ImportJob.objects.get(pk=response.json()["id"])
    folder = Path(media_root) / job.payload_folder
    assert any(folder.iterdir())
    with django_capture_on_commit_callbacks(execute=True):
        claims.fail_job(job.pk, "the model could not be loaded")
    assert not folder.exists()


def test_a_job_failed_by_too_many_attempts_loses_its_payloads(writer_client, settings, media_root,
                                                             django_capture_on_commit_callbacks):
    settings.IMPORT_MAX_ATTEMPTS = 1
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", make_image_bytes())]})
    job_id = uuid.UUID(response.json()["id"])
    ImportJob.objects.filter(pk=job_id).update(attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert claims.claim_chunk(job_id, "worker-2", size=1).outcome is claims.Claim.FINISHED
    assert ImportJob.objects.get(pk=job_id).state == ImportJob.State.FAILED
    assert not (Path(media_root) / ImportJob.objects.get(pk=job_id).payload_folder).exists()


def test_retrying_a_failed_job_fails_the_uploads_it_no_longer_has_and_runs_the_rest(
        writer_client, media_root, django_capture_on_commit_callbacks):
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", make_image_bytes())]})
    job = ImportJob.objects.get(pk=response.json()["id"])
    with django_capture_on_commit_callbacks(execute=True):
        claims.fail_job(job.pk, "boom")
    assert jobs.retry_job(job.pk)
    job.refresh_from_db()
    assert job.state == ImportJob.State.QUEUED and job.failed == 1
    item = job.items.get()
    assert item.state == ImportItem.State.FAILED and item.error == jobs.PAYLOAD_GONE
    assert tasks.run_job(job.pk) == "done"
    assert writer_client.get(f"/api/imports/{job.pk}/").json()["errors"][0]["message"] == jobs.PAYLOAD_GONE


def test_prune_removes_payloads_of_failed_jobs(writer_client, media_root):
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("a.jpg", make_image_bytes())]})
    job = ImportJob.objects.get(pk=response.json()["id"])
    ImportJob.objects.filter(pk=job.pk).update(state=ImportJob.State.FAILED, error="boom",  # cleanup missed
                                               finished_at=job.created_at)
    assert payloads.prune_payloads() == 1
    assert not (Path(media_root) / job.payload_folder).exists()
