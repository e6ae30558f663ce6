"""The API's body parsers: DRF's, with the request-size limit Django applies to its own forms
(DRF reads JSON and urlencoded bodies whole, unbounded) and deeply nested JSON as a 400."""

from __future__ import annotations

import io

from django.conf import settings
from django.utils.translation import gettext as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from catalog.uploads import BodyTooLarge, body_too_large_message


def read_bounded(stream, parser_context) -> bytes:
    """The whole body, refused (before reading, when the length is declared) past DATA_UPLOAD_MAX_MEMORY_SIZE."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    request = (parser_context or {}).get("request")
    declared = request.META.get("CONTENT_LENGTH") if request is not None else None
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(body_too_large_message())
    body = stream.read(limit + 1) if stream is not None else b""
    if len(body) > limit:
        raise BodyTooLarge(body_too_large_message())
    return body


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        body = io.BytesIO(read_bounded(stream, parser_context))
        try:
            return super().parse(body, media_type, parser_context)
        except RecursionError:
            raise ParseError(_("JSON parse error - the document is nested too deeply.")) from None


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        return super().parse(io.BytesIO(read_bounded(stream, parser_context)), media_type, parser_context)


class MultiPartParser(parsers.MultiPartParser):
    """Bounded by the upload handlers (catalog.uploads) and DATA_UPLOAD_MAX_MEMORY_SIZE for fields."""


API_PARSERS = [JSONParser, MultiPartParser, FormParser]
