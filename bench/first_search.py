"""The first search after a start: is it as fast as the tenth? (issue 11: warm start)

Starts `bin/serve` (small random-weight model, public reading, its own data folder and port), waits
for /readyz, then times the first searches, page and API, against later ones, and stops everything.

    .venv/bin/python bench/first_search.py            # prints one line per measure
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(request: urllib.request.Request | str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


@contextlib.contextmanager
def serving(data_dir: str, **extra_env: str) -> Iterator[tuple[str, float]]:
    """``bin/serve`` on a free port until /readyz is 200: yields its base URL and the seconds that took;
    stops everything afterwards as Ctrl-C does."""
    port = free_port()
    env = {**os.environ, "IMAGESEARCH_SKIP_SETUP": "1", "IMAGESEARCH_DATA_DIR": data_dir,
           "IMAGESEARCH_BIND": f"127.0.0.1:{port}", "IMAGESEARCH_PUBLIC_READ": "true",
           "CLIP_MODEL": os.environ.get("CLIP_MODEL", "ViT-S-32"),
           "CLIP_RANDOM_INIT": os.environ.get("CLIP_RANDOM_INIT", "true"), "IMAGESEARCH_LOG_LEVEL": "WARNING",
           **extra_env}
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    serve = subprocess.Popen([str(ROOT / "bin" / "serve")], cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/readyz", timeout=2).read()
                break
            except (OSError, urllib.error.HTTPError):
                if serve.poll() is not None or time.monotonic() - started > 600:
                    raise SystemExit("bin/serve did not become ready") from None
                time.sleep(0.2)
        yield base, time.monotonic() - started
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # as Ctrl-C: supervisord stops the web, workers and PostgreSQL
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "bench-first-search"))
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with serving(args.data_dir) as (base, ready_after):
        print(f"bin/serve to /readyz 200: {ready_after:.1f} s")

        def api(words: str) -> urllib.request.Request:
            body = json.dumps({"q": words, "top_k": 12}).encode()
            return urllib.request.Request(base + "/api/search/", data=body,
                                          headers={"Content-Type": "application/json"})

        first_page = timed(f"{base}/?q=first+search+ever")
        first_api = timed(api("the first API search"))
        later = sorted(timed(f"{base}/?q=search+number+{n}") for n in range(args.repeat))
        print(f"first search page: {first_page * 1000:.0f} ms; first API search: {first_api * 1000:.0f} ms; "
              f"later pages: median {later[len(later) // 2] * 1000:.0f} ms, max {later[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
