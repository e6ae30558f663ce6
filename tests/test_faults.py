"""Faults: a dripping URL cannot hold the worker past the fetch deadline, and the supervised
`bin/serve` stack survives kill -9 of its worker and of PostgreSQL without losing an image."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.embedder import get_embedder
from catalog.jobs import requests as jobs
from catalog.jobs import tasks
from catalog.models import Image, ImportItem, ImportJob
from tests.conftest import varied_picture
from tests.serving import serve_stack


class _DripHeaders(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        # A status line, then one header byte every 0.2 s: never idle long enough for a per-read timeout.
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for byte in b"Content-Type: image/png\r\n" * 100:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


@pytest.fixture
def drip_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DripHeaders)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.django_db
def test_dripping_url_fails_at_the_fetch_deadline_and_the_next_job_runs(settings, drip_server):
    settings.IMPORT_LEASE_SECONDS = 600
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.FETCH_TIMEOUT = 5
    settings.FETCH_TOTAL_TIMEOUT = 1
    slow = jobs.create_job(urls=[f"{drip_server}/photo.png"], via=ImportJob.Via.API)
    other = jobs.create_job(files=[SimpleUploadedFile("other.png", varied_picture(1))], via=ImportJob.Via.API)

    get_embedder()  # loaded before the clock starts: only the fetch is timed
    start = time.monotonic()
    assert tasks.run_job(slow.pk) == "done"
    assert time.monotonic() - start < 2.5  # it used to hold the worker for minutes
    error = ImportItem.objects.get(job=slow).error
    assert error.startswith("timed out fetching from '127.0.0.1': no complete response within the total time limit of 1 s")

    assert tasks.run_job(other.pk) == "done"  # one worker: the unrelated job was behind it
    other.refresh_from_db()
    assert (other.added, other.failed) == (1, 0)
    assert Image.objects.filter(original_name="other.png").count() == 1


def _zip_of_pictures(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            archive.writestr(f"p{index:03d}.png", varied_picture(index, size=(96, 72)))
    return buffer.getvalue()


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _wait(what: str, check, within: float, step: float = 0.25):
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        time.sleep(step)


@pytest.mark.slow
def test_killing_the_worker_and_postgres_under_bin_serve_loses_nothing(tmp_path):
    count = 60
    with serve_stack(tmp_path, IMAGESEARCH_IMPORT_LEASE_SECONDS="4", CLIP_BATCH_SIZE="8") as stack:
        stack.log_in_as_superuser()
        body, content_type = _multipart("file", "pictures.zip", _zip_of_pictures(count))
        status, headers, _ = stack.request("POST", "/api/images/", body, {"Content-Type": content_type})
        assert status == 202
        job_path = headers["Location"].split(str(stack.port), 1)[-1]

        # Kill the worker in the middle of the job, then the database server.
        _wait("job under way", lambda: stack.json("GET", job_path)[1]["counts"]["added"] > 0, within=120, step=0.1)
        worker_pid = stack.children()["worker:worker-0"]
        os.kill(worker_pid, signal.SIGKILL)
        os.kill(stack.postmaster_pid(), signal.SIGKILL)
        killed_at = time.monotonic()

        def search_answers():
            try:
                return stack.json("POST", "/api/search/", {"q": "a red square", "top_k": 5}, timeout=10)[0] == 200
            except OSError:
                return False

        _wait("search answers again", search_answers, within=30)
        recovered_in = time.monotonic() - killed_at
        # supervisord started a new worker (it may die once more while PostgreSQL restarts: backoff)
        _wait("a new worker", lambda: stack.children().get("worker:worker-0", worker_pid) != worker_pid, within=60)

        job = _wait("job finished", lambda: (lambda j: j if j["state"] in ("done", "failed") else None)(
            stack.json("GET", job_path)[1]), within=180, step=0.5)
        assert job["state"] == "done" and job["counts"]["failed"] == 0, job
        assert job["counts"]["added"] + job["counts"]["duplicates"] == count
        rows, distinct = stack.sql("SELECT count(*), count(DISTINCT sha256) FROM catalog_image")[0]
        assert rows == distinct == count  # every picture stored, none twice
        print(f"search answered again {recovered_in:.1f} s after kill -9 of the worker and the postmaster")
