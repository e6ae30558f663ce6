"""Query pictures are decoded in the web process, so memory stays bounded whatever they are: uploads
within the (lower) query pixel cap and the pipeline's aspect-ratio cap, every cap weighted by what the
format's decoder costs, all refused from the header; and a few decodes at a time per process, whether of
an upload or of a region of a stored picture."""

import base64
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from catalog import search_input
from catalog.imaging import DECODE_COST, ImageRejected, decode_image
from tests import hostile
from tests.conftest import ingest_pictures, varied_picture

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
WHOLE = {"region_x": 0, "region_y": 0, "region_w": 1, "region_h": 1}


@pytest.fixture
def api(writer):
    client = APIClient()
    client.force_authenticate(writer)
    return client


def search(api, data: bytes | None = None, **fields):
    if data is not None:
        fields["image_base64"] = base64.b64encode(data).decode("ascii")
    return api.post("/api/search/", fields, format="json")


def message(response) -> str:
    return response.json()["error"]["message"]


def peak_rss_growth(action) -> int:
    """How far ``action`` raises this process's peak resident memory (Linux: VmHWM, reset first)."""
    def high_water_mark():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the high-water mark to the current RSS
    before = high_water_mark()
    action()
    return high_water_mark() - before


# --------------------------------------------------------------------------
# the caps, from the header


FORMATS = {"WEBP": lambda side: hostile.webp_canvas(side, side),
           "AVIF": lambda side: hostile.heif_claiming("AVIF", side, side),
           "HEIF": lambda side: hostile.heif_claiming("HEIF", side, side)}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_pixel_cap_is_weighted_by_what_the_formats_decoder_costs(fmt):
    assert DECODE_COST[fmt] >= 2  # measured: 7.5 to 16 bytes a pixel, against ~4 for PNG
    data, pixels = FORMATS[fmt](64), 64 * 64
    limit = int(pixels * DECODE_COST[fmt])  # the smallest cap under which 64x64 of this format decodes
    assert decode_image(data, max_pixels=limit).metadata.width == 64
    with pytest.raises(ImageRejected, match=rf"^image too large: {pixels} pixels \(limit {pixels - 1} for {fmt}\)$"):
        decode_image(data, max_pixels=limit - 1)


def test_png_text_chunk_inflating_past_pillows_limit_is_refused_as_metadata_too_large(api):
    with pytest.raises(ImageRejected, match="^metadata too large$"):
        decode_image(hostile.png_text_bomb(), max_pixels=10**8)
    response = search(api, hostile.png_text_bomb())
    assert response.status_code == 400 and "metadata too large" in message(response)


def test_query_picture_beyond_the_aspect_limit_is_refused_from_the_header(api, writer_client, settings):
    settings.IMAGE_MAX_ASPECT_RATIO = 20
    response = search(api, hostile.png(2000, 1))
    assert response.status_code == 400 and "aspect ratio 2000:1 exceeds limit 20" in message(response)
    page = writer_client.post("/", {"image": SimpleUploadedFile("strip.png", hostile.png(1, 2000)), "search": "image"})
    assert page.status_code == 400 and "aspect ratio 1:2000 exceeds limit 20" in page.content.decode()


@pytest.mark.parametrize("query_cap, upload_cap", [(10_000, 10**8), (10**8, 10_000)])
def test_query_picture_over_the_query_or_the_upload_cap_is_refused(api, settings, query_cap, upload_cap):
    settings.QUERY_MAX_PIXELS, settings.IMAGE_MAX_PIXELS = query_cap, upload_cap
    response = search(api, varied_picture(1, (200, 100)))  # a PNG
    assert response.status_code == 400 and "20000 pixels (limit 10000)" in message(response)
    assert search(api, varied_picture(1, (100, 100))).status_code == 200


def test_query_cap_counts_what_a_jpeg_decodes_at_reduced_scale(api, settings):
    settings.QUERY_MAX_PIXELS = 200_000
    jpeg = hostile.photo(1, size=(2048, 1024))  # 2 Mpx, decoded at 1/4: 512x256
    assert search(api, jpeg).status_code == 200
    response = search(api, varied_picture(1, (2048, 1024)))  # the same size as a PNG: decoded whole
    assert response.status_code == 400 and "image too large to decode here: 2097152 pixels" in message(response)


def test_webp_canvas_bomb_query_is_refused_at_once_in_bounded_memory(api):
    # 160 bytes, 10000x10000: decoded, ~1.6 GB in the web process (libwebp keeps two RGBA canvases).
    bomb, responses = hostile.webp_canvas(10_000, 10_000), []
    started = time.monotonic()
    growth = peak_rss_growth(lambda: responses.append(search(api, bomb)))
    assert time.monotonic() - started < 2
    assert responses[0].status_code == 400 and "for WEBP" in message(responses[0])
    assert growth < 100 * MB


def test_stored_webp_beyond_the_weighted_cap_is_refused_for_a_region_search(api, settings):
    # Stored under the caps of its day; the caps were lowered since.
    stored = ingest_pictures([("canvas.webp", hostile.webp_canvas(300, 300))])[0]
    settings.IMAGE_MAX_PIXELS = 4 * 300 * 300 - 1
    response = search(api, similar_to=stored.pk, **WHOLE)
    assert response.status_code == 400 and "image too large: 90000 pixels (limit 89999 for WEBP)" in message(response)


# --------------------------------------------------------------------------
# a few decodes at a time


@pytest.fixture
def one_slot(settings, monkeypatch):
    settings.QUERY_DECODES = 1
    monkeypatch.setattr(search_input, "QUERY_DECODE_WAIT", 0.2)


def test_query_upload_waits_for_a_decode_slot_and_is_refused_when_none_frees(api, one_slot):
    with search_input.query_decode_slot():  # another request's decode
        response = search(api, varied_picture(1))
    # Not the input's fault: a 503 to retry, as when the database restarts.
    assert response.status_code == 503 and response.json()["error"]["code"] == "busy"
    assert "busy" in message(response) and int(response["Retry-After"]) > 0
    assert search(api, varied_picture(1)).status_code == 200  # the slot was given back


def test_search_page_says_busy_with_a_503_when_no_decode_slot_frees(writer_client, one_slot):
    upload = SimpleUploadedFile("q.png", varied_picture(1), content_type="image/png")
    with search_input.query_decode_slot():
        response = writer_client.post("/", {"image": upload, "search": "image"})
    assert response.status_code == 503 and b"busy" in response.content and int(response["Retry-After"]) > 0


def test_region_of_a_stored_picture_waits_for_a_decode_slot_too(api, one_slot):
    stored = ingest_pictures([("a.png", varied_picture(1, (64, 64)))])[0]
    with search_input.query_decode_slot():
        response = search(api, similar_to=stored.pk, **WHOLE)
    assert response.status_code == 503 and "busy" in message(response)
    assert search(api, similar_to=stored.pk, **WHOLE).status_code == 200
