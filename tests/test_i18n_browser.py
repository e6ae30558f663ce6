"""Chinese pages in a real headless Chromium: a zh-CN browser gets Chinese, the header switch
changes the language and the choice sticks (Debian's chromium, driven by playwright)."""

import os

import pytest

from tests.browsers import CHROMIUM, chromium_page
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # playwright's sync API runs an event loop here


@pytest.fixture
def chinese_page():
    with chromium_page(locale="zh-CN") as page:  # sends Accept-Language: zh-CN
        yield page


@pytest.mark.slow
def test_a_chinese_browser_gets_chinese_pages_and_the_switch_changes_the_language(live_server, chinese_page):
    page = chinese_page
    page.goto(live_server.url + "/accounts/login/?next=/")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.locator("h1").inner_text() == "登录"
    assert page.locator("label[for=id_username]").inner_text().startswith("用户名")

    page.click(".language-switch button[value=en]")
    page.wait_for_url("**/accounts/login/?next=/")  # back on the same page
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text() == "Log in"

    page.goto(live_server.url + "/")  # the choice is kept (a cookie) over the browser's language
    assert page.locator("html").get_attribute("lang") == "en"
    page.click(".language-switch button[value=zh-hans]")
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert page.locator("label[for=id_q]").inner_text().startswith("描述图片")
