"""Media on S3 for real: django-storages' S3Storage against a real S3 API server (moto's server mode)
started on 127.0.0.1 once for this module, one new bucket per test. Nothing here may reach AWS:
the endpoint is loopback, the credentials are fakes and the instance-metadata lookup is off."""

from __future__ import annotations

import hashlib
import io
import logging
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image as PILImage

from catalog.jobs import tasks
from catalog.models import Image
from tests.conftest import ingest_pictures, varied_picture

S3_STORAGE = "storages.backends.s3.S3Storage"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_EC2_METADATA_DISABLED": "true"}  # never ask 169.254.169.254 for credentials


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Bucket:
    def __init__(self, endpoint: str, name: str):
        import boto3

        self.endpoint, self.name = endpoint, name
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        self.client.create_bucket(Bucket=name)

    def names(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def environ(self) -> dict[str, str]:
        """The same configuration as the environment variables an operator sets."""
        return {"IMAGESEARCH_STORAGE_BACKEND": S3_STORAGE, "AWS_STORAGE_BUCKET_NAME": self.name,
                "AWS_S3_ENDPOINT_URL": self.endpoint, "AWS_S3_REGION_NAME": "us-east-1",
                "AWS_S3_ADDRESSING_STYLE": "path", **FAKE_CREDENTIALS}


@pytest.fixture
def bucket(s3_endpoint, settings, monkeypatch) -> Bucket:
    """A new bucket, and the default storage pointed at it through the settings django-storages reads."""
    assert s3_endpoint.startswith("http://127.0.0.1:")  # loopback only, never AWS
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    made = Bucket(s3_endpoint, f"test-{uuid.uuid4().hex[:12]}")
    settings.AWS_STORAGE_BUCKET_NAME = made.name
    settings.AWS_S3_ENDPOINT_URL = s3_endpoint
    settings.AWS_S3_REGION_NAME = "us-east-1"
    settings.AWS_S3_ADDRESSING_STYLE = "path"
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": S3_STORAGE}}  # resets default_storage
    assert default_storage.url("x").startswith(f"{s3_endpoint}/{made.name}/x?")
    return made


AWS_SETTINGS = ("AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL", "AWS_S3_REGION_NAME", "AWS_S3_ADDRESSING_STYLE",
                "AWS_S3_CUSTOM_DOMAIN", "AWS_QUERYSTRING_AUTH", "AWS_QUERYSTRING_EXPIRE", "AWS_S3_SIGNATURE_VERSION")


def test_the_s3_environment_variables_reach_django_storages(monkeypatch, s3_endpoint, settings):
    """django-storages reads settings, not the environment: imagesearch/settings.py must carry them over."""
    import runpy

    from django.core.exceptions import ImproperlyConfigured
    from storages.backends.s3 import S3Storage

    for name, value in {"IMAGESEARCH_STORAGE_BACKEND": S3_STORAGE, "AWS_STORAGE_BUCKET_NAME": "photos",
                        "AWS_S3_ENDPOINT_URL": s3_endpoint, "AWS_S3_ADDRESSING_STYLE": "path",
                        "AWS_QUERYSTRING_EXPIRE": "600", **FAKE_CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    values = runpy.run_path(str(django_settings_file()))
    assert values["STORAGES"]["default"]["BACKEND"] == S3_STORAGE
    for name in AWS_SETTINGS:
        setattr(settings, name, values[name])
    storage = S3Storage()  # signing a URL is local: nothing is sent
    assert (storage.bucket_name, storage.endpoint_url, storage.querystring_expire) == ("photos", s3_endpoint, 600)
    url = storage.url("images/ab/x.jpg")
    assert url.startswith(f"{s3_endpoint}/photos/images/ab/x.jpg?") and "X-Amz-Expires=600" in url
    img_src = values["CONTENT_SECURITY_POLICY"]["DIRECTIVES"]["img-src"]
    assert s3_endpoint in img_src and s3_endpoint.replace("://", "://*.") in img_src  # pages may show its links

    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(ImproperlyConfigured, match="^AWS_S3_ADDRESSING_STYLE='sideways' is invalid"):
        runpy.run_path(str(django_settings_file()))


def django_settings_file() -> Path:
    import imagesearch.settings

    return Path(imagesearch.settings.__file__)


def stored_names(images) -> set[str]:
    return {name for image in images for name in (image.file.name, image.thumbnail.name)}


def fetch(url: str) -> tuple[int, str, bytes]:
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback, asserted above
        return response.status, response.headers["Content-Type"], response.read()


@pytest.mark.django_db
def test_an_import_stores_originals_and_thumbnails_as_objects_and_links_to_signed_urls(bucket, client, tmp_path):
    pictures = [(f"p{i}.png", varied_picture(i)) for i in range(3)]
    images = ingest_pictures(pictures)
    assert bucket.names() == stored_names(images)
    assert not (tmp_path / "media").exists()  # nothing went to the local media folder
    for image, (_, data) in zip(images, pictures):
        assert bucket.read(image.file.name) == data and hashlib.sha256(data).hexdigest() == image.sha256
        assert PILImage.open(io.BytesIO(bucket.read(image.thumbnail.name))).format == "JPEG"

    # Pages and the API link to the bucket with signed URLs (private bucket), which serve the bytes.
    image = images[0]
    api = client.get(f"/api/images/{image.pk}/").json()
    for url, data, content_type in [(api["image_url"], pictures[0][1], "image/png"),
                                    (api["thumbnail_url"], bucket.read(image.thumbnail.name), "image/jpeg")]:
        assert url.startswith(f"{bucket.endpoint}/{bucket.name}/") and "X-Amz-Signature=" in url
        assert fetch(url) == (200, content_type, data)
    page = client.get(f"/images/{image.pk}/").content.decode()
    assert f'src="{bucket.endpoint}/{bucket.name}/{image.file.name}?' in page

    # A /media/ link is sent to the signed URL, after the same checks as local files.
    redirect = client.get(f"/media/{image.file.name}")
    assert redirect.status_code == 302 and fetch(redirect["Location"])[2] == pictures[0][1]
    assert client.get("/media/imports/1/00000-x.zip").status_code == 404

    # The same bytes again: skipped, no new object.
    ingest_pictures([("again.png", pictures[0][1])])
    assert bucket.names() == stored_names(images)


@pytest.mark.django_db
def test_thumbnails_are_regenerated_in_the_bucket_and_the_old_objects_removed(bucket, settings):
    images = ingest_pictures([("r.png", varied_picture(1, size=(64, 48)))])
    old = images[0].thumbnail.name
    settings.THUMBNAIL_MAX_SIDE = 16
    call_command("regenerate_thumbnails", "--no-progress", stdout=io.StringIO(), stderr=io.StringIO())
    images[0].refresh_from_db()
    assert images[0].thumbnail.name != old and bucket.names() == stored_names(images)
    assert PILImage.open(io.BytesIO(bucket.read(images[0].thumbnail.name))).size == (16, 12)


@pytest.mark.django_db
def test_deleting_an_image_in_the_admin_removes_its_objects_and_keeps_the_others(
        bucket, admin_client, django_capture_on_commit_callbacks):
    gone, kept = ingest_pictures([("gone.png", varied_picture(1)), ("kept.png", varied_picture(2))])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/catalog/image/{gone.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Image.objects.filter(pk=gone.pk).exists()
    assert bucket.names() == stored_names([kept])


class Killed(BaseException):
    """Stands for SIGKILL or a power cut: nothing of the import runs after it, no clean-up either."""


@pytest.mark.slow
@pytest.mark.django_db
def test_an_import_killed_mid_batch_leaves_no_row_without_objects_and_a_rerun_and_sweep_finish(
        bucket, tmp_path, monkeypatch):
    from catalog.ingest import pipeline

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(16):  # two batches of 8 (CLIP_BATCH_SIZE in tests/settings.py)
        (folder / f"{index:02d}.png").write_bytes(varied_picture(index, size=(32, 32)))
    real, calls = Image.objects.bulk_create, []

    def bulk_create(*args, **kwargs):  # the second batch dies after its objects are written, before its rows
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    with monkeypatch.context() as killed:
        killed.setattr(Image.objects, "bulk_create", bulk_create)
        killed.setattr(pipeline, "_remove_unreferenced", lambda names: None)  # a killed process cleans nothing
        with pytest.raises(Killed):
            call_command("import_images", str(folder), "--no-progress", stdout=io.StringIO(), stderr=io.StringIO())

    rows = list(Image.objects.all())
    assert len(rows) == 8  # the first batch committed whole
    names = bucket.names()
    assert stored_names(rows) <= names  # no row without its objects
    assert len(names - stored_names(rows)) == 16  # the second batch's originals and thumbnails

    out = io.StringIO()
    call_command("sweep_orphans", "--grace", "0", "--no-progress", stdout=out, stderr=io.StringIO())
    assert "removed 16" in out.getvalue()
    assert bucket.names() == stored_names(rows)

    out = io.StringIO()
    call_command("import_images", str(folder), "--no-progress", stdout=out, stderr=io.StringIO())
    assert "Added 8, skipped 8 duplicate(s), failed 0." in out.getvalue()
    rows = list(Image.objects.all())
    assert len(rows) == 16 and bucket.names() == stored_names(rows)


@pytest.mark.django_db
def test_uploads_and_archives_wait_in_the_bucket_and_their_payloads_go_once_imported(
        bucket, writer_client, django_capture_on_commit_callbacks):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("in/zipped.png", varied_picture(41))
    response = writer_client.post("/api/imports/", {"file": [SimpleUploadedFile("up.png", varied_picture(40)),
                                                      SimpleUploadedFile("set.zip", archive.getvalue())]})
    assert response.status_code == 202, response.content
    assert {key.split("/")[0] for key in bucket.names()} == {"imports"}  # the payloads wait in the bucket

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_job(uuid.UUID(response.json()["id"])) == "done"
    images = list(Image.objects.order_by("original_name"))
    assert [image.original_name for image in images] == ["in/zipped.png", "up.png"]
    assert bucket.names() == stored_names(images)  # payloads removed once the job is done
