"""The web server bin/serve and the container run: uvicorn in front of Django's ASGI handler.

    python -m imagesearch.webserver --host 127.0.0.1 --port 8000

uvicorn has no deadline on receiving a request's line and headers (a reverse proxy has one:
nginx's client_header_timeout), so without one a client that opens connections and never
finishes a request holds a file descriptor each until the process can accept no more. Here each
connection gets HEADER_TIMEOUT seconds to send a complete request head, then it is closed."""

from __future__ import annotations

import argparse
import sys

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 20.0  # seconds for a whole request line + headers (nginx's default is 60)


class HeadDeadlineProtocol(H11Protocol):
    header_timeout = HEADER_TIMEOUT
    _head_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # a kept-alive connection: the next head gets its own deadline
            self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        # IDLE: no complete request head since the connection opened (or since the last response).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT,
                        help="seconds a connection has to send a whole request head (default %(default)s)")
    parser.add_argument("--no-preload", action="store_true",
                        help="load the CLIP model on the first search instead of before serving")
    args = parser.parse_args(argv)
    if not args.no_preload:
        load_model_before_serving()
    protocol = type("Protocol", (HeadDeadlineProtocol,), {"header_timeout": args.header_timeout})
    uvicorn.run("imagesearch.asgi:application", host=args.host, port=args.port, http=protocol,
                lifespan="off", ws="none", timeout_graceful_shutdown=20,
                # X-Forwarded-* are read by Django alone (IMAGESEARCH_PROXY_COUNT), never rewritten here.
                proxy_headers=False)


def load_model_before_serving() -> None:
    """Load the model before the socket opens, so the first search is as fast as the tenth (a
    load balancer waits for /readyz anyway; a user right after bin/serve does not)."""
    import imagesearch.asgi  # noqa: F401 - sets up Django with the ASGI defaults; uvicorn reuses the module
    from django.db import connections

    from catalog.embedder import get_embedder
    from catalog.spaces import serving_config

    try:
        try:
            config = serving_config()  # the active space's model (manage.py models), else the configured one
        finally:
            connections.close_all()
        get_embedder(config)
    except Exception as exc:  # noqa: BLE001 - serve anyway: /readyz reports the error and retries the load
        print(f"imagesearch: the model did not load before serving: {str(exc).splitlines()[0] if str(exc) else exc!r}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
