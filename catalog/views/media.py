"""Stored pictures and videos under MEDIA_URL, for a self-hosted box serving its own media
(IMAGESEARCH_SERVE_MEDIA): local files, byte ranges for video players, or a redirect to a bucket."""

import os
import posixpath
import re

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.utils._os import safe_join
from django.views.static import serve

from catalog.accounts.access import read_required

# Stored pictures (and videos) only: nothing else under MEDIA_ROOT (import payloads in imports/,
# whatever a bucket or an operator put there) is served, and nothing as anything but an image or a video.
SERVED_MEDIA_FOLDERS = ("images/", "thumbnails/", "videos/")
# Our own table, not mimetypes: the system's tables differ between machines. No SVG (it can carry script).
MEDIA_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                       "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff",
                       "heic": "image/heic", "heif": "image/heif",
                       # Videos whose key frames are images (catalog/ingest/video.py).
                       "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "mkv": "video/x-matroska",
                       "avi": "video/x-msvideo"}


@read_required  # same rule as the pages: public only when IMAGESEARCH_PUBLIC_READ is on
def serve_media(request, path):
    path = posixpath.normpath(path).lstrip("/")  # as serve() will: "images/../imports/..." is not an image
    content_type = MEDIA_CONTENT_TYPES.get(path.rsplit(".", 1)[-1].lower()) if "." in path else None
    if not path.startswith(SERVED_MEDIA_FOLDERS) or content_type is None:
        raise Http404("No such picture.")
    storage = storages["default"]
    if not isinstance(storage, FileSystemStorage):
        # A bucket: pages and the API link to its (signed) URLs directly; a /media/ link (made under
        # another storage, or by hand) is sent there too, after the same checks.
        return HttpResponseRedirect(storage.url(path))
    # MEDIA_ROOT is read per request (not bound at import) so it always follows the settings.
    if path.startswith("videos/") and request.headers.get("Range"):
        response = _byte_range(request.headers["Range"], path, content_type)
        if response is not None:
            response["X-Content-Type-Options"] = "nosniff"
            return response
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    if response.status_code == 200:
        response["Content-Type"] = content_type
        if path.startswith("videos/"):
            response["Accept-Ranges"] = "bytes"
    response["X-Content-Type-Options"] = "nosniff"
    return response


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str, path: str, content_type: str):
    """A 206 with one byte range of a video (a player seeking, e.g. to a key frame's #t=), a 416 for a
    range past its end, or None (not one simple range: the whole file). Django's serve() has no ranges."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    try:
        full = safe_join(settings.MEDIA_ROOT, path)
        handle = open(full, "rb")  # noqa: SIM115 - closed by the response
    except (OSError, ValueError):
        raise Http404("No such picture.") from None
    size = os.fstat(handle.fileno()).st_size
    first, last = match.groups()
    if first == "":  # the last N bytes
        first, last = max(0, size - int(last)), size - 1
    else:
        first, last = int(first), min(int(last), size - 1) if last else size - 1
    if first >= size or first > last:
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    handle.seek(first)
    length = last - first + 1

    def chunks(left=length):
        with handle:
            while left > 0:
                data = handle.read(min(left, 256 * 1024))
                if not data:
                    return
                left -= len(data)
                yield data

    response = StreamingHttpResponse(chunks(), status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {first}-{last}/{size}"
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    return response
