"""Load test: N concurrent API clients, each with its own bearer token, for D seconds against the
real `bin/serve` stack (uvicorn + worker + embedded PostgreSQL under supervisord) on 127.0.0.1.

Mix: text search, image search, image list, upload. Prints requests/s, p50/p95/p99 per kind and the
error count, then waits for every accepted upload's job and checks that each uploaded picture is
stored exactly once. Exits 1 on any error or lost/duplicated upload.

    .venv/bin/python bench/load.py                    # 20 clients, 60 s
    .venv/bin/python bench/load.py --clients 40 --seconds 30

A bounded stdlib script rather than locust: locust brings gevent and a web UI, and the check that
matters here (every accepted upload stored exactly once) needs the stack's database anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image as PILImage  # noqa: E402

from tests.serving import serve_stack  # noqa: E402

MIX = (("text_search", 40), ("image_search", 15), ("image_list", 30), ("upload", 15))
WORDS = "dog cat snow mountain beach city night street car tree flower sea sky red blue green".split()


def picture(seed: int, size: int = 96) -> bytes:
    rng = random.Random(seed)
    image = PILImage.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(40):
        x, y = rng.randrange(size), rng.randrange(size)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(size, x + 12), min(size, y + 12)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client(threading.Thread):
    def __init__(self, index: int, stack, token: str, until: float, results: dict, uploads: list, lock):
        super().__init__(daemon=True)
        self.index, self.stack, self.token, self.until = index, stack, token, until
        self.results, self.uploads, self.lock = results, uploads, lock
        self.rng = random.Random(index)

    def run(self) -> None:
        kinds = [kind for kind, weight in MIX for _ in range(weight)]
        count = 0
        while time.monotonic() < self.until:
            kind = self.rng.choice(kinds)
            count += 1
            status, elapsed, note = getattr(self, kind)(count)
            with self.lock:
                self.results[kind].append((elapsed, status, note))

    def call(self, method, path, body=None, content_type=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        try:
            status, _, data = self.stack.request(method, path, body, headers, timeout=60)
        except OSError as error:
            return 0, time.perf_counter() - started, str(error)
        return status, time.perf_counter() - started, data

    def text_search(self, count):
        query = " ".join(self.rng.sample(WORDS, 3))
        status, elapsed, data = self.call("POST", "/api/search/", json.dumps({"q": query, "top_k": 10}).encode(),
                                          "application/json")
        return status, elapsed, "" if status == 200 else data[:200]

    def image_search(self, count):
        body, content_type = multipart({"top_k": "10"}, {"image": ("q.jpg", picture(10**6 + count), "image/jpeg")})
        status, elapsed, data = self.call("POST", "/api/search/", body, content_type)
        return status, elapsed, "" if status == 200 else data[:200]

    def image_list(self, count):
        status, elapsed, data = self.call("GET", f"/api/images/?page_size=24&page={1 + count % 3}")
        ok = status == 200 or (status == 404 and b"Invalid page" in data)  # fewer pages than asked: fine
        return (200 if ok else status), elapsed, "" if ok else data[:200]

    def upload(self, count):
        data = picture(self.index * 100_000 + count)
        body, content_type = multipart({"city": "Loadtown"}, {"file": (f"c{self.index}-{count}.jpg", data, "image/jpeg")})
        status, elapsed, answer = self.call("POST", "/api/images/", body, content_type)
        if status == 202:
            with self.lock:
                self.uploads.append((json.loads(answer)["id"], hashlib.sha256(data).hexdigest(), self.token))
        return (202 if status == 202 else status), elapsed, "" if status == 202 else answer[:200]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def make_tokens(stack, count: int) -> list[str]:
    """One user with the import permission and one bearer token per client."""
    script = ("from django.contrib.auth.models import Permission, User\n"
              "from catalog.accounts.tokens import create_token\n"
              "perm = Permission.objects.get(codename='add_importjob')\n"
              f"for i in range({count}):\n"
              "    user, _ = User.objects.get_or_create(username=f'load{i}')\n"
              "    user.user_permissions.add(perm)\n"
              "    print('TOKEN', create_token(user=user)[1])\n")
    return [line.split()[1] for line in stack.manage("shell", "-c", script).splitlines() if line.startswith("TOKEN")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed-images", type=int, default=30, help="pictures stored before the run")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="wait this long for the uploads' jobs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imagesearch-load-") as tmp:
        print(f"starting bin/serve (ViT-S-32, random weights) in {tmp} ...", flush=True)
        with serve_stack(Path(tmp)) as stack:
            tokens = make_tokens(stack, args.clients)
            results, uploads, lock = defaultdict(list), [], threading.Lock()
            seeder = Client(-1, stack, tokens[0], 0, results, uploads, lock)
            for index in range(args.seed_images):
                seeder.upload(10**7 + index)
            seeded = list(uploads)
            wait_for_jobs(stack, [(job, token) for job, _, token in seeded], args.drain_timeout)
            results.clear()

            load_before = os.getloadavg()
            until = time.monotonic() + args.seconds
            clients = [Client(i, stack, tokens[i], until, results, uploads, lock) for i in range(args.clients)]
            started = time.monotonic()
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            wall = time.monotonic() - started
            load_after = os.getloadavg()

            total = sum(len(v) for v in results.values())
            errors = [(kind, status, note) for kind, rows in results.items() for _, status, note in rows
                      if status not in (200, 202)]
            print(f"\n{args.clients} clients, {wall:.1f} s, {total} requests, {total / wall:.1f} requests/s, "
                  f"{len(errors)} errors (load average {load_before[0]:.1f} -> {load_after[0]:.1f}, "
                  f"{os.cpu_count()} CPUs)")
            print(f"{'kind':<14}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
            for kind, _ in MIX:
                times = [elapsed * 1000 for elapsed, _, _ in results[kind]]
                failed = sum(1 for _, status, _ in results[kind] if status not in (200, 202))
                print(f"{kind:<14}{len(times):>9}{len(times) / wall:>8.1f}{percentile(times, 50):>9.0f}"
                      f"{percentile(times, 95):>9.0f}{percentile(times, 99):>9.0f}{failed:>8}")
            for kind, status, note in errors[:10]:
                print(f"  error: {kind} {status} {note!r}")

            accepted = [item for item in uploads if item not in seeded]
            print(f"\nwaiting for {len(accepted)} accepted uploads to be imported ...", flush=True)
            drain_started = time.monotonic()
            states = wait_for_jobs(stack, [(job, token) for job, _, token in accepted], args.drain_timeout)
            print(f"imported in {time.monotonic() - drain_started:.0f} s after the run")
            hashes = [sha for _, sha, _ in accepted]
            stored = dict(stack.sql("SELECT sha256, count(*) FROM catalog_image WHERE sha256 = ANY(ARRAY["
                                    + ",".join(f"'{sha}'" for sha in hashes) + "]::text[]) GROUP BY sha256")
                          ) if hashes else {}
            lost = [sha for sha in hashes if stored.get(sha, 0) == 0]
            doubled = [sha for sha, n in stored.items() if n > 1]
            unfinished = [job for job, state in states.items() if state != "done"]
            print(f"uploads accepted {len(accepted)}, stored exactly once {sum(1 for n in stored.values() if n == 1)}, "
                  f"lost {len(lost)}, stored twice {len(doubled)}, jobs not done {len(unfinished)}")
            return 1 if errors or lost or doubled or unfinished else 0


def wait_for_jobs(stack, jobs: list[tuple[str, str]], timeout: float) -> dict[str, str]:
    """Poll each job (with its owner's token: jobs are visible to their owner) until done or failed."""
    tokens = dict(jobs)
    states = {job: "" for job in tokens}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in [j for j, s in states.items() if s not in ("done", "failed")]:
            status, _, data = stack.request("GET", f"/api/imports/{job}/",
                                            headers={"Authorization": f"Bearer {tokens[job]}"})
            if status == 200:
                states[job] = json.loads(data)["state"]
        if all(s in ("done", "failed") for s in states.values()):
            break
        time.sleep(1)
    return states


if __name__ == "__main__":
    raise SystemExit(main())
