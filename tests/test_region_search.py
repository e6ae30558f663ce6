"""Region search: a box of an uploaded picture or of a stored image ("similar_to") is cut in the
picture's upright frame and searched by; bad boxes are a 400 with a message; the page's picker
works by keyboard and mouse."""

import io
import re
import time

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage
from rest_framework.test import APIClient

from tests.conftest import ingest_pictures, varied_picture
from tests.test_browser import CHROMIUM, browser_page  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db

LEFT_HALF = {"region_x": 0, "region_y": 0, "region_w": 0.5, "region_h": 1}
SIDE = 64


def png(image: PILImage.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def composite() -> PILImage.Image:
    """Picture A on the left half, noise on the right half."""
    picture = PILImage.new("RGB", (2 * SIDE, SIDE))
    picture.paste(PILImage.open(io.BytesIO(varied_picture(1, (SIDE, SIDE)))), (0, 0))
    noise = np.random.default_rng(7).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    picture.paste(PILImage.fromarray(noise, "RGB"), (SIDE, 0))
    return picture


def rotated_composite() -> bytes:
    """The composite stored turned on its side, with EXIF orientation 6 ("rotate 90° clockwise to show")."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    return png(composite().transpose(PILImage.Transpose.ROTATE_90), exif=exif)


@pytest.fixture
def api(writer):
    client = APIClient()
    client.force_authenticate(writer)
    return client


@pytest.fixture
def stored():
    """A (the composite's left half), B (another picture), the composite and its EXIF-rotated copy."""
    pictures = [("a.png", varied_picture(1, (SIDE, SIDE))), ("b.png", varied_picture(2, (SIDE, SIDE))),
                ("composite.png", png(composite())), ("rotated.png", rotated_composite())]
    return dict(zip(("a", "b", "composite", "rotated"), ingest_pictures(pictures)))


def search(api, fields: dict, upload: bytes | None = None):
    if upload is not None:
        return api.post("/api/search/", {**fields, "image": SimpleUploadedFile("q.png", upload)}, format="multipart")
    return api.post("/api/search/", fields, format="json")


def first(response) -> dict:
    assert response.status_code == 200, response.content
    return response.json()["results"][0]


def score_of(response, image_id: int) -> float:
    return next(hit["score"] for hit in response.json()["results"] if hit["id"] == image_id)


def test_a_region_of_an_uploaded_picture_finds_the_picture_inside_it(api, stored):
    a = stored["a"]
    whole = search(api, {"top_k": 10}, upload=png(composite()))
    region = search(api, {**LEFT_HALF, "top_k": 10}, upload=png(composite()))
    assert first(region)["id"] == a.pk
    assert first(region)["score"] > 0.99  # the very pixels A was stored with
    assert score_of(region, a.pk) > score_of(whole, a.pk)


def test_a_region_of_a_stored_image_is_embedded_on_the_fly(api, stored):
    a, whole_image = stored["a"], stored["composite"]
    region = search(api, {"similar_to": whole_image.pk, **LEFT_HALF, "top_k": 10})
    ids = [hit["id"] for hit in region.json()["results"]]
    assert ids[0] == a.pk and first(region)["score"] > 0.99 and whole_image.pk not in ids
    whole = search(api, {"similar_to": whole_image.pk, "top_k": 10})
    assert score_of(region, a.pk) > score_of(whole, a.pk)


def test_the_region_is_cut_from_the_upright_frame(api, stored):
    a, rotated = stored["a"], stored["rotated"]
    assert (rotated.width, rotated.height) == (2 * SIDE, SIDE)  # EXIF applied: stored 64x128, shown 128x64
    uploaded = search(api, {**LEFT_HALF, "top_k": 3}, upload=rotated_composite())
    assert first(uploaded)["id"] == a.pk and first(uploaded)["score"] > 0.99
    on_the_fly = search(api, {"similar_to": rotated.pk, **LEFT_HALF, "top_k": 3})
    assert first(on_the_fly)["id"] == a.pk and first(on_the_fly)["score"] > 0.99


INVALID_REGIONS = [
    ({"region_x": 0.6, "region_y": 0, "region_w": 0.5, "region_h": 1}, "x + width and y + height must be at most 1"),
    ({"region_x": 0, "region_y": 0.5, "region_w": 0.5, "region_h": 0.6}, "x + width and y + height must be at most 1"),
    ({"region_x": 0, "region_y": 0, "region_w": 0, "region_h": 1}, "width and height must be above 0"),
    ({"region_x": -0.1, "region_y": 0, "region_w": 0.5, "region_h": 1}, "greater than or equal to 0"),
    ({"region_x": 0, "region_y": 0, "region_w": 0.5}, "all four of region_x, region_y, region_w and region_h"),
    ({"region_x": 0, "region_y": 0, "region_w": 0.05, "region_h": 1}, "at least 16 pixels wide and high"),
    ({"region_x": 0, "region_y": 0, "region_w": 5e-324, "region_h": 1}, "at least 16 pixels wide and high"),
]


def test_invalid_regions_are_refused_with_a_message(api, stored):
    for fields, message in INVALID_REGIONS:  # one loop, not parameters: each would ingest the pictures again
        for response in (search(api, fields, upload=png(composite())),
                         search(api, {"similar_to": stored["composite"].pk, **fields})):
            assert response.status_code == 400, (fields, response.content)
            error = response.json()["error"]
            assert error["status"] == 400 and message in error["message"], (fields, error)
    for value in ("nan", "inf", "-inf"):  # a form carries text; JSON has no such numbers
        response = search(api, {**LEFT_HALF, "region_x": value}, upload=png(composite()))
        assert response.status_code == 400 and "valid number" in response.json()["error"]["message"], value


def test_a_region_needs_a_picture(api, stored):
    for fields in ({"q": "a dog", **LEFT_HALF}, LEFT_HALF):  # with words, or with nothing else
        response = search(api, fields)
        assert response.status_code == 400, response.content
        assert "A region is a box of a picture" in response.json()["error"]["message"]


def test_a_stored_file_is_decoded_within_the_pixel_limit_and_no_larger_than_the_region_needs(api, stored, settings):
    from catalog.search import Region

    assert Region(0, 0, 1, 1).decode_min_side(256) == 256  # a whole picture: reduced as an upload is
    assert Region(0.5, 0, 0.25, 1).decode_min_side(256) == 1024  # a quarter: four times the detail
    # A tiny box decodes no larger than a bound, whatever the picture: a request's memory stays bounded.
    assert Region(0, 0, 0.01, 0.01).decode_min_side(256) == Region(0, 0, 5e-324, 1).decode_min_side(256) == 2048
    settings.IMAGE_MAX_PIXELS = 2 * SIDE * SIDE - 1  # the stored composite is now over the limit
    response = search(api, {"similar_to": stored["composite"].pk, **LEFT_HALF})
    assert response.status_code == 400 and "image too large" in response.json()["error"]["message"]


def test_a_region_of_a_missing_image_or_file_is_refused(api, stored):
    response = search(api, {"similar_to": 10**9, **LEFT_HALF})
    assert response.status_code == 404 and "does not exist" in response.json()["error"]["message"]
    lost = stored["composite"]
    lost.file.storage.delete(lost.file.name)
    response = search(api, {"similar_to": lost.pk, **LEFT_HALF})
    assert response.status_code == 400 and "is missing" in response.json()["error"]["message"]


def test_the_schema_documents_the_region_fields(api):
    schema = api.get("/api/schema/?format=json").json()
    request = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"region_x", "region_y", "region_w", "region_h"} <= set(request)
    assert request["region_w"]["maximum"] == 1 and "upright" in request["region_x"]["description"]


def test_the_pages_search_a_region(client, stored):
    a, whole_image = stored["a"], stored["composite"]
    detail = client.get(f"/images/{whole_image.pk}/").content.decode()
    assert "data-region-picker" in detail and 'name="region_w"' in detail and "region.js" in detail
    response = client.get("/", {"similar_to": whole_image.pk, **LEFT_HALF})
    assert response.status_code == 200
    assert re.findall(r'data-image-id="(\d+)"', response.content.decode())[0] == str(a.pk)
    refused = client.get("/", {"similar_to": whole_image.pk, **LEFT_HALF, "region_x": 0.5, "region_w": 0.9})
    assert refused.status_code == 400 and "must be at most 1" in refused.content.decode()


def wait_until(page, expression: str, seconds: float = 30) -> None:
    """Poll ``expression`` with evaluate: wait_for_function's polling needs eval, which the site's CSP forbids."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_picker_draws_by_mouse_and_searches_by_keyboard(stored, live_server, browser_page):  # noqa: F811
    a, whole_image, page = stored["a"], stored["composite"], browser_page
    page.goto(f"{live_server.url}/images/{whole_image.pk}/")
    page.wait_for_selector(".region-picker.region-ready")
    stage = page.locator(".region-stage")
    wait_until(page, "document.querySelector('.region-image').naturalWidth > 0")

    def region() -> list[float]:
        return [float(page.input_value(f"input[name=region_{name}]") or "nan") for name in "xywh"]

    box = stage.bounding_box()
    page.mouse.move(box["x"] + 0.1 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.9 * box["height"], steps=5)
    page.mouse.up()
    assert region() == pytest.approx([0.1, 0.2, 0.5, 0.7], abs=0.03)
    assert page.locator(".region-search").is_visible()
    page.keyboard.press("Escape")
    assert page.input_value("input[name=region_x]") == "" and page.locator("input[name=region_x]").is_disabled()

    page.locator("body").focus()
    for _ in range(40):  # reachable with Tab, and the focus is visible
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('region-stage')"):
            break
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("ArrowRight")  # the first key puts a box in the middle: 0.25, 0.25, 0.5 x 0.5
    for key, times in (("ArrowLeft", 13), ("ArrowUp", 13), ("Shift+ArrowDown", 25)):
        for _ in range(times):
            page.keyboard.press(key)
    assert region() == pytest.approx([0, 0, 0.5, 1], abs=2e-6)
    assert "50%" in page.inner_text(".region-status")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert f"similar_to={whole_image.pk}" in page.url and "region_w=0.5" in page.url
    page.wait_for_selector("li.card")
    assert int(page.locator("li.card").first.get_attribute("data-image-id")) == a.pk


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_search_page_searches_a_region_of_the_chosen_picture(stored, live_server, browser_page,  # noqa: F811
                                                                 tmp_path):
    a, page = stored["a"], browser_page
    query = tmp_path / "query.png"
    query.write_bytes(png(composite()))
    page.goto(live_server.url + "/")
    assert not page.locator(".region-picker").is_visible()  # nothing chosen yet
    page.set_input_files("input[name=image]", str(query))
    wait_until(page, "document.querySelector('.region-image').naturalWidth > 0")
    page.locator(".region-stage").focus()
    for key, times in (("ArrowLeft", 13), ("ArrowUp", 13), ("Shift+ArrowDown", 25)):
        for _ in range(times):
            page.keyboard.press(key)
    with page.expect_navigation():
        page.click(".region-search")
    page.wait_for_selector("li.card")
    assert int(page.locator("li.card").first.get_attribute("data-image-id")) == a.pk
