"""Turning validated form or API input into SearchParams (shared by pages and API)."""

from __future__ import annotations

import base64
import binascii

from django.conf import settings

from catalog.imaging import ImageRejected, decode_image
from catalog.search import ImageFilters, SearchError, SearchParams

QUERY_IMAGE_MIN_SIDE = 256  # enough for CLIP's 224 px input; big uploads decode at reduced scale


def decode_query_image(data: bytes):
    """Decode an uploaded query picture, or raise SearchError with a user-facing reason."""
    try:
        return decode_image(data, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=QUERY_IMAGE_MIN_SIDE).image
    except ImageRejected as rejected:
        raise SearchError(f"The query image could not be read: {rejected}.") from None


def decode_base64_image(text: str):
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # accept data: URLs
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SearchError("image_base64 is not valid base64.") from None
    return decode_query_image(data)


def build_filters(data: dict) -> ImageFilters:
    """``data`` holds cleaned values under the names the form and the serializers share."""
    return ImageFilters(
        cities=tuple(data.get("cities") or ()),
        min_width=data.get("min_width"), max_width=data.get("max_width"),
        min_height=data.get("min_height"), max_height=data.get("max_height"),
        taken_from=data.get("taken_from"), taken_to=data.get("taken_to"),
        orientation=data.get("orientation") or "",
    )


def build_search_params(data: dict, *, image=None) -> SearchParams:
    return SearchParams(
        text=data.get("q") or "", image=image, similar_to=data.get("similar_to"), filters=build_filters(data),
        top_k=data.get("top_k") or 20, page=data.get("page") or 1, min_score=data.get("min_score"),
        collapse_groups=bool(data.get("collapse")),
    )
