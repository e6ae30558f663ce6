"""The search page in a real headless Chromium (Debian's, driven by playwright)."""

import os
from pathlib import Path

import pytest

from tests.browsers import CHROMIUM, chromium_page
from tests.conftest import ingest_in_cities, varied_picture
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
    with chromium_page() as page:
        yield page


def shown_ids(page) -> list[int]:
    return [int(card.get_attribute("data-image-id")) for card in page.locator("li.card").all()]


def test_type_a_query_filter_by_city_and_search_by_picture(stored, live_server, browser_page, tmp_path):
    images, page = stored, browser_page

    page.goto(live_server.url + "/")
    page.fill("input[name=q]", "snow-covered peaks in the sun")
    page.click("button[value=text]")
    page.wait_for_selector("li.card")
    assert sorted(shown_ids(page)) == sorted(image.pk for image in images)

    page.click("details.filters summary")  # the filters fold away after a search: results first
    page.select_option("select[name=cities]", ["Paris"])
    page.click("button[value=text]")
    page.wait_for_load_state()
    assert sorted(shown_ids(page)) == sorted(image.pk for image in images[:3])
    assert "cities=Paris" in page.url
    assert page.locator("li.card .city").all_inner_texts() == ["Paris"] * 3

    query_file = tmp_path / "query.png"
    query_file.write_bytes(varied_picture(5))
    page.click("details.filters summary")
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



def test_more_like_this_then_typed_words_search_the_words(stored, live_server, browser_page):
    images, page = stored, browser_page
    page.goto(f"{live_server.url}/?similar_to={images[1].pk}")
    page.wait_for_selector("li.card")
    assert images[1].pk not in shown_ids(page)
    reference = page.locator(".query-context figure a").first
    assert reference.get_attribute("href") == f"/images/{images[1].pk}/"  # the picture searched with, linked

    page.fill("input[name=q]", "a bus in the rain")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("h1:has-text('a bus in the rain')")
    assert "Give exactly one of" not in page.content()
    assert sorted(shown_ids(page)) == sorted(image.pk for image in images)
    # The card shows the whole size, unclipped.
    size = page.locator("li.card .size").first
    assert size.inner_text() == "64×48"
    assert size.evaluate("el => el.scrollWidth <= el.clientWidth && el.getBoundingClientRect().right"
                         " <= el.closest('li').getBoundingClientRect().right")


def test_on_a_phone_results_come_first_and_the_keyboard_reaches_them_fast(stored, live_server, browser_page):
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/?q=snow-covered+peaks&cities=Lima")
    first = page.locator("li.card").first
    box = first.bounding_box()
    assert box["y"] + 60 < 844, box  # the first result starts on the first screen
    assert not page.locator("details.filters").evaluate("el => el.open")
    page.click("details.filters summary")  # the toggle opens the filters, also without JavaScript
    assert page.locator("select[name=cities]").is_visible()

    # Keyboard: the skip link comes first, then the first result is one Tab away.
    page.goto(f"{live_server.url}/?q=snow-covered+peaks")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").strip() == "Skip to results"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('li.card')?.dataset.imageId")
    assert focused == str(shown_ids(page)[0])
    assert outline != "none" and page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"


AXE = Path(__file__).resolve().parent / "js" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.mark.slow
@pytest.mark.skipif(not AXE.exists(), reason="needs axe-core: cd tests/js && npm ci (bin/test does this)")
def test_axe_finds_no_serious_or_critical_violations_on_the_main_pages(stored, live_server):
    from playwright.sync_api import sync_playwright

    from tests.conftest import make_user

    make_user("axe", "add_importjob", "view_importjob", password="axe-pw-for-tests")
    detail = f"/images/{stored[0].pk}/"
    anonymous = {"search": "/?q=a+red+bus", "results": f"/?similar_to={stored[1].pk}", "detail": detail,
                 "browse": "/?cities=Lima&sort=taken", "start": "/", "invalid": "/?top_k=50", "missing": "/nowhere/",
                 "login": "/accounts/login/"}
    problems = []
    with sync_playwright() as playwright:  # one browser for every page: starting one costs seconds
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_context(bypass_csp=True).new_page()  # axe is injected as an inline script
        page.set_default_timeout(30_000)

        def check(name: str, path: str):
            page.goto(live_server.url + path)
            page.add_script_tag(path=str(AXE))
            violations = page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
            problems.extend(f"{name} {path}: {v['id']} ({v['impact']}): {v['help']} at {v['nodes'][0]['target']}"
                            for v in violations if v["impact"] in ("serious", "critical"))

        for name, path in anonymous.items():
            check(name, path)
        page.fill("input[name=username]", "axe")
        page.fill("input[name=password]", "axe-pw-for-tests")
        page.click("form.login button[type=submit]")
        page.wait_for_load_state()
        check("import", "/imports/")
        page.set_viewport_size({"width": 390, "height": 844})
        check("results on a phone", "/?q=a+red+bus")
        browser.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def dropper():
    from tests.conftest import make_user

    return make_user("dropper", "add_importjob", "view_importjob", password="drop-pw-for-tests")


def test_drop_files_on_the_import_page_and_the_upload_goes_with_progress(dropper, live_server, browser_page):
    import base64

    page = browser_page
    page.goto(live_server.url + "/accounts/login/?next=/imports/")
    page.fill("input[name=username]", "dropper")
    page.fill("input[name=password]", "drop-pw-for-tests")
    page.click("form.login button[type=submit]")
    page.wait_for_selector("form.import .drop-zone")
    assert not page.locator(".upload-progress").is_visible()  # shown once an upload starts
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.querySelector(".drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
        const send = XMLHttpRequest.prototype.send;  // note that the upload went by XHR, with progress events
        XMLHttpRequest.prototype.send = function (body) {
            this.upload.addEventListener("progress", () => sessionStorage.setItem("progress", "seen"));
            sessionStorage.setItem("xhr", "sent");
            return send.call(this, body);
        };
    }""", base64.b64encode(varied_picture(4, (300, 200))).decode())
    assert page.evaluate("document.querySelector('input[name=files]').files[0].name") == "dropped.png"
    page.click("form.import button[type=submit]")
    page.wait_for_url(f"{live_server.url}/imports/*/")
    assert page.evaluate("sessionStorage.getItem('xhr')") == "sent"
    assert page.evaluate("sessionStorage.getItem('progress')") == "seen"
    assert page.locator("h1").inner_text() == "Import"
