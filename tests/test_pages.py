"""Server-rendered pages: search, browse, query context, detail, empty states and errors (no JavaScript needed)."""

import re
from datetime import UTC, datetime

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import Image
from tests.conftest import ingest_in_cities, make_user, shared_pictures, varied_picture

pytestmark = pytest.mark.django_db

media_root, stored_ids, stored = shared_pictures(lambda: ingest_in_cities("page", ["Paris", "Hangzhou"] * 4))


def result_ids(response) -> list[int]:
    return [int(x) for x in re.findall(r'data-image-id="(\d+)"', response.content.decode())]


def field_block(response, name: str) -> str:
    """The markup of one field's block in the search form (label, control, message)."""
    content = response.content.decode()
    match = re.search(rf'<div class="field[^"]*">(?:(?!</div>).)*?name="{name}"(?:(?!</div>).)*</div>', content,
                      re.DOTALL)
    assert match, f"no field {name}"
    return match.group(0)


def test_bare_page_shows_the_form_and_the_collection_newest_first(client, stored):
    response = client.get("/")
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="q"' in content and 'type="file"' in content and "autofocus" in content
    assert result_ids(response) == sorted((image.pk for image in stored), reverse=True)
    assert "8 images" in content and "All images</h1>" in content
    assert not re.search(r'<details class="filters"[^>]* open', content)  # results first: filters folded


def test_filters_alone_browse_with_a_true_count_and_pages(client, stored):
    hangzhou = sorted((image.pk for image in stored if image.city == "Hangzhou"), reverse=True)
    first = client.get("/", {"cities": "Hangzhou", "top_k": 3})
    assert first.status_code == 200
    assert result_ids(first) == hangzhou[:3]
    content = first.content.decode()
    assert "4 images" in content and "page 1 of 2" in content and "Images matching the filters" in content
    assert 'rel="next" href="?cities=Hangzhou&amp;top_k=3&amp;page=2"' in content
    second = client.get("/", {"cities": "Hangzhou", "top_k": 3, "page": 2})
    assert result_ids(second) == hangzhou[3:] and 'rel="next"' not in second.content.decode()


def test_browse_count_is_the_grouped_total_not_the_page_size(rf):
    from django.template.loader import render_to_string

    from catalog.forms import SearchForm
    from catalog.search import BrowseResults, SearchHit

    form = SearchForm({"top_k": "12"})
    assert form.is_valid()
    hit = SearchHit(image=Image(pk=1, width=800, height=600, file="images/x.jpg"), score=None)
    results = BrowseResults(hits=[hit], count=1234, page=1, per_page=12)
    html = render_to_string("catalog/search.html", {"form": form, "results": results, "kind": "browse"},
                            request=rf.get("/"))
    assert "1,234 images" in html and "page 1 of 103" in html and "800×600" in html


def test_browse_counts_up_to_a_limit_and_pages_on_past_it(client, stored, monkeypatch):
    from catalog import search

    monkeypatch.setattr(search, "BROWSE_COUNT_LIMIT", 2)  # a collection of millions, in small
    hangzhou = sorted((image.pk for image in stored if image.city == "Hangzhou"), reverse=True)
    pages = [client.get("/", {"cities": "Hangzhou", "top_k": 3, "page": page}) for page in (1, 2)]
    first, second = (page.content.decode() for page in pages)
    assert "More than 2 images" in first and "page 1" in first and "4 images" not in first
    assert 'rel="next"' in first and 'rel="next"' not in second  # the next page is known by reading one more row
    assert result_ids(pages[0]) + result_ids(pages[1]) == hangzhou


def test_browse_by_date_taken_puts_undated_images_last(client, stored):
    dated = stored[:3]
    for day, image in zip((5, 20, 12), dated):
        image.taken_at = datetime(2024, 3, day, tzinfo=UTC)
    Image.objects.bulk_update(dated, ["taken_at"])
    ids = result_ids(client.get("/", {"sort": "taken", "top_k": 30}))
    assert ids[:3] == [dated[1].pk, dated[2].pk, dated[0].pk]
    assert sorted(ids[3:]) == sorted(image.pk for image in stored[3:])


def test_a_page_past_the_end_says_so_and_links_back(client, stored):
    for query in ({"cities": "Paris", "page": 9}, {"q": "a dog", "top_k": 10, "page": 5}):
        response = client.get("/", query)
        assert response.status_code == 200
        content = response.content.decode()
        assert "is past the last result" in content and result_ids(response) == []
        back = re.search(r'href="\?([^"]*)">Back to page 1', content).group(1)
        assert "page=" not in back and back


def test_text_search_with_city_filter_and_pages(client, stored):
    response = client.get("/", {"q": "草地上的小狗", "cities": "Hangzhou", "top_k": 2})
    assert response.status_code == 200
    ids = result_ids(response)
    assert len(ids) == 2 and all(stored_city(stored, pk) == "Hangzhou" for pk in ids)
    content = response.content.decode()
    assert 'rel="next"' in content and "Closest matches 1–2" in content and "Results for “草地上的小狗”" in content
    page2 = client.get("/", {"q": "草地上的小狗", "cities": "Hangzhou", "top_k": 2, "page": 2})
    assert set(result_ids(page2)).isdisjoint(ids) and len(result_ids(page2)) == 2
    assert "Closest matches 3–4" in page2.content.decode()


def test_more_like_this_shows_the_reference_and_words_typed_then_search_the_words(client, stored):
    reference = stored[2]
    similar = client.get("/", {"similar_to": reference.pk})
    assert similar.status_code == 200 and reference.pk not in result_ids(similar)
    assert len(result_ids(similar)) == 7
    content = similar.content.decode()
    assert f'href="/images/{reference.pk}/"' in content and "page2.png" in content  # the reference, linked
    assert f'name="similar_to" value="{reference.pk}"' in content  # kept while the filters change
    # Typing words on that page and pressing Enter sends the first button (search=text) with the hidden field.
    words = client.get("/", {"similar_to": reference.pk, "q": "a dog", "search": "text"})
    assert words.status_code == 200, words.content.decode()[-2000:]
    assert "Results for “a dog”" in words.content.decode() and len(result_ids(words)) == 8
    assert 'name="similar_to"' not in words.content.decode()  # the words replaced the "more like this"
    # Changing a filter keeps the reference.
    narrowed = client.get("/", {"similar_to": reference.pk, "q": "", "cities": "Paris", "search": "text"})
    assert narrowed.status_code == 200 and "More like this</h1>" in narrowed.content.decode()
    assert all(stored_city(stored, pk) == "Paris" for pk in result_ids(narrowed))


def test_the_detail_pages_region_form_searches_a_region_of_the_stored_picture(client, stored):
    # templates/catalog/detail.html sends similar_to, the four region fields and search=image.
    region = {"region_x": 0, "region_y": 0, "region_w": 0.5, "region_h": 0.5}
    response = client.get("/", {"similar_to": stored[4].pk, "search": "image", **region})
    assert response.status_code == 200, response.content.decode()[-1500:]
    assert "More like this region</h1>" in response.content.decode() and len(result_ids(response)) == 7


def test_image_upload_search_shows_the_picture_searched_with(client, stored):
    upload = SimpleUploadedFile("my-query.png", varied_picture(3), content_type="image/png")
    response = client.post("/", {"image": upload, "top_k": 1, "search": "image", "similar_to": stored[0].pk,
                                 "q": "ignored words"})
    assert response.status_code == 200
    assert result_ids(response) == [stored[3].pk]
    content = response.content.decode()
    assert 'src="data:image/jpeg;base64,' in content and "my-query.png" in content
    assert "Results for your picture" in content


@pytest.mark.parametrize(("query", "field", "message"), [
    ({"top_k": "50"}, "top_k", "Choose from 1 to 30 per page."),
    ({"q": "cat", "orientation": "diagonal"}, "orientation", "Choose landscape, portrait or square."),
    ({"min_width": "900", "max_width": "100"}, "max_width", "below the lower bound"),
    ({"min_score": "2"}, "min_score", "less than or equal to 1"),
])
def test_invalid_parameters_are_400_with_the_message_next_to_the_field(client, query, field, message):
    response = client.get("/", query)
    assert response.status_code == 400
    block = field_block(response, field)
    assert message in block and 'aria-invalid="true"' in block and f'aria-describedby="id_{field}_error"' in block
    assert re.search(r'<details class="filters"[^>]* open', response.content.decode())  # unfolded to show it


def test_picture_button_without_a_picture_and_unreadable_uploads_are_explained(client, stored):
    missing = client.post("/", {"search": "image"})
    assert missing.status_code == 400 and "Choose a picture to search with." in field_block(missing, "image")
    bad = client.post("/", {"image": SimpleUploadedFile("x.jpg", b"not a picture"), "search": "image"})
    assert bad.status_code == 400 and "could not be read" in field_block(bad, "image")


def test_no_match_has_an_empty_state(client, stored):
    response = client.get("/", {"q": "anything", "cities": "Paris", "min_width": 5000})
    assert response.status_code == 200 and b"No images match" in response.content
    browse = client.get("/", {"cities": "Nowhere"})
    assert browse.status_code == 200 and b"No images match these filters" in browse.content


def test_unknown_addresses_get_the_sites_404_page(client, stored):
    for path in ("/no/such/page/", "/images/999999/"):
        response = client.get(path)
        assert response.status_code == 404
        content = response.content.decode()
        assert "Page not found</h1>" in content and 'class="site-header"' in content and 'role="search"' in content


def test_pages_have_landmarks_one_heading_a_skip_link_and_labelled_controls(client, stored):
    client.force_login(make_user("looker", "add_importjob", "view_importjob"))
    pages = {"/": "#results", "/?q=dog": "#results", f"/?similar_to={stored[0].pk}": "#results",
             "/?top_k=99": "#main", f"/images/{stored[0].pk}/": "#main", "/imports/": "#main", "/nothing/": "#main"}
    for path, skip_target in pages.items():
        content = client.get(path).content.decode()
        assert len(re.findall(r"<h1[ >]", content)) == 1, path
        for landmark in ("<header", "<nav", "<main", "<footer"):
            assert landmark in content, (path, landmark)
        assert re.search(f'<a class="skip-link" href="{skip_target}"', content), path
        assert_every_control_is_labelled(content, path)
    client.logout()
    login = client.get("/accounts/login/").content.decode()
    assert len(re.findall(r"<h1[ >]", login)) == 1
    assert_every_control_is_labelled(login, "login")


def assert_every_control_is_labelled(content: str, where: str):
    labels = set(re.findall(r'<label[^>]* for="([^"]+)"', content))
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", content):
        if re.search(r'type="(hidden|submit)"', tag) or " disabled" in tag:
            continue
        control_id = re.search(r'\sid="([^"]+)"', tag)
        assert "aria-label=" in tag or (control_id and control_id.group(1) in labels), (where, tag)


def test_detail_page_shows_metadata_and_neighbours(client, stored):
    image = stored[0]
    response = client.get(f"/images/{image.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "page0.png" in content and f"{image.width} × {image.height}" in content
    neighbours = result_ids(response)
    assert len(neighbours) == 7 and image.pk not in neighbours
    assert f"/?similar_to={image.pk}" in content


def test_result_cards_show_score_and_full_size(client, stored):
    content = client.get("/", {"q": "a dog", "top_k": 1}).content.decode()
    assert re.search(r'<span class="score"[^>]*>-?\d\.\d{3}</span>', content)
    assert '<span class="size">64×48</span>' in content


def test_stored_files_are_served(client, stored):
    response = client.get(stored[0].thumbnail_url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:2] == b"\xff\xd8"  # a JPEG thumbnail


def stored_city(stored, pk):
    return next(image.city for image in stored if image.pk == pk)


def test_a_server_error_page_is_in_the_sites_style_and_survives_a_broken_template(monkeypatch):
    from django.test import RequestFactory

    from catalog import request_input

    page = request_input.server_error(RequestFactory().get("/"))
    assert page.status_code == 500
    assert "Server error</h1>" in page.content.decode() and "site.css" in page.content.decode()

    def broken(*args, **kwargs):
        raise RuntimeError("the templates are what failed")

    monkeypatch.setattr(request_input, "render_to_string", broken)
    plain = request_input.server_error(RequestFactory().get("/"))
    assert plain.status_code == 500 and "Server error" in plain.content.decode()
