import re

import pytest

from tests.conftest import ingest_in_cities

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored():
    return ingest_in_cities("adm", ["Paris"] * 2 + ["Lima"] * 4)


def listed_ids(response) -> list[int]:
    return [int(pk) for pk in re.findall(r'/admin/catalog/image/(\d+)/change/', response.content.decode())]


def test_changelist_shows_thumbnails_filters_and_name_search(admin_client, stored, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        response = admin_client.get("/admin/catalog/image/")
    assert response.status_code == 200
    assert response.content.decode().count("/media/thumbnails/") >= 6
    paris = admin_client.get("/admin/catalog/image/", {"city": "Paris"})
    assert sorted(set(listed_ids(paris))) == sorted(image.pk for image in stored[:2])
    by_name = admin_client.get("/admin/catalog/image/", {"q": "adm3"})
    assert set(listed_ids(by_name)) == {stored[3].pk}


def test_admin_search_by_description_uses_the_site_search_and_keeps_filters(admin_client, stored):
    from catalog.search import SearchParams, images_search

    expected = [hit.image.pk for hit in images_search(params=SearchParams(text="red bus", top_k=100)).hits]
    response = admin_client.get("/admin/catalog/image/", {"q": "~ red bus"})
    assert response.status_code == 200
    ranked = list(dict.fromkeys(listed_ids(response)))
    assert ranked == expected
    lima = admin_client.get("/admin/catalog/image/", {"q": "~ red bus", "city": "Lima"})
    assert list(dict.fromkeys(listed_ids(lima))) == [pk for pk in expected if pk not in
                                                      {stored[0].pk, stored[1].pk}]


def test_image_files_cannot_be_edited_or_added_by_hand(admin_client, stored):
    change = admin_client.get(f"/admin/catalog/image/{stored[0].pk}/change/").content.decode()
    assert 'type="file"' not in change
    assert admin_client.get("/admin/catalog/image/add/").status_code == 403
