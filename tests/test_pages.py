"""Server-rendered pages: search, detail, empty states and errors (no JavaScript needed)."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import ingest_in_cities, varied_picture

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored():
    return ingest_in_cities("page", ["Paris", "Hangzhou"] * 4)


def result_ids(response) -> list[int]:
    return [int(x) for x in re.findall(r'data-image-id="(\d+)"', response.content.decode())]


def test_empty_page_shows_the_form_and_a_hint(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'name="q"' in response.content and b'type="file"' in response.content
    assert b"Describe a picture" in response.content


def test_text_search_with_city_filter_and_pages(client, stored):
    response = client.get("/", {"q": "草地上的小狗", "cities": "Hangzhou", "top_k": 2})
    assert response.status_code == 200
    ids = result_ids(response)
    assert len(ids) == 2 and all(stored_city(stored, pk) == "Hangzhou" for pk in ids)
    assert b'rel="next"' in response.content
    page2 = client.get("/", {"q": "草地上的小狗", "cities": "Hangzhou", "top_k": 2, "page": 2})
    assert set(result_ids(page2)).isdisjoint(ids) and len(result_ids(page2)) == 2


def test_image_upload_search(client, stored):
    upload = SimpleUploadedFile("q.png", varied_picture(3), content_type="image/png")
    response = client.post("/", {"image": upload, "top_k": 1, "search": "image"})
    assert response.status_code == 200
    assert result_ids(response) == [stored[3].pk]


def test_empty_query_and_unreadable_upload_are_explained(client, stored):
    empty = client.get("/", {"q": "", "search": "text"})
    assert empty.status_code == 400 and b"Give exactly one of" in empty.content
    bad = client.post("/", {"image": SimpleUploadedFile("x.jpg", b"not a picture"), "search": "image"})
    assert bad.status_code == 400 and b"could not be read" in bad.content


def test_no_match_has_an_empty_state(client, stored):
    response = client.get("/", {"q": "anything", "cities": "Paris", "min_width": 5000})
    assert response.status_code == 200 and b"No images match" in response.content


def test_detail_page_shows_metadata_and_neighbours(client, stored):
    image = stored[0]
    response = client.get(f"/images/{image.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "page0.png" in content and f"{image.width} × {image.height}" in content
    neighbours = result_ids(response)
    assert len(neighbours) == 7 and image.pk not in neighbours
    assert f"/?similar_to={image.pk}" in content
    assert client.get("/images/999999/").status_code == 404


def test_more_like_this_link_works(client, stored):
    response = client.get("/", {"similar_to": stored[2].pk})
    assert response.status_code == 200 and stored[2].pk not in result_ids(response)
    assert len(result_ids(response)) == 7


def test_stored_files_are_served(client, stored):
    response = client.get(stored[0].thumbnail_url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:2] == b"\xff\xd8"  # a JPEG thumbnail


def stored_city(stored, pk):
    return next(image.city for image in stored if image.pk == pk)
