"""Kill the worker with SIGKILL in the middle of a 1,000-image import, start it again: the job
completes, every image is stored exactly once, and no file or row is left half-written.

The workers are real ``manage.py db_worker`` processes on the test database. Nothing but
starting them again is done between the two: the job's queued watch task (see
catalog.jobs.worker) brings the job back once the dead worker's claims run out."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image as PILImage

from catalog.jobs import requests as jobs
from catalog.models import Embedding, Image, ImportItem, ImportJob

REPO = Path(__file__).resolve().parent.parent
COUNT = 1000
LEASE_SECONDS = 2
SLICE_SECONDS = 4  # the job also goes through several slices (continuations) on the way
CHUNK_SIZE = 25


def distinct_picture(index: int) -> bytes:
    image = PILImage.new("RGB", (32, 32), (index % 256, (index // 256) * 40, 120))
    image.putpixel((index % 32, 0), (0, 255, index % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thousand_picture_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for index in range(COUNT):
            zf.writestr(f"batch/{index:04d}.png", distinct_picture(index))
    return buffer.getvalue()


@pytest.fixture
def worker_settings(tmp_path) -> dict:
    """Environment for a worker process on this test's database and media folder."""
    module = tmp_path / "crash_worker_settings.py"
    module.write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES['default']['NAME'] = {connection.settings_dict['NAME']!r}\n"
        f"MEDIA_ROOT = {str(settings.MEDIA_ROOT)!r}\n"
        f"IMPORT_LEASE_SECONDS = {LEASE_SECONDS}\n"
        f"IMPORT_SLICE_SECONDS = {SLICE_SECONDS}\n"
        f"IMPORT_CHUNK_SIZE = {CHUNK_SIZE}\n")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="crash_worker_settings",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return env


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.2",
         "--skip-checks"],
        cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_for(predicate, *, timeout: float, what: str, worker: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker.poll() is not None:
            pytest.fail(f"worker exited ({worker.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def stored_files(folder: str) -> list[str]:
    root = Path(settings.MEDIA_ROOT) / folder
    return sorted(str(p.relative_to(settings.MEDIA_ROOT)) for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_job_resumes_and_stores_every_image_exactly_once(worker_settings, tmp_path):
    job = jobs.create_job(files=[SimpleUploadedFile("thousand.zip", thousand_picture_zip())], city="Oslo",
                          via=ImportJob.Via.API)  # committed, and its task queued on commit
    log = tmp_path / "worker.log"

    first = start_worker(worker_settings, log)
    try:
        # Kill while the worker holds a chunk, not in the moment between two slices.
        wait_for(lambda: ImportJob.objects.filter(pk=job.pk, added__gte=150).exists()
                 and job.items.pending().exclude(claimed_by="").exists(),
                 timeout=120, what="the first worker to store 150 images", worker=first, log=log)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()

    job.refresh_from_db()
    assert job.state == ImportJob.State.RUNNING  # nobody marked it: its claims are left to run out
    assert 150 <= job.added < COUNT, "the worker finished before it could be killed"
    # What was committed is whole: each stored image has its vector and its item says so.
    assert Image.objects.count() == job.added == Embedding.objects.count()
    assert job.items.filter(state=ImportItem.State.ADDED).count() == job.added

    second = start_worker(worker_settings, log)
    try:
        wait_for(lambda: ImportJob.objects.get(pk=job.pk).state == ImportJob.State.DONE, timeout=180,
                 what="the restarted worker to finish the job", worker=second, log=log)
    finally:
        stop(second)

    job.refresh_from_db()
    assert (job.total, job.added, job.duplicates, job.failed) == (COUNT, COUNT, 0, 0)
    assert job.finished_at
    members = job.items.filter(kind=ImportItem.Kind.MEMBER)
    assert members.count() == COUNT
    assert set(members.values_list("state", flat=True)) == {ImportItem.State.ADDED}
    assert members.values("image_id").distinct().count() == COUNT

    # Every image exactly once, each whole: the bytes of its member, a thumbnail, one vector.
    expected = {hashlib.sha256(distinct_picture(i)).hexdigest() for i in range(COUNT)}
    images = list(Image.objects.all())
    assert len(images) == COUNT and {image.sha256 for image in images} == expected
    assert Embedding.objects.count() == COUNT
    assert not Image.objects.filter(embeddings__isnull=True).exists()
    for image in images:
        with default_storage.open(image.file.name) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == image.sha256
        assert default_storage.size(image.thumbnail.name) > 0
        assert image.city == "Oslo" and image.source == Image.Source.ARCHIVE
    # No stray or partial files: exactly the referenced ones, and the upload is cleaned up.
    assert stored_files("images") == sorted(image.file.name for image in images)
    assert stored_files("thumbnails") == sorted(image.thumbnail.name for image in images)
    assert not default_storage.exists(job.payload_folder)


def stop(worker: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the worker has not exited within 15 s."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
