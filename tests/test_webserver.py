"""The web server closes connections that do not send a whole request head in time, so idle or
dripping sockets cannot pile up until it runs out of file descriptors; real requests still answer."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(request):
    port = _free_port()
    preload = getattr(request, "param", False)  # loading the model costs seconds; only one test needs it
    process = subprocess.Popen(
        [sys.executable, "-m", "imagesearch.webserver", "--host", "127.0.0.1", "--port", str(port),
         "--header-timeout", "1.5", *([] if preload else ["--no-preload"])],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "web server did not start"
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_connections_that_never_finish_a_request_head_are_closed(webserver):
    idle = [socket.create_connection(("127.0.0.1", webserver)) for _ in range(20)]
    dripping = [socket.create_connection(("127.0.0.1", webserver)) for _ in range(20)]
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()
    closed = set()
    while time.monotonic() - started < 6 and len(closed) < 40:
        for index, sock in enumerate(dripping):
            if index not in closed:
                try:
                    sock.send(head[int((time.monotonic() - started) * 5) % len(head):][:1])  # 5 bytes/s
                except OSError:
                    closed.add(index)
        for index, sock in enumerate(idle, start=100):
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed.add(index)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(index)
        for index, sock in enumerate(dripping):
            sock.setblocking(False)
            try:
                if index not in closed and sock.recv(1) == b"":
                    closed.add(index)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(index)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert len(closed) == 40, f"{40 - len(closed)} connections still open after {elapsed:.1f} s"
    assert elapsed < 5
    for sock in idle + dripping:
        sock.close()
    # A client that sends its request promptly is served, also on a kept-alive connection.
    with urllib.request.urlopen(f"http://127.0.0.1:{webserver}/healthz", timeout=5) as response:
        assert response.status == 200


@pytest.mark.slow  # loads the model in a fresh process
@pytest.mark.parametrize("webserver", [True], indirect=True)
def test_the_model_is_loaded_before_the_first_request_is_answered(webserver):
    # The fixture waited for the first /healthz answer: by then the model must already be loaded,
    # so /readyz never says "loading" and the first search does not pay for the load.
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{webserver}/readyz", timeout=5).read()
    except urllib.error.HTTPError as error:  # 503 when the database part fails; the model part still counts
        body = error.read()
    assert json.loads(body)["model"] == "ok"
