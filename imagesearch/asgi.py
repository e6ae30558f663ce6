"""ASGI entry point: bin/serve runs it under uvicorn, so slow clients cost a coroutine, not a thread.

Django runs each request's sync code in a thread of its own (asgiref ThreadSensitiveContext), so a
connection kept in that thread would be orphaned when it ends: Django's docs say to turn persistent
connections off under ASGI, which is the default here (set IMAGESEARCH_DB_CONN_MAX_AGE to override).

Django's ASGI handler reads a whole request body (to a temporary file) before any middleware or
view runs, so body limits set in Django alone would come after the disk is filled: ``BodyLimit``
refuses a body over the limit before reading it (by Content-Length) or as soon as it passes it."""

import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
os.environ.setdefault("IMAGESEARCH_DB_CONN_MAX_AGE", "0")


class BodyLimit:
    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            return await _too_large(scope, send, limit)
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body past the limit: Django sees the client leave
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, watched_send)
        if refused and not started:
            await _too_large(scope, send, limit)


async def _too_large(scope, send, limit: int) -> None:
    from catalog.api.errors import error_body

    message = f"The request body is larger than {limit} bytes (IMAGESEARCH_MAX_UPLOAD_BYTES plus form fields)."
    if scope["path"].startswith("/api/"):
        body = json.dumps(error_body(413, "too_large", message)).encode()
        content_type = b"application/json"
    else:
        body = f"<!doctype html><title>Too large</title><h1>Too large</h1><p>{message}</p>".encode()
        content_type = b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _limit() -> int:
    from catalog.uploads import max_body_bytes

    return max_body_bytes()


application = BodyLimit(get_asgi_application(), _limit)
