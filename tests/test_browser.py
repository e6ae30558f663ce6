"""The search page in a real headless Chromium (Debian's, driven by playwright)."""

import os
from pathlib import Path

import pytest

from tests.conftest import ingest_in_cities, varied_picture

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# Playwright's sync API runs an event loop in this thread. The test touches the
# database only before the browser starts (see ``stored``): a connection opened
# inside playwright's context would outlive the test database.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def stored():
    return ingest_in_cities("b", ["Paris"] * 3 + ["Lima"] * 5)


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def shown_ids(page) -> list[int]:
    return [int(card.get_attribute("data-image-id")) for card in page.locator("li.card").all()]


def test_type_a_query_filter_by_city_and_search_by_picture(stored, live_server, browser_page, tmp_path):
    images, page = stored, browser_page

    page.goto(live_server.url + "/")
    page.fill("input[name=q]", "snow-covered peaks in the sun")
    page.click("button[value=text]")
    page.wait_for_selector("li.card")
    assert sorted(shown_ids(page)) == sorted(image.pk for image in images)

    page.select_option("select[name=cities]", ["Paris"])
    page.click("button[value=text]")
    page.wait_for_load_state()
    assert sorted(shown_ids(page)) == sorted(image.pk for image in images[:3])
    assert "cities=Paris" in page.url
    assert page.locator("li.card .city").all_inner_texts() == ["Paris"] * 3

    query_file = tmp_path / "query.png"
    query_file.write_bytes(varied_picture(5))
    page.select_option("select[name=cities]", [])
    page.set_input_files("input[name=image]", str(query_file))
    page.fill("input[name=q]", "")
    page.click("button[value=image]")
    page.wait_for_selector("li.card")
    assert shown_ids(page)[0] == images[5].pk
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    page.click(f"li.card[data-image-id='{images[5].pk}'] a >> nth=0")
    page.wait_for_selector("h2:has-text('Nearest neighbours')")
    assert "b5.png" in page.content()

