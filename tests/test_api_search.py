"""The JSON API: search, image list/detail/similar, one error format, never a 500 for bad input."""

import base64

import pytest
from rest_framework.test import APIClient

from tests.conftest import ingest_in_cities, make_image_bytes, shared_pictures, varied_picture

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(writer):
    client = APIClient()
    client.force_authenticate(writer)  # reading needs a login unless IMAGESEARCH_PUBLIC_READ
    return client

media_root, stored_ids, stored = shared_pictures(lambda: ingest_in_cities(
    "api", ["Paris"] * 4 + ["Lima"] * 8, size=lambda i: (64, 48) if i % 2 else (40, 80)))


def assert_error(response, status, field=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field:
        assert field in error["fields"], error
    return error


def test_text_search(api, stored):
    response = api.post("/api/search/", {"q": "snow-covered peaks in the sun", "top_k": 3}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 3 and body["page"] == 1 and body["has_next"] is True
    first = body["results"][0]
    assert set(first) >= {"id", "score", "width", "height", "city", "image_url", "thumbnail_url", "taken_at"}
    assert first["thumbnail_url"].startswith("http://testserver/media/thumbnails/")
    assert body["timing"]["encode_ms"] >= 0 and body["timing"]["database_ms"] >= 0


def test_filters_apply_inside_the_search(api, stored):
    response = api.post("/api/search/", {"q": "一只小狗", "cities": ["Paris"], "orientation": "portrait",
                                         "top_k": 100}, format="json")
    results = response.json()["results"]
    assert results and all(r["city"] == "Paris" and r["height"] > r["width"] for r in results)
    assert len(results) == 2


def test_search_by_uploaded_image_multipart_and_base64(api, stored):
    picture = varied_picture(5, (40, 80) if 5 % 2 == 0 else (64, 48))
    multipart = api.post("/api/search/", {"image": _upload(picture), "top_k": 1}, format="multipart")
    assert multipart.status_code == 200
    assert multipart.json()["results"][0]["id"] == stored[5].pk
    encoded = api.post("/api/search/", {"image_base64": base64.b64encode(picture).decode(), "top_k": 1},
                       format="json")
    assert encoded.json()["results"][0]["id"] == stored[5].pk


def test_similar_endpoint(api, stored):
    response = api.get(f"/api/images/{stored[0].pk}/similar/", {"top_k": 4, "cities": ["Lima"]})
    assert response.status_code == 200
    ids = [r["id"] for r in response.json()["results"]]
    assert len(ids) == 4 and stored[0].pk not in ids
    assert all(r["city"] == "Lima" for r in response.json()["results"])
    assert_error(api.get("/api/images/999999/similar/"), 404)


def test_image_list_detail_and_filters(api, stored, django_assert_max_num_queries, settings):
    # The list's own queries (count, page): the search budget's counter (the shared cache) aside.
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": None}
    with django_assert_max_num_queries(3):
        response = api.get("/api/images/", {"cities": "Paris", "page_size": 2})
    body = response.json()
    assert body["count"] == 4 and len(body["results"]) == 2 and body["next"]
    detail = api.get(f"/api/images/{stored[3].pk}/").json()
    assert detail["id"] == stored[3].pk and detail["original_name"] == "api3.png"
    assert_error(api.get("/api/images/999999/"), 404)
    assert_error(api.get("/api/images/", {"min_width": "wide"}), 400, "min_width")


@pytest.mark.parametrize("payload, field", [
    ({}, "non_field_errors"),
    ({"q": "x", "similar_to": 1}, "non_field_errors"),
    ({"q": "x", "top_k": 0}, "top_k"),
    ({"q": "x", "top_k": 101}, "top_k"),
    ({"q": "x", "top_k": "many"}, "top_k"),
    ({"q": "x", "page": -1}, "page"),
    ({"q": "x", "top_k": 100, "page": 4}, "non_field_errors"),  # past the 300-deep ranking
    ({"q": "x", "min_score": 2}, "min_score"),
    ({"q": "x", "orientation": "diagonal"}, "orientation"),
    ({"q": "x", "taken_from": "yesterday"}, "taken_from"),
    ({"q": "x", "min_width": 10, "max_width": 5}, "non_field_errors"),
    ({"q": "x", "cities": "Paris"}, "cities"),
    ({"image_base64": "%%%not base64"}, "non_field_errors"),
    ({"image_base64": base64.b64encode(b"plain text, not a picture").decode()}, "non_field_errors"),
    ({"q": "x" * 501}, "q"),
])
def test_bad_input_gets_a_4xx_with_field_messages(api, payload, field):
    assert_error(api.post("/api/search/", payload, format="json"), 400, field)


def test_unreadable_and_truncated_uploads(api):
    truncated = make_image_bytes(size=(200, 200))[:300]
    assert_error(api.post("/api/search/", {"image": _upload(truncated)}, format="multipart"), 400)
    assert_error(api.post("/api/search/", {"image": _upload(b"")}, format="multipart"), 400)


def test_malformed_json_and_wrong_method(api):
    response = api.generic("POST", "/api/search/", "{not json", content_type="application/json")
    assert_error(response, 400)
    assert_error(api.get("/api/search/"), 405)


def test_a_missing_image_is_404_on_every_endpoint(api, stored):
    missing = max(image.pk for image in stored) + 1000
    for response in (api.post("/api/search/", {"similar_to": missing}, format="json"),
                     api.post("/api/search/", {"similar_to": str(missing)}, format="multipart"),
                     api.get(f"/api/images/{missing}/similar/"), api.get(f"/api/images/{missing}/")):
        assert assert_error(response, 404)["code"] == "not_found"
    assert "does not exist" in api.post("/api/search/", {"similar_to": missing}, format="json").json()["error"]["message"]


def _upload(data: bytes, name: str = "query.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")
