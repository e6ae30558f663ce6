"""Manifests: rows with their own metadata through ``import_images --manifest``, the import API
(a manifest of URLs, an archive holding manifest.csv), attribute and tag filters in search, and
``export_manifest`` round trips."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from PIL import Image as PILImage
from rest_framework.test import APIClient

from catalog import vector_search
from catalog.jobs import tasks
from catalog.models import Embedding, Image, ImportItem, ImportJob
from catalog.spaces import active_space
from tests.loopback import http_server
from tests.conftest import varied_picture

pytestmark = pytest.mark.django_db


def photo(index: int, *, exif_date: str = "") -> bytes:
    """A small distinct JPEG, with an EXIF date taken if given."""
    image = PILImage.open(io.BytesIO(varied_picture(index, (40, 30)))).convert("RGB")
    exif = PILImage.Exif()
    if exif_date:
        exif.get_ifd(0x8769)[0x9003] = exif_date  # DateTimeOriginal
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def import_manifest(manifest, *args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("import_images", "--manifest", str(manifest), "--no-progress", *args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), error
    return out.getvalue(), err.getvalue(), None


def metadata_of(image: Image) -> tuple:
    return image.city, image.group_key, image.taken_at, image.title, image.tags, image.attributes


def test_bad_rows_are_reported_by_line_and_the_rest_import(tmp_path, settings):
    settings.MANIFEST_MAX_ATTRIBUTES_BYTES = 64
    base = tmp_path / "photos"
    base.mkdir()
    (base / "a.jpg").write_bytes(photo(1, exif_date="2001:02:03 04:05:06"))
    (base / "c.jpg").write_bytes(photo(3, exif_date="2001:02:03 04:05:06"))
    (tmp_path / "outside.jpg").write_bytes(photo(4))
    (base / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    lines = [
        b"path,url,city,group_key,taken_at,title,tags,attributes,attr.brand",
        b'a.jpg,,Paris,sku-1,2024-05-01T10:00:00+02:00,Red car,red;car,"{""size"": 10}",acme',  # 2
        b"a.jpg,,,,yesterday,,,,",                                                             # 3
        b",,Lima,,,,,,",                                                                       # 4
        b"a.jpg,https://example.com/a.jpg,,,,,,,",                                             # 5
        b"../outside.jpg,,,,,,,,",                                                             # 6
        b"a.jpg,,,,,,,," + b"x" * 80,                                                          # 7
        b"a.jpg,,K\xf6ln,,,,,,",                                                               # 8
        b"c.jpg,,,,,,,,",                                                                      # 9
        b"missing.jpg,,,,,,,,",                                                                # 10
        b"link.jpg,,,,,,,,",                                                                   # 11
        b"/etc/passwd,,,,,,,,",                                                                # 12
        b"fifo,,,,,,,,",                                                                       # 13
        b'a.jpg,,,,,,,"{""a:b"": 1}",',                                                       # 14
    ]
    import os

    os.mkfifo(base / "fifo")  # reading it would block the import for ever
    manifest = tmp_path / "rows.csv"
    manifest.write_bytes(b"\n".join(lines) + b"\n")

    out, err, error = import_manifest(manifest, "--base", str(base), "--city", "Default")

    assert f"{manifest} line 3: taken_at: not a date" in err
    assert f"{manifest} line 4: no path, member or url" in err
    assert f"{manifest} line 5: give only one of path, member or url (got path, url)" in err
    assert f"{manifest} line 6: path: must be a relative path inside the base folder" in err
    assert f"{manifest} line 7: attributes: larger than 64 bytes" in err
    assert f"{manifest} line 8: not UTF-8 text" in err
    assert f"{manifest} line 12: path: must be a relative path" in err
    assert f"FAILED {base / 'missing.jpg'}: cannot read file" in err
    assert f"FAILED {base / 'link.jpg'}: the path leads outside the base folder" in err
    assert f"FAILED {base / 'fifo'}: not a regular file" in err
    assert f'{manifest} line 14: attributes: "a:b": a name holds no ":", ";" or control characters' in err
    assert "Added 2, skipped 0 duplicate(s), failed 3, 8 bad manifest row(s)." in out
    assert error is not None and error.returncode == 1
    images = {image.original_name: image for image in Image.objects.all()}
    assert set(images) == {"a.jpg", "c.jpg"}
    # The row's metadata, its taken_at over the EXIF date; the run's city where the row has none.
    assert metadata_of(images["a.jpg"]) == ("Paris", "sku-1", datetime(2024, 5, 1, 8, tzinfo=UTC), "Red car",
                                            ["red", "car"], {"size": 10, "brand": "acme"})
    assert metadata_of(images["c.jpg"]) == ("Default", "", datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC), "",
                                            [], {})
    # The embedding's filter copies follow the row's metadata.
    assert Embedding.objects.get(image=images["a.jpg"]).city == "Paris"


def test_a_row_whose_file_is_stored_already_says_its_metadata_was_not_applied(tmp_path):
    (tmp_path / "a.jpg").write_bytes(photo(5))
    (tmp_path / "b.jpg").write_bytes(photo(5))  # one placeholder picture shared by two products
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,title\na.jpg,P1\nb.jpg,P2\n")
    out, err, error = import_manifest(manifest)
    image = Image.objects.get()
    assert error is None and image.title == "P1" and "Added 1, skipped 1 duplicate(s)" in out
    assert f"skipped {tmp_path / 'b.jpg'}: the same file as an earlier item; this row's metadata was not applied" in err
    manifest.write_text("path,title\nb.jpg,P3\n")  # again, later: the file is stored
    out, err, error = import_manifest(manifest)
    assert f"skipped {tmp_path / 'b.jpg'}: already stored (image {image.pk}); this row's metadata was not applied" in err


@pytest.mark.parametrize("content, message", [
    (b"", "the manifest is empty"),
    (b"path,colour\na.jpg,red\n", 'line 1: unknown column "colour"'),
    (b"city,title\nParis,x\n", "line 1: the header needs a path, member or url column"),
    (b"path,city\n", "the manifest has no rows"),
])
def test_an_unusable_manifest_is_one_line_and_imports_nothing(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    _, _, error = import_manifest(manifest)
    assert error is not None and message in str(error)
    assert not Image.objects.exists()


class _Images(BaseHTTPRequestHandler):
    images: dict[str, bytes] = {}

    def do_GET(self):
        body = self.images.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(settings):
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    _Images.images = {"/one.jpg": photo(11), "/two.jpg": photo(12)}
    with http_server(_Images) as base:
        yield base


@pytest.fixture
def api(writer, settings):
    settings.IMPORT_LEASE_SECONDS = 600  # the heartbeat never needs the uncommitted test rows
    client = APIClient()
    client.force_authenticate(writer)
    return client


def test_manifest_of_urls_through_the_api_keeps_each_rows_metadata(api, image_server,
                                                                   django_capture_on_commit_callbacks):
    rows = [{"url": f"{image_server}/one.jpg", "city": "Oslo", "tags": ["boat"], "attributes": {"brand": "acme"},
             "taken_at": "2020-01-02"},
            {"url": f"{image_server}/two.jpg", "title": "Second"},
            {"path": "local.jpg"},
            {"url": f"{image_server}/one.jpg", "colour": "red"},
            {"url": f"{image_server}/two.jpg", "city": "nul\x00"}]
    empty = api.post("/api/imports/", {"manifest": SimpleUploadedFile("rows.jsonl", b"")}, format="multipart")
    assert empty.status_code == 400 and empty.json()["error"]["fields"]["manifest"] == [
        "rows.jsonl: the manifest is empty"]
    manifest = "\n".join(json.dumps(row) for row in rows).encode() + b"\n{not json\n"
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post("/api/imports/", {"manifest": SimpleUploadedFile("rows.jsonl", manifest),
                                              "group_key": "batch-7"}, format="multipart")
    assert response.status_code == 202, response.content
    job = ImportJob.objects.get()
    assert (job.total, job.failed) == (6, 4)
    # The rows' metadata is on the items that make the import exactly-once (committed with the job).
    assert ImportItem.objects.get(url=f"{image_server}/one.jpg").metadata["attributes"] == {"brand": "acme"}
    assert tasks.run_job(job.pk) == "done"
    body = api.get(response["Location"]).json()
    assert body["counts"] == {"total": 6, "done": 6, "added": 2, "duplicates": 0, "failed": 4}
    assert [error["message"] for error in body["errors"]] == [
        "line 3: path rows need the manifest inside an archive (or manage.py import_images --manifest)",
        'line 4: unknown field "colour"', "line 5: city: holds a null character or an invalid code point",
        "line 6: not valid JSON"]
    one, two = Image.objects.get(original_name="one.jpg"), Image.objects.get(original_name="two.jpg")
    assert metadata_of(one) == ("Oslo", "batch-7", datetime(2020, 1, 2, tzinfo=UTC), "", ["boat"],
                                {"brand": "acme"})
    assert (two.title, two.group_key, two.source) == ("Second", "batch-7", Image.Source.URL)
    detail = api.get(f"/api/images/{one.pk}/").json()
    assert (detail["tags"], detail["attributes"]) == (["boat"], {"brand": "acme"})


def test_an_uploaded_manifest_gives_no_more_items_than_one_request_may_have_urls(api, settings,
                                                                                  django_capture_on_commit_callbacks):
    settings.IMPORT_MAX_URLS = 2
    manifest = "".join(json.dumps({"url": f"http://127.0.0.1:9/{index}.jpg"}) + "\n" for index in range(5))
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post("/api/imports/", {"manifest": SimpleUploadedFile("rows.jsonl", manifest.encode())},
                            format="multipart")
    assert response.status_code == 202, response.content
    assert ImportItem.objects.count() == 3
    assert ImportItem.objects.get(state=ImportItem.State.FAILED).error == (
        "line 3: more than 2 rows: this row and the rest are not imported")


def test_manifest_upload_on_the_import_page(writer_client):
    bad = writer_client.post("/imports/", {"manifest": SimpleUploadedFile("m.csv",
                                                                          b"url,colour\nhttps://e.com/a.jpg,red\n")})
    assert bad.status_code == 400 and "unknown column" in bad.content.decode() and not ImportJob.objects.exists()
    good = writer_client.post("/imports/", {"manifest": SimpleUploadedFile(
        "m.csv", b"url,title\nhttps://example.com/a.jpg,First\n,\n")})
    job = ImportJob.objects.get()
    assert good.status_code == 302 and job.total == 1
    assert job.items.get().metadata == {"title": "First"}


def test_archive_with_a_manifest_at_its_root_through_the_api(api):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.csv", "member,city,attr.colour\nimgs/a.jpg,Quito,blue\nimgs/gone.jpg,,\n"
                                         "imgs/a.jpg,Lima,\n")
        archive.writestr("imgs/a.jpg", photo(21))
        archive.writestr("imgs/b.jpg", photo(22))
    response = api.post("/api/imports/", {"file": SimpleUploadedFile("set.zip", buffer.getvalue()),
                                          "city": "Default"}, format="multipart")
    assert response.status_code == 202, response.content
    assert tasks.run_job(ImportJob.objects.get().pk) == "done"
    body = api.get(response["Location"]).json()
    assert body["counts"] == {"total": 4, "done": 4, "added": 2, "duplicates": 0, "failed": 2}
    assert sorted(error["message"] for error in body["errors"]) == [
        'line 3: no image "imgs/gone.jpg" in the archive', 'line 4: "imgs/a.jpg" is named on line 2 already']
    stored = {image.original_name: (image.city, image.attributes) for image in Image.objects.all()}
    assert stored == {"imgs/a.jpg": ("Quito", {"colour": "blue"}), "imgs/b.jpg": ("Default", {})}


@pytest.mark.slow
def test_attribute_and_tag_filters_in_search_stay_exact_and_sorted(api, client, monkeypatch):
    from catalog.ingest.pipeline import IngestItem, IngestOptions, ItemMetadata, ingest_items

    count = 24
    acme = {3, 17, 22}  # few among many
    items = [IngestItem.from_bytes(f"p{i}.png", varied_picture(i, (36, 28))) for i in range(count)]
    items = [IngestItem(name=item.name, source_ref=item.source_ref, read=item.read, metadata=ItemMetadata(
        attributes={"brand": "acme" if i in acme else "other", "size": i % 2}, tags=("sale",) if i % 4 == 0 else ()))
        for i, item in enumerate(items)]
    report = ingest_items(items, options=IngestOptions(source=Image.Source.UPLOAD))
    assert report.added == count
    ids = [outcome.image_id for outcome in report.outcomes]
    space = active_space()
    vectors = {image_id: np.asarray(vector, dtype=np.float32) for image_id, vector in
               Embedding.objects.filter(space=space).values_list("image_id", "vector")}

    def truth(reference: int, matches) -> list[int]:
        others = [image_id for image_id in ids if image_id != reference and matches(ids.index(image_id))]
        return sorted(others, key=lambda image_id: (-float(vectors[image_id] @ vectors[reference]), image_id))

    def search(reference: int, **filters) -> list[int]:
        response = api.post("/api/search/", {"similar_to": reference, "top_k": 10, **filters}, format="json")
        assert response.status_code == 200, response.content
        return [hit["id"] for hit in response.json()["results"]]

    # Thresholds scaled down so that these filters are counted and walk the graph, as on a large collection.
    monkeypatch.setattr(vector_search, "EXACT_MIN_ROWS", 2)
    monkeypatch.setattr(vector_search, "EXACT_SHARE", 0.05)
    vector_search._space_sizes.clear()
    reference = ids[0]
    assert search(reference, attr=["brand:acme"]) == truth(reference, lambda i: i in acme)
    assert search(reference, attr=["size:1"]) == truth(reference, lambda i: i % 2 == 1)[:10]
    assert search(reference, attr=["brand:acme", "size:1"]) == truth(reference, lambda i: i in acme and i % 2)
    assert search(reference, tag=["sale"]) == truth(reference, lambda i: i % 4 == 0)[:10]
    assert search(reference, attr=["brand:nobody"]) == []
    # The gallery and the image list filter the same way.
    assert client.get("/", {"attr": "brand:acme; size:1"}).context["results"].count == 2
    listed = api.get("/api/images/", {"attr": "brand:acme"})
    assert listed.json()["count"] == 3, listed.content
    bad = api.post("/api/search/", {"similar_to": reference, "attr": ["no-colon"]}, format="json")
    assert bad.status_code == 400 and "name:value" in bad.json()["error"]["message"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_then_import_into_an_empty_collection_keeps_the_metadata(tmp_path, media_root, fmt):
    base = tmp_path / "in"
    base.mkdir()
    for index in range(3):
        (base / f"{index}.jpg").write_bytes(photo(30 + index))
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"path": "0.jpg", "city": "Rome", "group_key": "g", "taken_at": "2022-03-04T05:06:07Z", "title": "Zero",
         "tags": ["a;b", "c"], "attributes": {"k": "v, \"quoted\"", "n": 1.5, "ok": True}},
        {"path": "1.jpg", "title": "=HYPERLINK(\"http://x\")", "city": "+cmd", "tags": ["[draft]", "'=q", "-"],
         "attributes": {"Brand": "@SUM(1)"}},  # formulas to a spreadsheet; a tag a CSV cell reads as JSON
        {"path": "2.jpg"}]))
    assert import_manifest(tmp_path / "in.jsonl", "--base", str(base))[2] is None
    before = {image.original_name: metadata_of(image) for image in Image.objects.all()}

    output = tmp_path / f"export.{fmt}"
    call_command("export_manifest", "--output", str(output), stderr=io.StringIO())
    if fmt == "csv":  # no cell a spreadsheet would run
        import csv

        cells = [cell for row in csv.reader(output.open(encoding="utf-8")) for cell in row]
        assert cells and not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    moved = tmp_path / "moved"
    media_root.rename(moved)  # the same files, elsewhere; the collection empty
    Image.objects.all().delete()

    out, err, error = import_manifest(output, "--base", str(moved))
    assert error is None, err
    assert "Added 3," in out
    assert {image.original_name: metadata_of(image) for image in Image.objects.all()} == before
    assert Image.objects.filter(attributes__Brand="@SUM(1)").count() == 1  # names keep their case


@pytest.mark.slow
def test_a_video_exports_as_one_row_and_comes_back_with_its_frames(tmp_path, media_root):
    from catalog.models import Video
    from tests.test_videos import make_video

    base = tmp_path / "in"
    base.mkdir()
    (base / "clip.mp4").write_bytes(make_video([2.0, 2.0], seed=3))
    (base / "rows.csv").write_text("path,title,attr.scene\nclip.mp4,Harbour,boats\n")
    assert import_manifest(base / "rows.csv")[2] is None
    before = sorted((image.video_time, metadata_of(image)) for image in Image.objects.all())
    assert [time for time, _ in before] == [0.0, 2.0] and before[1][1][3:] == ("Harbour", [], {"scene": "boats"})

    output = tmp_path / "export.csv"
    call_command("export_manifest", "--output", str(output), stderr=io.StringIO())
    assert len(output.read_text().splitlines()) == 2  # the header and the video, not its frames
    moved = tmp_path / "moved"
    media_root.rename(moved)
    Video.objects.all().delete()
    assert not Image.objects.exists()

    assert import_manifest(output, "--base", str(moved))[2] is None
    assert sorted((image.video_time, metadata_of(image)) for image in Image.objects.all()) == before
