"""The ASGI entry point refuses request bodies over the limit before Django spools them to disk."""

import asyncio
import json

import pytest

from imagesearch.asgi import application


def _call(path, headers, chunks):
    """Drive the real ASGI application; returns (status, body, bytes the app pulled from the client)."""
    sent, pulled = [], [0]
    queue = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
             for i, chunk in enumerate(chunks)] or [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if queue:
            message = queue.pop(0)
            pulled[0] += len(message["body"])
            return message
        await asyncio.sleep(3600)  # a client that keeps the connection open

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(application(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled[0]


@pytest.fixture
def small_limit(settings):
    settings.IMPORT_MAX_UPLOAD_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    return 2024


def test_a_declared_length_over_the_limit_is_413_before_any_byte_is_read(small_limit):
    status, body, pulled = _call("/api/images/", [(b"content-length", b"5000000000")], [b"x" * 100])
    assert status == 413 and pulled == 0
    error = json.loads(body)["error"]
    assert error["code"] == "too_large" and str(small_limit) in error["message"]


def test_a_malformed_length_is_refused_and_pages_get_html(small_limit):
    status, body, pulled = _call("/imports/", [(b"content-length", b"12abc")], [b"x"])
    assert status == 413 and pulled == 0 and body.startswith(b"<!doctype html>")


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(small_limit):
    chunks = [b"x" * 1000] * 50  # 50 kB announced by nobody (chunked transfer)
    status, body, pulled = _call("/api/images/", [(b"transfer-encoding", b"chunked")], chunks)
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
    assert pulled <= small_limit + 1000  # stopped at the chunk that crossed the limit


def test_a_body_within_the_limit_reaches_django(small_limit):
    status, body, _ = _call("/healthz", [(b"content-length", b"10")], [b"x" * 10])
    assert status == 405  # /healthz is GET-only: Django answered, not the limit
