"""Import jobs end to end in-process: create a job as the API/page would, run it as the worker
would (catalog.jobs.tasks.run_job), and check what was stored and what each item says.

Every kind of bad input is checked at the job level: the bad item is recorded with its message
and the good ones are stored. URL tests only ever talk to a local server on 127.0.0.1; the
private-address cases use a stub resolver (refused before any connection)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
import time
import zipfile
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone as dj_timezone
from django_tasks_db.models import DBTaskResult
from PIL import ExifTags
from PIL import Image as PILImage

from catalog.embedder import EmbedderUnavailable
from catalog.ingest.pipeline import ItemRejected
from catalog.jobs import claims, tasks, worker
from catalog.jobs import requests as jobs
from catalog.models import Embedding, Image, ImportItem, ImportJob
from tests.loopback import http_server

pytestmark = pytest.mark.django_db


def picture(index: int, size=(40, 30), fmt="JPEG") -> bytes:
    """A distinct small picture per ``index``."""
    image = PILImage.new("RGB", size, ((index * 53) % 256, (index * 97) % 256, (index * 31) % 256))
    image.putpixel((index % size[0], (index // size[0]) % size[1]), (255 - index % 256, 7, 99))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buffer.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def run(job: ImportJob) -> ImportJob:
    assert tasks.run_job(job.pk) == "done"
    job.refresh_from_db()
    return job


def item_errors(job: ImportJob) -> dict[str, str]:
    return {item.name: item.error for item in job.items.filter(state=ImportItem.State.FAILED)}


def assert_counts(job: ImportJob, *, total, added, duplicates=0, failed=0):
    assert (job.total, job.added, job.duplicates, job.failed) == (total, added, duplicates, failed)
    assert job.done == added + duplicates + failed


@pytest.fixture(autouse=True)
def import_settings(settings):
    # Long enough that the heartbeat thread never needs the (uncommitted) test rows.
    settings.IMPORT_LEASE_SECONDS = 600
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.FETCH_TIMEOUT = 0.5
    settings.FETCH_TOTAL_TIMEOUT = 5
    settings.FETCH_MAX_BYTES = 1024 * 1024
    return settings


# --------------------------------------------------------------------------
# uploads


def test_upload_job_stores_good_images_and_records_each_bad_one(settings, django_capture_on_commit_callbacks):
    settings.IMAGE_MAX_PIXELS = 1_000_000
    bomb = io.BytesIO()
    PILImage.new("L", (4000, 4000)).save(bomb, format="PNG")  # 16 Mpx in a few KB
    good = [picture(i) for i in range(3)]
    files = [upload(f"good{i}.jpg", data) for i, data in enumerate(good)] + [
        upload("truncated.jpg", picture(9, size=(200, 150))[:900]),
        upload("notes.jpg", b"these are not the pixels you are looking for" * 10),
        upload("empty.jpg", b""),
        upload("bomb.png", bomb.getvalue()),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        job = jobs.create_job(files=files, city="Lisbon", group_key="sku-1", via=ImportJob.Via.API)
    assert job.state == ImportJob.State.QUEUED and job.total == 7
    # The bytes were in storage before the task was queued.
    assert all(default_storage.exists(item.payload) for item in job.items.all())
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)], status="READY").count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        job = run(job)

    assert job.state == ImportJob.State.DONE and job.finished_at is not None
    assert_counts(job, total=7, added=3, failed=4)
    assert item_errors(job) == {
        "truncated.jpg": "truncated or corrupt image",
        "notes.jpg": "not an image (unrecognised format)",
        "empty.jpg": "empty file",
        "bomb.png": "image too large: 16000000 pixels (limit 1000000)",
    }
    stored = Image.objects.order_by("original_name")
    assert [i.original_name for i in stored] == ["good0.jpg", "good1.jpg", "good2.jpg"]
    for image, data in zip(stored, good, strict=True):
        assert image.sha256 == hashlib.sha256(data).hexdigest()
        assert (image.source, image.city, image.group_key) == (Image.Source.UPLOAD, "Lisbon", "sku-1")
        assert (image.width, image.height) == (40, 30)
        assert default_storage.open(image.file.name).read() == data
        assert default_storage.exists(image.thumbnail.name)
        assert image.embeddings.count() == 1
    # Each added item points at its image; payloads are gone once the job is done.
    added_ids = set(job.items.filter(state="added").values_list("image_id", flat=True))
    assert added_ids == set(stored.values_list("pk", flat=True))
    assert not default_storage.exists(job.payload_folder)


def test_duplicates_within_a_job_and_against_the_collection_are_counted_not_stored_twice():
    first = run(jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API))
    assert_counts(first, total=1, added=1)
    job = run(jobs.create_job(files=[upload("a-again.jpg", picture(1)), upload("b.jpg", picture(2)),
                                     upload("b-copy.jpg", picture(2))], via=ImportJob.Via.PAGE))
    assert_counts(job, total=3, added=1, duplicates=2)
    assert Image.objects.count() == 2
    duplicate = job.items.get(name="a-again.jpg")
    assert duplicate.state == ImportItem.State.DUPLICATE and duplicate.image_id == first.items.get().image_id


def test_metadata_orientation_taken_at_gps_and_city_from_gps():
    image = PILImage.new("RGB", (60, 20), (10, 120, 200))
    exif = PILImage.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotated 90°: displayed 20 x 60
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:05 14:30:00"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (38.0, 43.0, 20.0),
        ExifTags.GPS.GPSLongitudeRef: "W", ExifTags.GPS.GPSLongitude: (9.0, 8.0, 21.0)})
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    job = run(jobs.create_job(files=[upload("lisbon.jpg", buffer.getvalue())], via=ImportJob.Via.API))
    assert_counts(job, total=1, added=1)
    stored = Image.objects.get()
    assert (stored.width, stored.height) == (20, 60)
    assert stored.taken_at == datetime(2021, 6, 5, 14, 30, tzinfo=timezone.utc)
    assert stored.latitude == pytest.approx(38.7222, abs=1e-3) and stored.longitude == pytest.approx(-9.1392, abs=1e-3)
    assert stored.city == "Lisbon"


# --------------------------------------------------------------------------
# archives


def test_zip_archive_members_are_imported_and_unsafe_members_refused(settings):
    settings.ARCHIVE_MAX_MEMBER_BYTES = 512 * 1024
    inner = zip_bytes([("x.jpg", picture(50))])
    archive = zip_bytes([
        ("trip/one.jpg", picture(1)), ("trip/two.png", picture(2, fmt="PNG")), ("three.jpg", picture(3)),
        ("../escape.jpg", picture(4)), ("/etc/absolute.jpg", picture(5)), (symlink_info("link.jpg"), b"/etc/passwd"),
        ("inner.zip", inner), ("zero.jpg", b""), ("broken.jpg", picture(6, size=(200, 100))[:700]),
        ("bomb.jpg", b"\0" * (2 * 1024 * 1024)),  # 2 MB of zeros, a few KB compressed
        ("__MACOSX/._one.jpg", b"junk"),  # resource forks are skipped silently
    ])
    job = run(jobs.create_job(files=[upload("photos.zip", archive)], group_key="album", via=ImportJob.Via.API))
    assert_counts(job, total=10, added=3, failed=7)
    assert item_errors(job) == {
        "../escape.jpg": "unsafe path", "/etc/absolute.jpg": "unsafe path", "link.jpg": "symlink not allowed",
        "inner.zip": "nested archive not supported", "zero.jpg": "empty file",
        "broken.jpg": "truncated or corrupt image", "bomb.jpg": "too large",
    }
    stored = Image.objects.order_by("original_name")
    assert [i.original_name for i in stored] == ["three.jpg", "trip/one.jpg", "trip/two.png"]
    assert {i.source for i in stored} == {Image.Source.ARCHIVE} and {i.group_key for i in stored} == {"album"}
    assert stored[1].source_ref == "photos.zip:trip/one.jpg"
    assert job.items.get(kind=ImportItem.Kind.ARCHIVE).state == ImportItem.State.EXPANDED


def test_tar_gz_archive_with_traversal_and_symlinks():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in [("a.jpg", picture(1)), ("sub/b.jpg", picture(2)), ("../../up.jpg", picture(3)),
                           ("/abs.jpg", picture(4))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("evil.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(link)
    job = run(jobs.create_job(files=[upload("photos.tar.gz", buffer.getvalue())], via=ImportJob.Via.API))
    assert_counts(job, total=5, added=2, failed=3)
    assert item_errors(job) == {"../../up.jpg": "unsafe path", "/abs.jpg": "unsafe path",
                                "evil.jpg": "symlink not allowed"}


def test_zip_bomb_and_corrupt_archive_fail_as_a_whole_and_the_rest_of_the_import_is_intact(settings):
    settings.ARCHIVE_MAX_TOTAL_BYTES = 1024 * 1024
    bomb = zip_bytes([(f"zeros{i}.jpg", b"\0" * (600 * 1024)) for i in range(4)])  # 2.4 MB from a few KB
    corrupt = b"PK\x03\x04" + os.urandom(2000)
    job = run(jobs.create_job(files=[upload("bomb.zip", bomb), upload("corrupt.zip", corrupt),
                                     upload("fine.jpg", picture(1))], via=ImportJob.Via.API))
    assert_counts(job, total=3, added=1, failed=2)
    errors = item_errors(job)
    assert errors["bomb.zip"] == "archive too large: more than 1048576 bytes uncompressed"
    assert errors["corrupt.zip"].startswith("corrupt archive")
    assert Image.objects.get().original_name == "fine.jpg"


def test_archive_with_too_many_members_and_empty_archive(settings):
    settings.ARCHIVE_MAX_MEMBERS = 3
    many = zip_bytes([(f"{i}.jpg", picture(i)) for i in range(5)])
    empty = zip_bytes([])
    job = run(jobs.create_job(files=[upload("many.zip", many), upload("empty.zip", empty)], via=ImportJob.Via.API))
    assert_counts(job, total=2, added=0, failed=2)
    assert item_errors(job) == {"many.zip": "too many members: 5 (limit 3)", "empty.zip": "the archive holds no files"}


# --------------------------------------------------------------------------
# URLs


class _Handler(BaseHTTPRequestHandler):
    images = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = self.path
        if path in self.images:
            return self._send(200, "image/jpeg", self.images[path])
        if path == "/slow.jpg":
            time.sleep(2)
            return self._send(200, "image/jpeg", picture(99))
        if path in ("/loop-a", "/loop-b"):
            self.send_response(302)
            self.send_header("Location", "/loop-b" if path == "/loop-a" else "/loop-a")
            self.end_headers()
            return
        if path == "/page.html":
            return self._send(200, "text/html; charset=utf-8", b"<html>not a picture</html>")
        if path == "/declared-big.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10 * 1024 * 1024))
            self.end_headers()
            return
        if path == "/endless.jpg":  # no Content-Length, keeps sending
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass
            return
        if path == "/fake.jpg":
            return self._send(200, "image/jpeg", b"<?php echo 'hi'; ?>" * 20)
        self._send(404, "text/plain", b"not found")

    def _send(self, status, content_type, body):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def image_server():
    _Handler.images = {"/photo.jpg": picture(1), "/dir/second.jpg": picture(2)}
    with http_server(_Handler) as base:
        yield base


@pytest.fixture
def stub_resolver(monkeypatch):
    """Names the tests use, resolved without DNS; anything else fails to resolve."""
    table = {"intranet.test": "10.1.2.3", "metadata.test": "169.254.169.254", "localhost": "127.0.0.1",
             "carrier.test": "100.64.0.9"}
    looked_up = []

    def resolve(host, port, *args, **kwargs):
        looked_up.append(host)
        if host not in table:
            raise socket.gaierror("stub: unknown host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]

    monkeypatch.setattr(worker, "resolver", resolve)
    return looked_up


def test_url_job_fetches_good_urls_and_records_each_bad_one(image_server, stub_resolver):
    urls = {
        "photo.jpg": f"{image_server}/photo.jpg",
        "second.jpg": f"{image_server}/dir/second.jpg",
        "slow.jpg": f"{image_server}/slow.jpg",
        "loop-a": f"{image_server}/loop-a",
        "page.html": f"{image_server}/page.html",
        "declared-big.jpg": f"{image_server}/declared-big.jpg",
        "endless.jpg": f"{image_server}/endless.jpg",
        "fake.jpg": f"{image_server}/fake.jpg",
        "missing.jpg": f"{image_server}/missing.jpg",
    }
    job = run(jobs.create_job(urls=list(urls.values()), city="Porto", via=ImportJob.Via.API))
    assert_counts(job, total=9, added=2, failed=7)
    assert item_errors(job) == {
        "slow.jpg": "timed out fetching from '127.0.0.1': no data for 0.5 s",
        "loop-a": "too many redirects (redirect loop)",
        "page.html": "unsupported content type 'text/html': expected an image or a video",
        "declared-big.jpg": "response too large: 10485760 bytes exceeds limit of 1048576",
        "endless.jpg": "response too large: more than 1048576 bytes",
        "fake.jpg": "not an image (unrecognised format)",
        "missing.jpg": "server answered HTTP 404 Not Found",
    }
    stored = {i.original_name: i for i in Image.objects.all()}
    assert set(stored) == {"photo.jpg", "second.jpg"}
    assert stored["photo.jpg"].source == Image.Source.URL and stored["photo.jpg"].source_ref == urls["photo.jpg"]
    assert stored["photo.jpg"].city == "Porto"
    assert stub_resolver == []  # 127.0.0.1 is a literal: no lookup


def test_urls_to_private_loopback_link_local_and_metadata_addresses_are_refused(stub_resolver, monkeypatch):
    def no_connections(*args, **kwargs):
        raise AssertionError("a refused URL must never be connected to")

    monkeypatch.setattr(socket, "create_connection", no_connections)
    urls = ["http://intranet.test/a.jpg", "http://metadata.test/latest/meta-data/", "http://localhost:8000/b.jpg",
            "http://169.254.169.254/c.jpg", "http://[::1]:8080/d.jpg", "http://carrier.test/e.jpg",
            "http://10.0.0.1/f.jpg", "http://unknown.test/g.jpg"]
    job = run(jobs.create_job(urls=urls, via=ImportJob.Via.API))
    assert_counts(job, total=8, added=0, failed=8)
    errors = [item.error for item in job.items.order_by("id")]
    expected = [("intranet.test", "private"), ("metadata.test", "link-local"), ("localhost", "loopback"),
                ("169.254.169.254", "link-local"), ("::1", "loopback"), ("carrier.test", "shared"),
                ("10.0.0.1", "private")]
    for error, (host, kind) in zip(errors[:-1], expected, strict=True):
        assert error.startswith(f"refusing to fetch from {host!r}: it resolves to a non-public address"), error
        assert kind in error, error
    assert errors[-1] == "could not resolve host 'unknown.test'"


# --------------------------------------------------------------------------
# running, resuming, failing


def test_interrupted_run_resumes_with_exact_counts(monkeypatch):
    job = jobs.create_job(files=[upload(f"{i}.jpg", picture(i)) for i in range(6)] + [upload("bad.jpg", b"nope")],
                          via=ImportJob.Via.API)
    original = worker._Recorder.__call__
    calls = []

    def crash_on_third(self, outcome):
        # One batch: the bad item's outcome comes first, then one per stored image.
        calls.append(outcome)
        if len(calls) == 3:
            raise KeyboardInterrupt("worker stopped")  # inside the store transaction of the 2nd image
        original(self, outcome)

    monkeypatch.setattr(worker._Recorder, "__call__", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        tasks.run_job(job.pk)
    monkeypatch.setattr(worker._Recorder, "__call__", original)
    job.refresh_from_db()
    assert job.state == ImportJob.State.RUNNING and job.attempts == 1
    assert not job.items.pending().exclude(claimed_by="").exists()  # released for a quick retry
    # What was stored is recorded and vice versa: the interrupted image rolled back with its record
    # (and with it whatever else its store transaction held).
    assert job.failed == 1 and job.added < 6
    assert Image.objects.count() == job.added == job.items.filter(state=ImportItem.State.ADDED).count()

    job = run(job)
    assert_counts(job, total=7, added=6, failed=1)
    assert job.attempts == 0  # the chunk was worked through
    assert Image.objects.count() == 6 == Embedding.objects.count()
    assert job.items.filter(state="added").values("image_id").distinct().count() == 6


def test_items_of_a_dead_worker_are_taken_over_once_their_claims_ran_out():
    job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)
    job.items.update(claimed_by="dead-worker", claimed_until=dj_timezone.now() - dj_timezone.timedelta(seconds=1))
    job = run(job)
    assert_counts(job, total=1, added=1)
    assert job.attempts == 0 and job.items.get().claimed_by != "dead-worker"


def test_items_held_by_a_live_worker_are_looked_at_again_when_their_claims_end(django_capture_on_commit_callbacks):
    job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)
    expires = dj_timezone.now() + dj_timezone.timedelta(seconds=30)
    job.items.update(claimed_by="live-worker", claimed_until=expires)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_job(job.pk) == "busy"
    item = job.items.get()
    assert item.claimed_by == "live-worker" and item.state == ImportItem.State.PENDING
    watch = DBTaskResult.objects.get(args_kwargs__args=[str(job.pk)])
    assert watch.status == "READY" and watch.run_after == expires + worker.WATCH_MARGIN


def test_worker_that_lost_its_claims_stops_without_recording_or_storing(monkeypatch):
    job = jobs.create_job(files=[upload(f"{i}.jpg", picture(i)) for i in range(4)], via=ImportJob.Via.API)
    original = worker._ingest_chunks

    def taken_over_while_working(*args):
        job.items.pending().update(claimed_by="another-worker")  # ours ran out while we were stalled
        original(*args)

    monkeypatch.setattr(worker, "_ingest_chunks", taken_over_while_working)
    assert tasks.run_job(job.pk) == "lost"
    assert not Image.objects.exists()
    assert set(job.items.pending().values_list("claimed_by", flat=True)) == {"another-worker"}
    assert job.items.pending().count() == 4


def test_workers_claim_disjoint_chunks_and_take_over_expired_ones(settings):
    job = jobs.create_job(files=[upload(f"{i}.jpg", picture(i)) for i in range(5)], via=ImportJob.Via.API)
    first = claims.claim_chunk(job.pk, "worker-a", size=2)
    second = claims.claim_chunk(job.pk, "worker-b", size=2)
    third = claims.claim_chunk(job.pk, "worker-c", size=2)
    assert [c.outcome for c in (first, second, third)] == [claims.Claim.CLAIMED] * 3
    ids = [[item.pk for item in c.items] for c in (first, second, third)]
    assert [len(chunk) for chunk in ids] == [2, 2, 1]
    assert sorted(pk for chunk in ids for pk in chunk) == sorted(job.items.values_list("pk", flat=True))
    busy = claims.claim_chunk(job.pk, "worker-d", size=2)
    assert busy.outcome is claims.Claim.BUSY and busy.retry_at == min(
        job.items.values_list("claimed_until", flat=True))

    ran_out = dj_timezone.now() - dj_timezone.timedelta(seconds=1)
    job.items.filter(claimed_by__in=["worker-a", "worker-b"]).update(claimed_by="worker-a", claimed_until=ran_out)
    taken = claims.claim_chunk(job.pk, "worker-d", size=2)
    # What a dead worker held is taken back, each item one try, and claimed one at a time.
    assert [item.pk for item in taken.items] == ids[0][:1]
    assert sorted(job.items.filter(attempts=1).values_list("pk", flat=True)) == sorted(ids[0] + ids[1])
    assert not job.items.filter(claimed_by="worker-a").exists()
    assert [item.pk for item in claims.claim_chunk(job.pk, "worker-e", size=2).items] == ids[0][1:]
    job.refresh_from_db()
    assert job.attempts == 0  # the job's own count is for errors, not for its items' workers


def test_an_item_whose_worker_keeps_dying_fails_alone_and_the_rest_import(settings):
    settings.IMPORT_MAX_ATTEMPTS = 2
    job = jobs.create_job(files=[upload(f"{i}.jpg", picture(i)) for i in range(4)], via=ImportJob.Via.API)
    poison = job.items.order_by("id")[1]
    ran_out = dj_timezone.now() - dj_timezone.timedelta(seconds=1)
    for _ in range(2):  # a worker dies holding the poison item: twice
        job.items.filter(pk=poison.pk).update(claimed_by="dead-worker", claimed_until=ran_out)
        claims.claim_chunk(job.pk, "probe", size=1)
        job.items.filter(claimed_by="probe").update(claimed_by="", claimed_until=None)

    poison.refresh_from_db()
    assert poison.state == ImportItem.State.FAILED and "stopped while importing it 2 time(s)" in poison.error
    job = run(job)
    assert_counts(job, total=4, added=3, failed=1)
    assert job.state == ImportJob.State.DONE


def test_an_archive_is_a_chunk_of_its_own_and_its_members_are_claimable_once_expanded(settings):
    settings.IMPORT_CHUNK_SIZE = 2
    data = zip_bytes([(f"{i}.png", picture(i, fmt="PNG")) for i in range(3)])
    job = jobs.create_job(files=[upload("a.jpg", picture(10)), upload("set.zip", data)], via=ImportJob.Via.API)
    chunk = claims.claim_chunk(job.pk, "expander", size=2)
    assert [item.kind for item in chunk.items] == [ImportItem.Kind.ARCHIVE]
    worker._expand_archive(job.pk, chunk.items[0], "expander")
    job.refresh_from_db()
    assert job.total == 4
    members = claims.claim_chunk(job.pk, "other", size=2)
    assert [item.kind for item in members.items] == [ImportItem.Kind.UPLOAD]  # one kind per chunk
    members = claims.claim_chunk(job.pk, "other", size=2)
    assert [item.member_index for item in members.items] == [0, 1]
    claims.release(job.pk, "other")
    job = run(job)
    assert_counts(job, total=4, added=4)


def test_a_workers_member_chunks_read_on_through_one_archive_pass(monkeypatch):
    data = zip_bytes([(f"{i}.png", picture(i, fmt="PNG")) for i in range(5)])
    job = jobs.create_job(files=[upload("set.zip", data)], via=ImportJob.Via.API)
    archive = job.items.get()
    worker._expand_archive(job.pk, claims.claim_chunk(job.pk, "w", size=1).items[0], "w")
    members = {item.member_index: item for item in archive.members.all()}
    passes = []
    original = worker.iter_archive

    def counted(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(worker, "iter_archive", counted)
    cursor = worker._ArchiveCursor(archive)
    try:
        def names(indexes):
            return [(i.name, i.read().read()) for i in cursor.members({n: members[n] for n in indexes})]  # streams

        assert names([0, 1]) == [("0.png", picture(0, fmt="PNG")), ("1.png", picture(1, fmt="PNG"))]
        assert names([3]) == [("3.png", picture(3, fmt="PNG"))] and len(passes) == 1  # read on
        assert names([2]) == [("2.png", picture(2, fmt="PNG"))] and len(passes) == 2  # behind: a new pass
        gone = ImportItem(pk=members[4].pk, name="9.png", member_index=9)
        items = list(cursor.members({9: gone}))
        with pytest.raises(ItemRejected, match="no longer in the archive"):
            items[0].read()
    finally:
        cursor.close()


def test_exactly_one_worker_finishes_a_job():
    job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)
    assert not claims.finish(job.pk)  # something is pending
    job.items.update(state=ImportItem.State.FAILED, error="x")
    assert [claims.finish(job.pk), claims.finish(job.pk)] == [True, False]
    job.refresh_from_db()
    assert job.state == ImportJob.State.DONE and job.failed == 1


def test_a_big_job_works_in_slices_invites_other_workers_and_queues_its_continuation(
        settings, django_capture_on_commit_callbacks):
    settings.IMPORT_SLICE_SECONDS = 0  # every slice takes one chunk
    settings.IMPORT_CHUNK_SIZE = 1
    job = jobs.create_job(files=[upload(f"{i}.jpg", picture(i)) for i in range(3)], via=ImportJob.Via.API)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_job(job.pk) == "continued"
    job.refresh_from_db()
    assert (job.state, job.added, job.attempts) == (ImportJob.State.RUNNING, 1, 0)
    # Runnable now, not a lease away: one task (another worker joins, or this one goes on), and a watch.
    assert DBTaskResult.objects.ready().filter(args_kwargs__args=[str(job.pk)]).count() == 1
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)]).count() == 2
    assert tasks.run_job(job.pk) == "continued"
    job = run(job)
    assert_counts(job, total=3, added=3)


def test_finished_job_is_left_alone():
    job = run(jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API))
    assert tasks.run_job(job.pk) == "finished"
    job.refresh_from_db()
    assert job.attempts == 0 and job.added == 1


def test_model_unavailable_fails_the_job_with_its_message_and_retry_queues_it(monkeypatch,
                                                                              django_capture_on_commit_callbacks):
    def unavailable():
        raise EmbedderUnavailable("CLIP_WEIGHTS_FILE=/nope does not exist.")

    monkeypatch.setattr("catalog.ingest.pipeline.get_embedder", unavailable)
    job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)
    assert tasks.run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED
    assert job.error == "The model could not be loaded: CLIP_WEIGHTS_FILE=/nope does not exist."
    assert default_storage.exists(job.items.get().payload)  # kept for a retry

    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.retry_job(job.pk)
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(job.pk)], status="READY").exists()
    job = run(job)
    assert_counts(job, total=1, added=1)


def test_gives_up_after_max_attempts(settings):
    settings.IMPORT_MAX_ATTEMPTS = 2
    job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)
    ImportJob.objects.filter(pk=job.pk).update(attempts=2)
    assert tasks.run_job(job.pk) == "finished"
    job.refresh_from_db()
    assert job.state == ImportJob.State.FAILED and "gave up after 2 attempts" in job.error


def test_resume_imports_queues_jobs_without_a_task_and_prunes_payloads():
    orphan_job = jobs.create_job(files=[upload("a.jpg", picture(1))], via=ImportJob.Via.API)  # on_commit never ran
    done = run(jobs.create_job(files=[upload("b.jpg", picture(2))], via=ImportJob.Via.API))
    default_storage.save(f"{done.payload_folder}/leftover.jpg", io.BytesIO(b"x"))  # as if deletion was cut short
    stale = default_storage.save("imports/00000000-0000-0000-0000-000000000001/x.jpg", io.BytesIO(b"x"))
    fresh = default_storage.save("imports/00000000-0000-0000-0000-000000000002/x.jpg", io.BytesIO(b"x"))
    old = time.time() - 2 * 86400
    os.utime(default_storage.path(stale), (old, old))

    out = io.StringIO()
    call_command("resume_imports", stdout=out)
    assert out.getvalue().strip() == "Queued 1 unfinished import(s); removed 2 payload folder(s)."
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(orphan_job.pk)], status="READY").count() == 1
    assert not default_storage.exists(done.payload_folder) and not default_storage.exists(stale)
    assert default_storage.exists(fresh) and default_storage.exists(orphan_job.items.get().payload)

    call_command("resume_imports", stdout=io.StringIO())  # its task is waiting: not queued twice
    assert DBTaskResult.objects.filter(args_kwargs__args=[str(orphan_job.pk)]).count() == 1


def test_failed_request_leaves_no_job_and_no_payload(monkeypatch):
    def broken_bulk_create(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(ImportItem.objects, "bulk_create", broken_bulk_create)
    with pytest.raises(RuntimeError):
        jobs.create_job(files=[upload("a.jpg", picture(1)), upload("b.jpg", picture(2))], via=ImportJob.Via.API)
    assert not ImportJob.objects.exists()
    folders, files = default_storage.listdir("imports")
    assert all(not default_storage.listdir(f"imports/{folder}")[1] for folder in folders) and not files
