"""Turning validated form or API input into SearchParams (shared by pages and API)."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import threading
from contextlib import contextmanager

from django.conf import settings
from django.utils.translation import gettext as _, gettext_lazy

from catalog.imaging import ImageRejected, decode_image
from catalog.search import ImageFilters, Region, SearchBusy, SearchError, SearchParams

QUERY_IMAGE_MIN_SIDE = 256  # enough for CLIP's 224 px input; big uploads decode at reduced scale
QUERY_DECODE_WAIT = 10  # seconds a query picture waits for a decode slot before the request is refused

# catalog.imaging stays free of Django (it runs in decode processes): its fixed reasons are translated here.
_REJECTION_REASONS = {
    "empty file": gettext_lazy("empty file"),
    "not an image (unrecognised format)": gettext_lazy("not an image (unrecognised format)"),
    "truncated or corrupt image": gettext_lazy("truncated or corrupt image"),
    "image too large to decode in the memory available": gettext_lazy("image too large to decode in the memory "
                                                                      "available"),
    "metadata too large": gettext_lazy("metadata too large"),
}


def rejection_reason(rejected: ImageRejected) -> str:
    """Why a picture was refused, in the request's language where the reason is a fixed one."""
    return str(_REJECTION_REASONS.get(str(rejected), rejected))


@functools.cache
def _decode_slots(count: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(count)


@contextmanager
def query_decode_slot():
    """Hold one of the process's ``QUERY_DECODES`` slots for decoding a query picture in the web process:
    one may cost a few hundred MB, and concurrent requests must not multiply that without bound."""
    slots = _decode_slots(settings.QUERY_DECODES)
    if not slots.acquire(timeout=QUERY_DECODE_WAIT):
        raise SearchBusy(_("The server is busy reading other query pictures: try again in a moment."))
    try:
        yield
    finally:
        slots.release()


def decode_query_image(data: bytes, *, region: Region | None = None):
    """Decode an uploaded query picture, or raise SearchError with a user-facing reason. Decoded in the
    web process, so within the pipeline's caps, the (lower) query cap on what is decoded and a decode slot."""
    min_side = region.decode_min_side(QUERY_IMAGE_MIN_SIDE) if region else QUERY_IMAGE_MIN_SIDE
    try:
        with query_decode_slot():
            return decode_image(data, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side,
                                max_aspect_ratio=settings.IMAGE_MAX_ASPECT_RATIO,
                                max_decoded_pixels=settings.QUERY_MAX_PIXELS).image
    except ImageRejected as rejected:
        raise SearchError(_("The query image could not be read: %(reason)s.")
                          % {"reason": rejection_reason(rejected)}) from None


def decode_base64_image(text: str, *, region: Region | None = None):
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # accept data: URLs
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SearchError(_("image_base64 is not valid base64.")) from None
    return decode_query_image(data, region=region)


REGION_FIELDS = ("region_x", "region_y", "region_w", "region_h")


def build_region(data: dict) -> Region | None:
    """The box to search by, from the four region fields: all of them or none."""
    values = [data.get(name) for name in REGION_FIELDS]
    if all(value is None for value in values):
        return None
    if any(value is None for value in values):
        raise SearchError(_("A region needs all four of region_x, region_y, region_w and region_h."))
    return Region(*values)


def build_filters(data: dict) -> ImageFilters:
    """``data`` holds cleaned values under the names the form and the serializers share."""
    return ImageFilters(
        cities=tuple(data.get("cities") or ()),
        min_width=data.get("min_width"), max_width=data.get("max_width"),
        min_height=data.get("min_height"), max_height=data.get("max_height"),
        taken_from=data.get("taken_from"), taken_to=data.get("taken_to"),
        orientation=data.get("orientation") or "",
        attributes=tuple(parse_attribute(text) for text in data.get("attr") or ()),
        tags=tuple(data.get("tag") or ()),
    )


def parse_attribute(text: str) -> tuple[str, str]:
    """``name:value`` (an attribute filter) as a pair; the value may hold more colons."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise SearchError(_("An attribute filter is name:value, e.g. brand:acme (got \"%(text)s\").")
                          % {"text": text[:100]})
    return name.strip(), value.strip()


def build_search_params(data: dict, *, image=None) -> SearchParams:
    return SearchParams(
        text=data.get("q") or "", image=image, similar_to=data.get("similar_to"), filters=build_filters(data),
        top_k=data.get("top_k") or 20, page=data.get("page") or 1, min_score=data.get("min_score"),
        collapse_groups=bool(data.get("collapse")), region=build_region(data),
    )


def preview_data_url(image, *, side: int = 160) -> str:
    """A small JPEG of an uploaded query picture, inline: the upload is not stored, yet the page shows it."""
    scale = min(1.0, side / max(image.size))
    # Resized first (not copied, then thumbnailed): no second full-size copy of the picture.
    preview = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), reducing_gap=2.0)
    preview = preview if preview.mode == "RGB" else preview.convert("RGB")
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
