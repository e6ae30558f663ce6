"""Hostile input through the ingestion pipeline: undecodable file names, impossible EXIF dates,
extreme aspect ratios, bombs, failures while storing or preparing one item, and a worker under
a memory cap over the project's hostile set (tests/hostile.py). Each bad item becomes that
item's failure; every good one is stored exactly once; nothing is left half-written."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image as PILImage

from catalog.imaging import ImageRejected, decode_image
from catalog.ingest import decoding
from catalog.ingest.archives import ArchiveLimits, iter_archive
from catalog.ingest.names import safe_text
from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items
from catalog.jobs import requests as jobs
from catalog.jobs import tasks
from catalog.models import Embedding, Image, ImportItem, ImportJob
from tests import decode_faults, hostile
from tests.conftest import import_folder

REPO = Path(__file__).resolve().parent.parent
LATIN1_NAME = b"caf\xe9.jpg"


def stored_files(media_root: Path) -> set[str]:
    return {str(p.relative_to(media_root)) for p in Path(media_root).rglob("*") if p.is_file()}


def named_files() -> set[str]:
    return {name for row in Image.objects.values_list("file", "thumbnail") for name in row}


def ingest(pairs, **kwargs):
    return ingest_items([IngestItem.from_bytes(name, data) for name, data in pairs],
                        options=IngestOptions(source=Image.Source.UPLOAD), **kwargs)


# --------------------------------------------------------------------------
# 1. file names that are not valid UTF-8


def test_safe_text_replaces_undecodable_bytes_and_keeps_valid_text():
    assert safe_text(b"caf\xe9.jpg") == "caf\ufffd.jpg"
    assert safe_text(os.fsdecode(b"caf\xe9.jpg")) == "caf\ufffd.jpg"  # surrogate escape, as listdir gives
    assert safe_text(os.fsdecode("café/日本.jpg".encode())) == "café/日本.jpg"
    assert safe_text("lone \ud800 surrogate") == "lone \ufffd\ufffd\ufffd surrogate"
    assert safe_text("nul\x00.jpg") == "nul.jpg"
    "".join(safe_text(os.fsdecode(bytes([b]))) for b in range(256)).encode("utf-8")  # always encodable


@pytest.mark.django_db
def test_folder_with_latin1_file_name_stores_every_file_and_reruns_cleanly(tmp_path, media_root):
    folder = tmp_path / "share"
    folder.mkdir()
    for index in range(2):
        (folder / f"good-{index}.jpg").write_bytes(hostile.photo(index))
    with open(os.path.join(os.fsencode(folder), LATIN1_NAME), "wb") as fh:  # as an old Windows share has it
        fh.write(hostile.photo(7))

    out, err, error = import_folder(folder)

    assert error is None, (out, err)
    assert "Found 3 file(s)" in out and "Added 3, skipped 0 duplicate(s), failed 0." in out
    image = Image.objects.get(original_name="caf\ufffd.jpg")
    assert image.source_ref == str(folder / "caf\ufffd.jpg")
    assert stored_files(media_root) == named_files() and len(named_files()) == 6

    out, _, error = import_folder(folder)  # a re-run finds everything stored
    assert error is None and "Added 0, skipped 3 duplicate(s), failed 0." in out


def latin1_zip() -> bytes:
    """Member names as Latin-1 bytes, without the UTF-8 flag (old zip tools, Windows)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cafX.jpg", hostile.photo(11))
        zf.writestr("good.jpg", hostile.photo(12))
    data = buffer.getvalue()
    assert data.count(b"cafX.jpg") == 2  # local header and central directory; same length, no CRC over names
    return data.replace(b"cafX.jpg", LATIN1_NAME)


def latin1_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        for name, data in (("café.jpg", hostile.photo(13)), ("good.jpg", hostile.photo(14))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    assert LATIN1_NAME in data
    return data


def test_archive_member_names_that_are_not_utf8_are_readable():
    zip_names = [m.name for m in iter_archive(io.BytesIO(latin1_zip()), limits=ArchiveLimits())]
    tar_names = [m.name for m in iter_archive(io.BytesIO(latin1_tar()), limits=ArchiveLimits())]
    assert zip_names == ["cafΘ.jpg", "good.jpg"]  # cp437, what the zip format specifies without the flag
    assert tar_names == ["caf\ufffd.jpg", "good.jpg"]
    for name in zip_names + tar_names:
        name.encode("utf-8")


def test_zip_names_in_utf8_without_the_flag_are_read_as_utf8():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cafXX.jpg", b"x")
    data = buffer.getvalue().replace(b"cafXX.jpg", "café.jpg".encode())  # é is two bytes in UTF-8
    assert [m.name for m in iter_archive(io.BytesIO(data), limits=ArchiveLimits())] == ["café.jpg"]


@pytest.mark.django_db
@pytest.mark.parametrize("archive", [latin1_zip, latin1_tar], ids=["zip", "tar"])
def test_import_job_with_non_utf8_member_names_stores_every_member(archive):
    job = jobs.create_job(files=[SimpleUploadedFile("old.bin", archive())], via=ImportJob.Via.API)
    assert tasks.run_job(job.pk) == "done"
    job.refresh_from_db()
    assert (job.total, job.added, job.failed) == (2, 2, 0)
    names = set(Image.objects.values_list("original_name", flat=True))
    assert names == {"cafΘ.jpg" if archive is latin1_zip else "caf\ufffd.jpg", "good.jpg"}


@pytest.mark.django_db
def test_zip_member_with_a_nul_in_its_name_is_a_counted_failure():
    # zipfile cuts "a/\x00nul.png" to "a/", a folder: it was dropped, a zip of 5 gave total=4.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for index in range(4):
            zf.writestr(f"{index}.jpg", hostile.photo(index))
        zf.writestr("a/ZZZnul.png", hostile.photo(9))
    data = buffer.getvalue().replace(b"a/ZZZnul.png", b"a/\x00\x00\x00nul.png")
    job = jobs.create_job(files=[SimpleUploadedFile("five.zip", data)], via=ImportJob.Via.API)
    assert tasks.run_job(job.pk) == "done"
    job.refresh_from_db()
    assert (job.total, job.added, job.failed) == (5, 4, 1)
    failed = job.items.get(state=ImportItem.State.FAILED)
    assert (failed.name, failed.error) == ("a/???nul.png", "unsafe path")


# --------------------------------------------------------------------------
# 1. a failure while storing one item is that item's failure


@pytest.mark.django_db
def test_failure_storing_one_item_fails_only_that_item_and_leaves_no_orphans(monkeypatch, media_root):
    real_bulk_create = Image.objects.bulk_create

    def bulk_create(rows, **kwargs):  # the batch fails, then its items are stored one by one
        if any(row.original_name == "cursed.jpg" for row in rows):
            raise RuntimeError("disk on fire")
        return real_bulk_create(rows, **kwargs)

    monkeypatch.setattr(Image.objects, "bulk_create", bulk_create)
    report = ingest([("a.jpg", hostile.photo(1)), ("cursed.jpg", hostile.photo(2)), ("b.jpg", hostile.photo(3))])

    assert [o.status for o in report.outcomes] == ["added", "failed", "added"]
    assert report.outcomes[1].reason == "could not be stored: RuntimeError: disk on fire"
    assert stored_files(media_root) == named_files() and len(named_files()) == 4  # cursed.jpg's files removed


@pytest.mark.django_db
def test_files_of_a_failed_item_are_kept_when_a_stored_image_uses_them(monkeypatch, media_root):
    ingest([("first.jpg", hostile.photo(1))])
    before = stored_files(media_root)
    existing = Image.objects.get()

    # The pre-decode duplicate check misses it (a concurrent worker's commit, say): the insert fails.
    real = Image.objects.ids_by_hash
    calls = []
    monkeypatch.setattr(Image.objects, "ids_by_hash", lambda hashes: real(hashes) if calls.append(1) or
                        len(calls) > 1 else {})
    report = ingest([("again.jpg", hostile.photo(1))])

    assert [(o.status, o.image_id) for o in report.outcomes] == [("duplicate", existing.pk)]
    assert stored_files(media_root) == before == named_files()


@pytest.mark.django_db
def test_nul_in_a_name_is_dropped_not_a_database_error():
    report = ingest([("bad\x00name.jpg", hostile.photo(4))])
    assert report.added == 1 and Image.objects.get().original_name == "badname.jpg"


@pytest.mark.django_db
def test_an_error_raised_by_the_callers_outcome_hook_still_ends_the_run(media_root):
    class Stop(Exception):
        pass

    def on_outcome(outcome):
        raise Stop

    with pytest.raises(Stop):
        ingest([("a.jpg", hostile.photo(1))], on_outcome=on_outcome)
    assert not Image.objects.exists() and stored_files(media_root) == set()


# --------------------------------------------------------------------------
# 2. EXIF dates outside years 1..9999 once in UTC


@pytest.mark.parametrize(("when", "offset"), [("0001:01:01 00:00:00", "+14:00"), ("9999:12:31 23:00:00", "-10:00"),
                                              ("0001:01:01 00:30:00", "+01:00")])
def test_exif_date_outside_readable_range_is_dropped(when, offset):
    decoded = decode_image(hostile.jpeg_taken(1, when, offset), max_pixels=10**8)
    assert decoded.metadata.taken_at is None


@pytest.mark.parametrize(("when", "offset", "utc"), [
    ("0001:01:01 14:00:00", "+14:00", datetime(1, 1, 1, tzinfo=timezone.utc)),
    ("9999:12:31 13:59:59", "-10:00", datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
    ("2024:06:01 12:00:00", "+02:00", datetime(2024, 6, 1, 10, tzinfo=timezone.utc)),
])
def test_exif_dates_at_the_edges_of_the_range_are_kept(when, offset, utc):
    assert decode_image(hostile.jpeg_taken(1, when, offset), max_pixels=10**8).metadata.taken_at == utc


def test_imaging_bounds_are_the_models():
    from catalog import imaging, models

    assert (imaging.TAKEN_AT_MIN, imaging.TAKEN_AT_MAX) == (models.TAKEN_AT_MIN, models.TAKEN_AT_MAX)


@pytest.mark.django_db
def test_images_with_impossible_dates_are_stored_and_every_read_answers(admin_client):
    report = ingest([("bc.jpg", hostile.jpeg_taken(1, "0001:01:01 00:00:00", "+14:00")),
                     ("y10k.jpg", hostile.jpeg_taken(2, "9999:12:31 23:00:00", "-10:00")),
                     ("fine.jpg", hostile.jpeg_taken(3, "2020:02:02 10:00:00", "+00:00"))])
    assert report.added == 3
    assert list(Image.objects.order_by("original_name").values_list("original_name", "taken_at")) == [
        ("bc.jpg", None), ("fine.jpg", datetime(2020, 2, 2, 10, tzinfo=timezone.utc)), ("y10k.jpg", None)]
    for image in Image.objects.all():
        assert admin_client.get(f"/api/images/{image.pk}/").status_code == 200
        assert admin_client.get(f"/images/{image.pk}/").status_code == 200
    assert admin_client.get("/api/images/").status_code == 200
    for body in ({"q": "a photo"}, {"q": "a photo", "taken_from": "0001-01-01", "taken_to": "9999-12-30"}):
        response = admin_client.post("/api/search/", body, content_type="application/json")
        assert response.status_code == 200, response.content


# --------------------------------------------------------------------------
# 3. extreme aspect ratios, bounded preprocessing, per-item MemoryError


@pytest.mark.parametrize(("size", "message"), [((20000, 1), "aspect ratio 20000:1 exceeds limit 20"),
                                               ((1, 20000), "aspect ratio 1:20000 exceeds limit 20"),
                                               ((201, 10), "aspect ratio 201:10 exceeds limit 20")])
def test_aspect_ratio_beyond_the_limit_is_refused_from_the_header(size, message):
    with pytest.raises(ImageRejected) as exc:
        decode_image(hostile.png(*size), max_pixels=10**8, max_aspect_ratio=20)
    assert str(exc.value) == message


def test_aspect_ratio_at_the_limit_is_accepted():
    assert decode_image(hostile.png(200, 10), max_pixels=10**8, max_aspect_ratio=20).metadata.width == 200


def test_flat_float_tiff_decodes():
    for value, gray in ((0.25, 64), (1000.0, 4), (-3.0, 0)):  # 0..1, as 16-bit, out of range
        decoded = decode_image(hostile.flat_float_tiff(value), max_pixels=10**8)
        assert decoded.image.getpixel((5, 5)) == (gray, gray, gray)


@pytest.fixture(scope="module")
def embedder():
    from catalog.embedder import get_embedder

    return get_embedder()


def test_model_input_matches_open_clips_own_preprocessing(embedder):
    rng = np.random.default_rng(5)
    for size in ((640, 480), (480, 640), (1000, 333), (224, 224)):
        coarse = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        photo = PILImage.fromarray(coarse).resize(size, PILImage.Resampling.BICUBIC)
        ours, theirs = embedder.prepare_image(photo).numpy(), embedder._preprocess(photo).numpy()
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert np.abs(ours - theirs).max() < 0.05  # at most a rounding step of a few pixels
        assert np.abs(ours - theirs).mean() < 1e-3


@pytest.mark.parametrize("size", [(200000, 1), (1, 200000), (20000, 3)])
def test_model_input_of_extreme_shapes_is_made_without_a_huge_intermediate(embedder, size):
    # open_clip's own preprocessing would build a 44,800,000 x 224 image for 200000 x 1 (~30 GB).
    started = time.monotonic()
    assert tuple(embedder.prepare_image(PILImage.new("RGB", size, (9, 9, 9))).shape) == (3, 224, 224)
    assert time.monotonic() - started < 2


@pytest.mark.django_db
def test_memory_error_while_preparing_one_item_is_that_items_error(monkeypatch):
    monkeypatch.setattr(decoding, "decode", decode_faults.memory_error_on_mark)  # runs in the decode processes
    report = ingest([("a.jpg", hostile.photo(1)), ("big.jpg", hostile.photo(2) + decode_faults.MARK),
                     ("b.jpg", hostile.photo(3))])
    assert [o.status for o in report.outcomes] == ["added", "failed", "added"]
    assert report.outcomes[1].reason == "could not be processed: MemoryError"


@pytest.mark.django_db
def test_memory_error_while_reading_one_item_is_that_items_error():
    def read():
        raise MemoryError

    report = ingest_items([IngestItem.from_bytes("a.jpg", hostile.photo(1)), IngestItem("x.jpg", "x.jpg", read)],
                          options=IngestOptions(source=Image.Source.UPLOAD))
    assert [(o.status, o.reason) for o in report.outcomes] == [("added", ""), ("failed", "cannot read: MemoryError")]


@pytest.mark.django_db
def test_items_beyond_the_aspect_limit_fail_and_the_rest_is_stored(settings):
    settings.IMAGE_MAX_ASPECT_RATIO = 20
    report = ingest([("wide.png", hostile.png(20000, 1)), ("ok.jpg", hostile.photo(1))])
    assert [(o.status, o.reason) for o in report.outcomes] == [
        ("failed", "aspect ratio 20000:1 exceeds limit 20"), ("added", "")]


DECODE_PEAK = """
import resource, sys
from PIL import Image
from catalog.imaging import decode_image

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def load_only():  # the decoded source alone, freed on return: what any decode must hold
    with Image.open(sys.argv[1]) as source:
        source.load()

load_only()
loaded = peak()
image = decode_image(sys.argv[1], max_pixels=10**8, min_side=320).image
print(image.mode, min(image.size), peak() - loaded)
"""


@pytest.mark.parametrize("kind", hostile.CONVERTED_KINDS)
def test_decoding_a_large_image_that_needs_conversion_holds_no_full_size_copy(tmp_path, kind):
    # Palette, bilevel, 16-bit and transparency images must be converted before reduction; a
    # whole-image conversion made RGBA + RGB copies (up to 8 bytes a pixel beside a 1-byte source).
    # Pillow allocates in C, out of tracemalloc's sight: the kernel's peak RSS of a fresh process.
    path = tmp_path / f"{kind}.png"
    path.write_bytes(hostile.png_needing_conversion(kind, 6000))  # 36 Mpx: a full RGB copy is 144 MB
    out = subprocess.run([sys.executable, "-c", DECODE_PEAK, str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out[:2] == ["RGB", "334"]  # 6000 // 320 = 18, ceil(6000 / 18)
    assert int(out[2]) < 40 * hostile.MB, f"{int(out[2]) / hostile.MB:.0f} MB beyond the decoded source"


def test_archive_members_wait_on_disk_not_in_memory():
    import tracemalloc

    data = hostile.zip_of_zeros(members=12, member_bytes=4 * hostile.MB)
    tracemalloc.start()
    try:
        members = list(iter_archive(io.BytesIO(data), limits=ArchiveLimits()))  # all held at once
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(members) == 12 and all(m.error is None for m in members)
    assert peak < 8 * hostile.MB, f"{peak / hostile.MB:.1f} MB for 48 MB of members"
    assert members[3].read() == b"\x00" * (4 * hostile.MB)


def test_archive_member_limit_is_enforced_while_decompressing():
    data = hostile.zip_of_zeros(members=1, member_bytes=8 * hostile.MB)
    (member,) = iter_archive(io.BytesIO(data), limits=ArchiveLimits(max_member_bytes=2 * hostile.MB))
    assert (member.error, member.data) == ("too large", None)


# --------------------------------------------------------------------------
# 9. hidden files counted; re-imports hash first and never decode what is stored


@pytest.mark.django_db
def test_hidden_files_are_counted_as_skipped(tmp_path):
    (tmp_path / "a.jpg").write_bytes(hostile.photo(1))
    (tmp_path / ".b.jpg").write_bytes(hostile.photo(2))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.jpg").write_bytes(hostile.photo(3))
    out, _, error = import_folder(tmp_path, "--recursive")
    assert error is None
    assert f"Found 3 file(s) in {tmp_path}; skipping 2 hidden." in out
    assert "Added 1, skipped 0 duplicate(s), failed 0." in out


@pytest.mark.django_db
def test_reimport_does_not_decode_what_is_stored(tmp_path, monkeypatch):
    for index in range(3):
        (tmp_path / f"{index}.jpg").write_bytes(hostile.photo(index))
    (tmp_path / "copy.jpg").write_bytes(hostile.photo(0))
    decoded = []
    real = decoding.DecodePool.submit
    monkeypatch.setattr(decoding.DecodePool, "submit", lambda *a, **k: decoded.append(1) or real(*a, **k))

    out, _, _ = import_folder(tmp_path)
    assert "Added 3, skipped 1 duplicate(s), failed 0." in out and len(decoded) == 3  # the copy: hashed only
    out, _, _ = import_folder(tmp_path)
    assert "Added 0, skipped 4 duplicate(s), failed 0." in out and len(decoded) == 3


@pytest.mark.django_db
def test_copy_of_a_bad_file_in_the_same_run_fails_like_it():
    report = ingest([("bad.jpg", b"not an image"), ("bad-again.jpg", b"not an image")])
    assert [(o.status, o.reason) for o in report.outcomes] == [
        ("failed", "not an image (unrecognised format)"), ("failed", "not an image (unrecognised format)")]


def test_pixel_limit_message_quotes_the_configured_limit():
    with pytest.raises(ImageRejected, match=r"^image too large: 10000000000 pixels \(limit 123456789\)$"):
        decode_image(hostile.png(100_000, 100_000, rows=b""), max_pixels=123_456_789)


# --------------------------------------------------------------------------
# the worker under a memory cap, over the hostile set

PROBE = """
import django, os
django.setup()
from PIL import Image
from catalog.embedder import get_embedder
get_embedder().embed_images([Image.new("RGB", (300, 300))] * 8)
print(max(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmPeak")) * 1024)
"""
HEADROOM = 1536 * 1024 * 1024  # the target: under 1.5 GB beyond the loaded model


def capped(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


@pytest.fixture
def worker_env(tmp_path):
    module = tmp_path / "hostile_worker_settings.py"
    module.write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES['default']['NAME'] = {connection.settings_dict['NAME']!r}\n"
        f"MEDIA_ROOT = {str(settings.MEDIA_ROOT)!r}\n"
        "IMPORT_SLICE_SECONDS = 600\n")
    return dict(os.environ, DJANGO_SETTINGS_MODULE="hostile_worker_settings", MALLOC_ARENA_MAX="2",
                IMAGESEARCH_MAX_ASPECT_RATIO="1000000",  # extreme shapes go all the way through preprocessing
                TMPDIR=str(tmp_path),
                PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_under_a_memory_cap_imports_the_hostile_set(worker_env, tmp_path):
    # The probe loads the model in its own process while this one makes the inputs.
    probe = subprocess.Popen([sys.executable, "-c", PROBE], env=worker_env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        cases = hostile.hostile_cases(good=6) + [hostile.Case("big-9000x9000.png", hostile.png(9000, 9000), None)]
        uploads = [SimpleUploadedFile(c.name, c.data) for c in cases]
        uploads += [SimpleUploadedFile("zeros.zip", hostile.zip_of_zeros()),
                    SimpleUploadedFile("good.zip", hostile.good_zip(100, 3))]
        probe_out, probe_err = probe.communicate(timeout=120)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert probe.returncode == 0, probe_err[-4000:]
    baseline = int(probe_out.split()[-1])
    expected = {c.name: c.error for c in cases}
    # With the aspect limit lifted, the extreme shapes are legitimate (if useless) images.
    for name in ("wide-20000x1.png", "tall-1x20000.png", "wide-200000x1.png"):
        expected[name] = None
    expected.update({f"zeros-{i:02d}.jpg": "not an image" for i in range(16)})
    expected.update({f"photos/{i}.jpg": None for i in range(100, 103)})
    job = jobs.create_job(files=uploads, via=ImportJob.Via.API)

    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.2",
         "--skip-checks"], cwd=REPO, env=worker_env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        preexec_fn=capped(baseline + HEADROOM))
    try:
        deadline = time.monotonic() + 300
        while ImportJob.objects.get(pk=job.pk).state not in (ImportJob.State.DONE, ImportJob.State.FAILED):
            assert worker.poll() is None, f"worker died ({worker.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"job not finished:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()

    job.refresh_from_db()
    assert job.state == ImportJob.State.DONE, (job.error, log.read_text()[-4000:])
    items = {i.name: i for i in job.items.exclude(kind=ImportItem.Kind.ARCHIVE)}
    assert set(items) == set(expected)
    for name, error in expected.items():
        item = items[name]
        if error is None:
            assert item.state == ImportItem.State.ADDED, (name, item.error)
        else:
            assert item.state == ImportItem.State.FAILED and error in item.error, (name, item.error)
    good = [name for name, error in expected.items() if error is None]
    assert Image.objects.count() == len(good) == Embedding.objects.count()
    assert set(Image.objects.values_list("original_name", flat=True)) == set(good)
    assert "MemoryError" not in log.read_text()


@pytest.mark.django_db
def test_a_large_file_is_read_in_chunks_and_never_held_whole_in_memory(tmp_path, monkeypatch):
    from catalog.ingest import pipeline
    from catalog.ingest.sources import path_items

    big = tmp_path / "big.mp4"  # a large junk "video": hashed and spooled, then refused by its bytes
    chunk = os.urandom(1 << 20)
    with big.open("wb") as handle:
        for _ in range(24):
            handle.write(chunk)
    reads = []
    real_open = Path.open

    def watched_open(path, *args, **kwargs):
        stream = real_open(path, *args, **kwargs)
        if path != big:
            return stream
        original = stream.read

        def read(size=-1):
            reads.append(size)
            return original(size)

        stream.read = read
        return stream

    monkeypatch.setattr(Path, "open", watched_open)
    report = ingest_items(path_items([big], root=tmp_path), options=IngestOptions(source="folder"), decode_workers=1)
    assert [outcome.status for outcome in report.outcomes] == ["failed"]
    assert reads and all(0 < size <= pipeline.SPOOL_CHUNK for size in reads)  # never read() whole

    prepared = pipeline._read(next(path_items([big], root=tmp_path)), 0)
    try:
        assert prepared.sha256 == __import__("hashlib").sha256(big.read_bytes()).hexdigest()
        assert not isinstance(prepared.held, bytes) and os.path.getsize(prepared.held.name) == big.stat().st_size
    finally:
        prepared.release()
