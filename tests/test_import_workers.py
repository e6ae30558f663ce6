"""Two worker processes (real ``manage.py db_worker``s on the test database) share one import
job of 1,000 images in two archives: each archive is expanded by whichever worker claims it,
both workers store part of the members, and SIGKILL of one of them in the middle of a chunk
loses nothing: the other takes its chunk over once the claims run out and finishes the job,
every image stored exactly once."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.jobs import requests as jobs
from catalog.models import Embedding, Image, ImportItem, ImportJob
from tests.test_import_crash_safety import (  # noqa: F401 - worker_settings is a fixture
    COUNT,
    distinct_picture,
    start_worker,
    stop,
    stored_files,
    worker_settings,
)


def picture_zip(indexes: range) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for index in indexes:
            zf.writestr(f"set/{index:04d}.png", distinct_picture(index))
    return buffer.getvalue()


def pid_of(claimed_by: str) -> int:
    return int(claimed_by.split(":")[1])  # catalog.jobs.claims.worker_name: host:pid:token


def wait_for(predicate, *, timeout: float, what: str, workers: list[subprocess.Popen], logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for worker, log in zip(workers, logs, strict=True):
            if worker.poll() is not None:
                pytest.fail(f"worker exited ({worker.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_workers_share_one_job_and_a_killed_one_loses_nothing(worker_settings, tmp_path):  # noqa: F811
    half = COUNT // 2
    job = jobs.create_job(files=[SimpleUploadedFile("first.zip", picture_zip(range(half))),
                                 SimpleUploadedFile("second.zip", picture_zip(range(half, COUNT)))],
                          via=ImportJob.Via.API)  # committed, and its task queued on commit
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    env = dict(worker_settings, CLIP_BATCH_SIZE="32")  # the model's fastest on a CPU; tests use 8
    workers = [start_worker(env, log) for log in logs]
    pids = {worker.pid for worker in workers}
    members = job.items.filter(kind=ImportItem.Kind.MEMBER)
    try:
        def storing_pids() -> set[int]:
            return {pid_of(name) for name in members.filter(state=ImportItem.State.ADDED)
                    .values_list("claimed_by", flat=True).distinct()}

        def victim_mid_chunk() -> subprocess.Popen | None:
            # Both have stored some; one holds a chunk with items still to record.
            if storing_pids() != pids or members.filter(state=ImportItem.State.ADDED).count() < 200:
                return None
            holders = {pid_of(name) for name in members.pending().exclude(claimed_by="")
                       .values_list("claimed_by", flat=True)}
            return next((worker for worker in workers if worker.pid in holders), None)

        # Generous bounds: liveness, not speed (the model embeds ~6 images/s on a loaded 2-core machine).
        victim = wait_for(victim_mid_chunk, timeout=240, what="both workers storing, one mid-chunk",
                          workers=workers, logs=logs)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        survivor = next(worker for worker in workers if worker is not victim)
        orphaned = set(members.pending().filter(claimed_by__contains=f":{victim.pid}:").values_list("pk", flat=True))
        assert orphaned, "the killed worker held no chunk"

        wait_for(lambda: ImportJob.objects.get(pk=job.pk).is_finished, timeout=360,
                 what="the surviving worker to finish the job", workers=[survivor],
                 logs=[logs[workers.index(survivor)]])
    finally:
        for worker in workers:
            stop(worker)

    job.refresh_from_db()
    assert job.state == ImportJob.State.DONE, job.error
    assert (job.total, job.added, job.duplicates, job.failed) == (COUNT, COUNT, 0, 0)
    assert members.count() == COUNT
    assert set(members.values_list("state", flat=True)) == {ImportItem.State.ADDED}
    assert members.values("image_id").distinct().count() == COUNT
    # Both did part of the work; the killed one's chunk was finished by the other.
    by_pid = {}
    for name in members.values_list("claimed_by", flat=True):
        by_pid[pid_of(name)] = by_pid.get(pid_of(name), 0) + 1
    assert set(by_pid) == pids and all(count > 0 for count in by_pid.values()), by_pid
    assert {pid_of(name) for name in members.filter(pk__in=orphaned).values_list("claimed_by", flat=True)} == {
        survivor.pid}

    # Every image exactly once, each whole; no stray files; the uploads are cleaned up.
    expected = {hashlib.sha256(distinct_picture(i)).hexdigest() for i in range(COUNT)}
    images = list(Image.objects.all())
    assert len(images) == COUNT and {image.sha256 for image in images} == expected
    assert Embedding.objects.count() == COUNT and not Image.objects.filter(embeddings__isnull=True).exists()
    for image in images:
        with default_storage.open(image.file.name) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == image.sha256
    assert stored_files("images") == sorted(image.file.name for image in images)
    assert stored_files("thumbnails") == sorted(image.thumbnail.name for image in images)
    assert not default_storage.exists(job.payload_folder)
