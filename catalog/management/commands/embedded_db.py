"""Keep the embedded PostgreSQL server up: start it, start it again whenever it dies, and
stop it when told to stop (SIGTERM/SIGINT). bin/serve runs it under supervisord."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

EMBEDDED_ENGINE = "imagesearch.embedded_db"
MAX_BACKOFF_SECONDS = 10.0


class Command(BaseCommand):
    help = "Run (and restart when it dies) the embedded PostgreSQL server until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=1.0,
                            help="seconds between liveness checks (default 1)")

    def handle(self, *args, interval: float, **options):
        from imagesearch.embedded_db import server

        database = settings.DATABASES["default"]
        if database["ENGINE"] != EMBEDDED_ENGINE:
            raise CommandError("DATABASE_URL is set: there is no embedded PostgreSQL server to run.")
        pgdata = Path(database["OPTIONS"]["pgdata"])
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())

        delay = interval
        announced = False
        while not stop.is_set():
            try:
                server.ensure_running(pgdata, database["NAME"], database["OPTIONS"].get("server_settings"))
            except Exception as exc:  # noqa: BLE001 - any failure to start: say so, back off, try again
                self.stderr.write(f"embedded PostgreSQL is not up yet, retrying in {delay:g} s: {exc}")
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            else:
                if not announced:
                    self.stdout.write(f"embedded PostgreSQL is running ({pgdata})")
                    announced = True
                delay = interval
            stop.wait(delay)
        server.stop(pgdata)
        self.stdout.write("embedded PostgreSQL stopped")
