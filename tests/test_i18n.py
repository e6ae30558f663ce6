"""Chinese and English: the language follows Accept-Language (or the switch's cookie) on pages,
error pages and API messages; the Simplified Chinese catalogue is complete and compiled."""

from __future__ import annotations

import ast
import gettext
import re
from datetime import date
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import translation

from tests.conftest import make_user

pytestmark = pytest.mark.django_db

ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9,en;q=0.5"}
PO_FILE = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"


@pytest.fixture(autouse=True)
def back_to_default_language():
    # A request activates its language for the thread; later tests in it must not inherit Chinese.
    yield
    translation.deactivate()


def test_search_page_is_english_without_accept_language(client):
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200 and response["Content-Language"] == "en"
    assert '<html lang="en">' in html and "Describe the picture" in html and "描述图片" not in html


def test_search_page_follows_accept_language_chinese(client):
    response = client.get("/", **ZH)
    html = response.content.decode()
    assert response.status_code == 200 and response["Content-Language"] == "zh-hans"
    assert '<html lang="zh-hans">' in html
    assert "描述图片" in html and "Describe the picture" not in html
    assert "Accept-Language" in response["Vary"]  # caches must keep the two languages apart


def test_date_fields_keep_iso_dates_in_chinese(client):
    # <input type="date"> takes only YYYY-MM-DD; zh-hans' own date format (2024/01/05) would empty it.
    html = client.get("/", {"taken_from": "2024-01-05", "taken_to": "2024-02-01"}, **ZH).content.decode()
    assert 'value="2024-01-05"' in re.search(r'<input[^>]*name="taken_from"[^>]*>', html).group(0)
    from catalog.forms import SearchForm

    with translation.override("zh-hans"):
        unbound = SearchForm(initial={"taken_from": date(2024, 1, 5)})
        assert 'value="2024-01-05"' in str(unbound["taken_from"])


def test_traditional_chinese_browsers_get_simplified_and_others_english(client):
    assert client.get("/", HTTP_ACCEPT_LANGUAGE="zh-TW")["Content-Language"] == "zh-hans"
    assert client.get("/", HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")["Content-Language"] == "en"


def error_texts(html: str) -> list[str]:
    return [text.strip() for text in re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]+)<', html) if text.strip()]


def test_search_error_messages_are_chinese(client):
    params = {"q": "狗", "min_width": 500, "max_width": 10}
    chinese = client.get("/", params, **ZH)
    assert chinese.status_code == 400
    messages = error_texts(chinese.content.decode())
    assert messages and all(re.search(r"[\u4e00-\u9fff]", text) for text in messages), messages
    english = error_texts(client.get("/", params).content.decode())
    assert english and not any(re.search(r"[\u4e00-\u9fff]", text) for text in english), english


def test_an_unreadable_query_picture_is_explained_in_chinese(client):
    upload = SimpleUploadedFile("x.jpg", b"not a picture", content_type="image/jpeg")
    response = client.post("/", {"image": upload, "search": "image"}, **ZH)
    assert response.status_code == 400
    assert "无法读取查询图片：不是图片（无法识别的格式）。" in response.content.decode()


def test_error_pages_are_chinese_including_refusals_made_before_the_locale_middleware(client):
    missing = client.get("/no-such-page/", **ZH)
    heading = re.search(r"<h1>([^<]+)</h1>", missing.content.decode()).group(1)
    assert missing.status_code == 404 and re.search(r"[\u4e00-\u9fff]", heading), heading
    # RequestInputMiddleware refuses this ahead of LocaleMiddleware; it picks the language itself.
    nul = client.get("/?q=a%00b", **ZH)
    assert nul.status_code == 400 and "查询字符串包含 NUL 字符。" in nul.content.decode()
    assert "The query string contains a NUL character." in client.get("/?q=a%00b").content.decode()


def test_a_refused_page_says_why_in_chinese(client):
    client.force_login(make_user("staff-reader", is_staff=True))
    imports = client.get("/imports/", **ZH)  # the view's own reason
    assert imports.status_code == 403 and "您的账户无权发起导入。" in imports.content.decode()
    admin_add = client.get("/admin/catalog/image/add/", **ZH)  # no reason given: the general one
    assert admin_add.status_code == 403 and "您的账户无权打开此页面。" in admin_add.content.decode()
    assert "Your account may not open this page." in client.get("/admin/catalog/image/add/").content.decode()


def test_login_page_is_chinese_with_djangos_own_labels(client):
    response = client.get("/accounts/login/", **ZH)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<h1>登录</h1>" in html and "账户由管理员创建" in html
    assert "用户名" in html  # the username label comes from Django's own zh_Hans catalogue
    assert "<h1>Log in</h1>" in client.get("/accounts/login/").content.decode()


def test_admin_names_models_and_columns_in_chinese(admin_client):
    from catalog.models import Image

    Image.objects.create(file="images/a.jpg", sha256="a" * 64, width=4, height=3, source=Image.Source.UPLOAD)
    index = admin_client.get("/admin/", **ZH).content.decode()
    assert "图片库" in index and "导入任务" in index and "向量空间" in index
    images = admin_client.get("/admin/catalog/image/", **ZH).content.decode()
    assert "原文件名" in images and "拍摄时间" in images


def test_every_page_has_the_language_switch(client):
    for url in ("/", "/accounts/login/", "/no-such-page/"):
        html = client.get(url).content.decode()
        assert 'action="/i18n/setlang/"' in html, url
        assert re.search(r'<button[^>]*name="language" value="zh-hans"[^>]*>简体中文</button>', html), url
        assert re.search(r'<button[^>]*value="en"[^>]*aria-current="true"[^>]*>English</button>', html), url


def test_the_switch_sets_the_language_over_accept_language(client):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/accounts/login/"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    cookie = response.cookies[settings.LANGUAGE_COOKIE_NAME]
    assert cookie.value == "zh-hans" and cookie["httponly"] and cookie["samesite"] == "Lax"
    chinese = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "<h1>登录</h1>" in chinese
    assert re.search(r'value="zh-hans"[^>]*aria-current="true"', chinese)
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert "<h1>Log in</h1>" in client.get("/accounts/login/", **ZH).content.decode()


def test_api_errors_follow_accept_language_and_keep_their_codes(client):
    english = client.get("/api/images/", {"min_width": 500, "max_width": 10}).json()["error"]
    chinese = client.get("/api/images/", {"min_width": 500, "max_width": 10}, **ZH).json()["error"]
    assert english["code"] == chinese["code"] == "invalid"
    assert english["message"] == "The width range is empty: minimum is above maximum."
    assert chinese["message"] == "宽度范围为空：最小值大于最大值。"
    unknown = client.get("/api/images/", {"city": "Paris"}, **ZH).json()["error"]
    assert unknown["fields"]["city"][0].startswith('未知字段 "city"。可用字段：')
    missing = client.get("/api/no-such-endpoint/", **ZH).json()["error"]
    assert missing["code"] == "not_found" and missing["message"] == "此地址没有 API 端点；请参阅 /api/schema/。"


# --------------------------------------------------------------------------
# the catalogue itself


BRAND_WORDS = {"imagesearch", "API"}  # names, the same in every language


def untranslated_texts(template: str) -> list[str]:
    """Text and labelling attributes of a template that no translate/blocktranslate tag covers."""
    text = re.sub(r"\{%\s*blocktranslate\b.*?\{%\s*endblocktranslate\s*%\}", " ", template, flags=re.DOTALL)
    text = re.sub(r"\{#.*?#\}|\{%\s*comment\s*%\}.*?\{%\s*endcomment\s*%\}", " ", text, flags=re.DOTALL)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.DOTALL)
    text = re.sub(r"\{%.*?%\}|\{\{.*?\}\}", " ", text, flags=re.DOTALL)
    found = re.findall(r">([^<>]+)<", text) + re.findall(r'\s(?:alt|title|placeholder|aria-label)="([^"]+)"', text)
    return [t.strip() for t in found if set(re.findall(r"[A-Za-z]{2,}", t)) - BRAND_WORDS]


def test_site_templates_leave_no_english_text_untranslated():
    templates = Path(settings.BASE_DIR) / "templates"
    assert untranslated_texts('<p>Plain words</p><a title="{% translate "ok" %}">{{ x }}</a>') == ["Plain words"]
    found = {str(path.relative_to(templates)): texts for path in sorted(templates.rglob("*.html"))
             if (texts := untranslated_texts(path.read_text(encoding="utf-8")))}
    assert found == {}


def read_po(path: Path) -> list[dict]:
    """Entries of a .po file as {"flags", "msgctxt", "msgid", "msgid_plural", "msgstr": {n: text}} (tiny
    parser for the subset xgettext writes: no polib in the requirements for one test)."""
    entries, entry, key = [], None, None
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if entry is not None:
                entries.append(entry)
            entry, key = None, None
            continue
        if line.startswith("#~"):  # obsolete entries are not used
            continue
        entry = entry if entry is not None else {"flags": set(), "msgctxt": None, "msgid": "",
                                                  "msgid_plural": None, "msgstr": {}}
        if line.startswith("#,"):
            entry["flags"].update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            text = ast.literal_eval(line)
            if isinstance(key, int):
                entry["msgstr"][key] += text
            else:
                entry[key] += text
        else:
            name, _, rest = line.partition(" ")
            match = re.fullmatch(r"msgstr\[(\d+)\]", name)
            key = int(match.group(1)) if match else 0 if name == "msgstr" else name
            if isinstance(key, int):
                entry["msgstr"][key] = ast.literal_eval(rest)
            else:
                entry[key] = ast.literal_eval(rest)
    return entries


def test_chinese_catalogue_has_no_empty_or_fuzzy_entries():
    entries = read_po(PO_FILE)
    header, messages = entries[0], entries[1:]
    assert header["msgid"] == "" and "fuzzy" not in header["flags"] and "Plural-Forms" in header["msgstr"][0]
    assert len(messages) > 100
    empty = [e["msgid"] for e in messages if not all(e["msgstr"].values())]
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e["flags"]]
    assert empty == [] and fuzzy == []
    for e in messages:  # every placeholder of the English text is kept in the Chinese one
        placeholders = set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", e["msgid"]))
        assert all(placeholders <= set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", text)) for text in e["msgstr"].values()), \
            e["msgid"]


def test_compiled_catalogue_matches_the_po_file():
    # The .mo is committed (CI need not have msgfmt): it must hold exactly what the .po says.
    with open(PO_FILE.with_suffix(".mo"), "rb") as compiled:
        catalogue = gettext.GNUTranslations(compiled)
    for e in read_po(PO_FILE)[1:]:
        if e["msgid_plural"] and e["msgctxt"] is not None:
            found = catalogue.npgettext(e["msgctxt"], e["msgid"], e["msgid_plural"], 1)
        elif e["msgid_plural"]:
            found = catalogue.ngettext(e["msgid"], e["msgid_plural"], 1)
        elif e["msgctxt"] is not None:
            found = catalogue.pgettext(e["msgctxt"], e["msgid"])
        else:
            found = catalogue.gettext(e["msgid"])
        assert found == e["msgstr"][0], e["msgid"]
