"""Run the real `bin/serve` stack (supervisord: uvicorn, worker, embedded PostgreSQL) for a test,
on a free loopback port with its own data folder, and take it down completely afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "stack-test-password-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, data_dir: Path, port: int, env: dict, process: subprocess.Popen, log: Path):
        self.data_dir, self.port, self.env, self.process, self.log = data_dir, port, env, process, log
        self.base = f"http://127.0.0.1:{port}"
        self.token: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10.0) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, payload=None, timeout: float = 10.0):
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json"}, timeout)
        return status, (json.loads(data) if data else None)

    def manage(self, *args: str, extra_env: dict | None = None) -> str:
        result = subprocess.run([str(ROOT / ".venv/bin/python"), "manage.py", *args], cwd=ROOT,
                                env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def log_in_as_superuser(self) -> None:
        self.manage("createsuperuser", "--noinput", "--username", "tester", "--email", "t@example.com",
                    extra_env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD})
        # A bearer token made the way tests/conftest.py's api_token fixture makes one.
        self.token = self.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                 "from catalog.accounts.tokens import create_token; "
                                 "print(create_token(user=User.objects.get(username='tester'))[1])").split()[-1]

    def children(self) -> dict[str, int]:
        """Supervised process name -> pid, from supervisorctl."""
        out = subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-s",
                              f"unix://{self.data_dir / 'run' / 'supervisor.sock'}", "status"],
                             capture_output=True, text=True, timeout=30).stdout
        pids = {}
        for line in out.splitlines():
            parts = line.split()
            if "pid" in parts:
                pids[parts[0]] = int(parts[parts.index("pid") + 1].rstrip(","))
        return pids

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])

    def sql(self, query: str) -> list[tuple]:
        import psycopg

        lines = (self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
        with psycopg.connect(host=lines[4], port=int(lines[3]), user="postgres", dbname="imagesearch") as conn:
            return conn.execute(query).fetchall()


@contextmanager
def serve_stack(tmp_path: Path, ready_within: float = 240.0, **extra_env: str):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        IMAGESEARCH_DATA_DIR=str(data_dir), IMAGESEARCH_BIND=f"127.0.0.1:{port}", IMAGESEARCH_SKIP_SETUP="1",
        IMAGESEARCH_SKIP_SAMPLES="1", CLIP_MODEL="ViT-S-32", CLIP_RANDOM_INIT="true",
        IMAGESEARCH_EMBEDDED_SHARED_BUFFERS="128MB", IMAGESEARCH_PUBLIC_READ="true",
        IMAGESEARCH_THROTTLE_SEARCH="100000/min", IMAGESEARCH_THROTTLE_UPLOAD="100000/min",
        IMAGESEARCH_THROTTLE_LOGIN="100000/min", IMAGESEARCH_LOG_LEVEL="INFO", DATABASE_URL="",
    )
    env.pop("DATABASE_URL")
    env.update(extra_env)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(ROOT / "bin/serve")], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(data_dir, port, env, process, log)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            assert process.poll() is None, f"bin/serve exited:\n{log.read_text()[-3000:]}"
            try:
                if stack.request("GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready in {ready_within} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield stack
    finally:
        _stop(stack)


def _stop(stack: Stack) -> None:
    process = stack.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # supervisord stops web and workers, then PostgreSQL
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    pidfile = stack.data_dir / "pgdata" / "postmaster.pid"
    if pidfile.exists():  # only if something went wrong above: never leave a server behind
        try:
            os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass
