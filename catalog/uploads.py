"""Request bodies, bounded while they are read: the upload handler that refuses an upload as soon
as one file passes IMAGESEARCH_MAX_UPLOAD_BYTES (not after receiving all of it), and a multipart
stream whose part headers are made valid UTF-8 (file names from old systems in Latin-1 would
otherwise make Django drop the part: "This field is required").

Used by Django's own request parsing (pages, admin) and by the API's parsers alike
(``FILE_UPLOAD_HANDLERS`` in the settings).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.translation import gettext as _
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler, load_handler
from django.http.multipartparser import MultiPartParser

_CHUNK = 64 * 1024
_MAX_PART_HEADER = 64 * 1024  # Django refuses longer part headers itself


class BodyTooLarge(RequestDataTooBig):
    """The request body is over a limit; ``str(exc)`` says which (for the user)."""


class UploadTooLarge(BodyTooLarge):
    """An uploaded file, or the whole multipart body, is over IMAGESEARCH_MAX_UPLOAD_BYTES."""


def body_too_large_message() -> str:
    return (_("The request body is larger than %(limit)d bytes (IMAGESEARCH_MAX_REQUEST_BYTES), not counting "
              "uploaded files.") % {"limit": settings.DATA_UPLOAD_MAX_MEMORY_SIZE})


def too_large_message(name: str | None = None) -> str:
    limit = settings.IMPORT_MAX_UPLOAD_BYTES
    if name:
        return (_("%(name)s is larger than %(limit)d bytes (IMAGESEARCH_MAX_UPLOAD_BYTES).")
                % {"name": name, "limit": limit})
    return _("The upload is larger than %(limit)d bytes (IMAGESEARCH_MAX_UPLOAD_BYTES).") % {"limit": limit}


def max_body_bytes() -> int:
    """The largest request body accepted at all: one request's files together up to
    IMAGESEARCH_MAX_UPLOAD_BYTES, plus the form fields (imagesearch/asgi.py refuses more before
    reading it; more pictures go in an archive or further requests)."""
    return settings.IMPORT_MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class LimitedUploadHandler(FileUploadHandler):
    """First in ``FILE_UPLOAD_HANDLERS``. Refuses a body whose Content-Length cannot be valid before
    reading it, stops a file the moment it passes the per-file limit, and parses the body through
    a stream with UTF-8-safe part headers (Django has no option for either)."""

    def __init__(self, request=None, *, nested: bool = False):
        super().__init__(request)
        self.nested = nested
        self.received = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length > max_body_bytes():
            raise UploadTooLarge(too_large_message())
        if self.nested:
            return None
        # Parse here, over the recoding stream, with fresh copies of the other handlers.
        others = (load_handler(path, self.request) for path in settings.FILE_UPLOAD_HANDLERS)
        handlers = [LimitedUploadHandler(self.request, nested=True),
                    *(handler for handler in others if not isinstance(handler, LimitedUploadHandler))]
        stream = RecodedPartHeaders(input_data, boundary)
        return MultiPartParser(META, stream, handlers, encoding).parse()

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.IMPORT_MAX_UPLOAD_BYTES:
            raise UploadTooLarge(too_large_message(self.file_name))
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler builds the file


class RecodedPartHeaders:
    """A file-like view of a multipart body in which each part's header block is valid UTF-8
    (undecodable bytes become U+FFFD); the part contents pass through unchanged."""

    def __init__(self, raw, boundary: bytes):
        self._pieces = self._transform(raw, b"--" + boundary)
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._pending) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._pending += piece
        if size < 0:
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    @staticmethod
    def _transform(raw, delimiter: bytes):
        buffer, in_header, more = b"", False, True
        while more:
            data = raw.read(_CHUNK)
            more = bool(data)
            buffer += data
            while buffer:
                if in_header:
                    end = buffer.find(b"\r\n\r\n")
                    if end == -1:
                        if more and len(buffer) <= _MAX_PART_HEADER:
                            break  # wait for the rest of the header block
                        in_header = False  # no header block: pass it on for Django to judge
                        continue
                    yield _utf8(buffer[:end]) + b"\r\n\r\n"
                    buffer, in_header = buffer[end + 4:], False
                else:
                    at = buffer.find(delimiter)
                    if at == -1:
                        keep = len(delimiter) - 1 if more else 0  # a delimiter may straddle reads
                        cut = max(len(buffer) - keep, 0)
                        if cut:
                            yield buffer[:cut]
                        buffer = buffer[cut:]
                        break
                    yield buffer[:at + len(delimiter)]
                    buffer, in_header = buffer[at + len(delimiter):], True
        if buffer:
            yield buffer


def _utf8(block: bytes) -> bytes:
    try:
        block.decode("utf-8")
        return block
    except UnicodeDecodeError:
        return block.decode("utf-8", errors="replace").encode("utf-8")
