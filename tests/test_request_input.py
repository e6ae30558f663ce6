"""Hostile request input gets a clear 4xx, never a 500: dates at the end of the calendar, NUL
characters, deep JSON, huge numbers, long URLs, too many or too large uploads, odd file names."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http.multipartparser import MultiPartParser
from django.test import Client, RequestFactory

from catalog.models import ImportItem, ImportJob
from catalog.uploads import LimitedUploadHandler, RecodedPartHeaders, UploadTooLarge
from tests.conftest import ingest_in_cities, make_image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(writer):
    client = Client(raise_request_exception=False)  # a 500 must show as a 500 here, not as an exception
    client.force_login(writer)
    return client


def api_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["message"]
    return body["error"]


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"XyZ") -> bytes:
    """A multipart body from (part header block, content) pairs, bytes as given (names need not be UTF-8)."""
    body = b"".join(b"--" + boundary + b"\r\n" + header + b"\r\n\r\n" + content + b"\r\n" for header, content in parts)
    return body + b"--" + boundary + b"--\r\n"


def file_part(field: str, filename: bytes, content: bytes, content_type: bytes = b"image/jpeg") -> tuple:
    header = (b'Content-Disposition: form-data; name="' + field.encode() + b'"; filename="' + filename + b'"\r\n'
              b"Content-Type: " + content_type)
    return header, content


# --------------------------------------------------------------------------
# search filters


def test_the_last_day_of_the_calendar_is_a_valid_date_filter(web):
    from datetime import datetime, timezone

    from catalog.models import Image

    ingest_in_cities("cal", ["Oslo"])
    Image.objects.update(taken_at=datetime(2020, 5, 1, tzinfo=timezone.utc))
    assert web.get("/", {"q": "cat", "taken_to": "9999-12-31"}).status_code == 200
    assert web.get("/api/images/", {"taken_to": "9999-12-31"}).status_code == 200
    assert web.get("/api/images/", {"taken_from": "9999-12-31", "taken_to": "9999-12-31"}).json()["count"] == 0
    response = web.post("/api/search/", {"q": "cat", "taken_to": "9999-12-31", "taken_from": "0001-01-01"},
                        content_type="application/json")
    assert response.status_code == 200 and response.json()["results"]


@pytest.mark.parametrize("path", ["/?q=cat&cities=%00", "/?q=%00", "/?q=cat&cities=Oslo%00x",
                                  "/admin/catalog/image/?city=%00", "/admin/catalog/image/?q=a%00b",
                                  "/admin/catalog/importjob/?q=%00"])
def test_a_nul_character_in_a_page_query_is_400_with_a_message(admin_client, path):
    response = admin_client.get(path)
    assert response.status_code == 400
    assert "NUL character" in response.content.decode()


def test_a_nul_character_in_the_search_form_body_is_a_form_error(web):
    response = web.post("/", {"q": "cat", "cities": ["Oslo", "x\x00"], "search": "1"})
    assert response.status_code == 400 and "Null characters are not allowed." in response.content.decode()


@pytest.mark.parametrize(("method", "path", "data"), [
    ("get", "/api/images/?cities=%00", None),
    ("get", "/api/images/1/similar/?cities=%00", None),
    ("post", "/api/search/", {"q": "\x00"}),
    ("post", "/api/search/", {"q": "cat", "cities": ["\x00"]}),
    ("post", "/api/imports/", {"urls": ["https://example.com/\x00.jpg"]}),
    ("post", "/api/imports/", {"urls": ["https://example.com/a.jpg"], "city": "a\x00"}),
    ("post", "/api/imports/", {"urls": ["https://example.com/a.jpg"], "group_key": "\ud800"}),
])
def test_nul_and_surrogates_in_api_input_are_400(web, method, path, data):
    response = web.get(path) if method == "get" else web.post(path, data, content_type="application/json")
    assert api_error(response, 400)["code"] == "invalid"
    assert not ImportJob.objects.exists()


@pytest.mark.parametrize("path", ["/api/search/", "/api/imports/"])
def test_deeply_nested_json_is_a_400_parse_error(web, path):
    response = web.post(path, "[" * 100_000 + "]" * 100_000, content_type="application/json")
    error = api_error(response, 400)
    assert error["code"] == "parse_error" and "nested too deeply" in error["message"]


@pytest.mark.parametrize(("path", "field"), [
    ("/api/images/?min_width=99999999999999999999999", "min_width"),
    ("/api/images/?max_height=-5", "max_height"),
    ("/api/images/1/similar/?top_k=99999999999999999999", None),
])
def test_out_of_range_numbers_in_queries_are_4xx(web, path, field):
    response = web.get(path)
    assert 400 <= response.status_code < 500
    if field:
        assert field in api_error(response, 400)["fields"]


@pytest.mark.parametrize("payload", [
    {"q": "cat", "min_width": 10**30}, {"q": "cat", "top_k": 10**30}, {"q": "cat", "page": -1},
    {"similar_to": 10**30}, {"similar_to": -1}, {"q": "cat", "min_score": 10**400},
])
def test_huge_and_negative_numbers_in_a_search_are_400(web, payload):
    api_error(web.post("/api/search/", payload, content_type="application/json"), 400)


@pytest.mark.parametrize("query", ["q=cat&page=-1", "q=cat&page=99999999999999999999999",
                                   "q=cat&min_width=99999999999999999999", "similar_to=99999999999999999999999",
                                   "q=caf%E9&cities=%FF%FE", "q=%ED%A0%80"])
def test_bad_numbers_and_undecodable_bytes_on_the_search_page_are_4xx(web, query):
    response = web.get(f"/?{query}")
    assert response.status_code in (200, 400), response.status_code  # undecodable bytes become U+FFFD


def test_a_negative_api_page_is_400_and_a_page_past_the_end_404(web):
    assert "page" in api_error(web.get("/api/images/?page=-1"), 400)["fields"]
    assert api_error(web.get("/api/images/?page=999"), 404)["code"] == "not_found"


def test_over_long_urls_are_414(web):
    error = api_error(web.get("/api/images/?cities=" + "a" * 9000), 414)
    assert "longer than 8192" in error["message"]
    page = web.get("/?q=" + "a" * 9000)
    assert page.status_code == 414 and "longer than 8192" in page.content.decode()


# --------------------------------------------------------------------------
# uploads


def test_more_files_than_allowed_is_a_json_400_on_the_api_and_a_message_on_the_page(web, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [SimpleUploadedFile(f"{i}.jpg", make_image_bytes(pattern=i + 1)) for i in range(4)]
    error = api_error(web.post("/api/imports/", {"file": files}), 400)
    assert error["code"] == "too_many_files" and "At most 3 files" in error["message"]
    for file in files:
        file.seek(0)
    page = web.post("/imports/", {"files": files})
    assert page.status_code == 400 and "At most 3 files per request." in page.content.decode()
    assert not ImportJob.objects.exists()


def test_a_body_over_the_request_limit_is_413_json_on_the_api_and_a_page_message(web, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    big = "x" * 5000
    for response in (web.post("/api/search/", {"q": big}, content_type="application/json"),
                     web.post("/api/search/", {"q": big}),  # multipart form field
                     web.post("/api/search/", f"q={big}", content_type="application/x-www-form-urlencoded")):
        error = api_error(response, 413)
        assert error["code"] == "too_large" and "2048 bytes" in error["message"]
    page = web.post("/imports/", {"urls": big})
    assert page.status_code == 413 and "2048 bytes" in page.content.decode()


def test_an_oversized_file_is_refused_while_it_arrives(settings):
    """The parser stops at the first chunk past the limit: the rest of the body is never read."""
    settings.IMPORT_MAX_UPLOAD_BYTES = 100_000
    body = multipart([file_part("file", b"big.jpg", b"\xff" * 5_000_000)])
    stream = CountingStream(body)
    request = RequestFactory().get("/")
    with pytest.raises(UploadTooLarge, match="big.jpg is larger than 100000 bytes"):
        MultiPartParser(multipart_meta(len(body)), stream, [LimitedUploadHandler(request)]).parse()
    assert stream.read_bytes < 1_000_000


def test_a_body_that_cannot_be_valid_is_refused_before_reading_it(settings):
    settings.IMPORT_MAX_UPLOAD_BYTES, settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1000, 2
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    stream = CountingStream(b"x" * 10_000)
    with pytest.raises(UploadTooLarge):
        MultiPartParser(multipart_meta(10_000), stream, [LimitedUploadHandler(RequestFactory().get("/"))]).parse()
    assert stream.read_bytes == 0


def test_an_oversized_upload_on_the_import_page_gets_a_page_message(web, settings):
    settings.IMPORT_MAX_UPLOAD_BYTES = 100
    page = web.post("/imports/", {"files": [SimpleUploadedFile("big.jpg", make_image_bytes())]})
    assert page.status_code == 413 and "big.jpg is larger than 100 bytes" in page.content.decode()
    assert not ImportJob.objects.exists()


@pytest.mark.parametrize("raw_name", [b"caf\xe9.jpg", b"\xff\xfe.jpg", "日本.jpg".encode("shift_jis")])
def test_a_file_name_that_is_not_utf8_is_accepted_with_a_readable_name(web, raw_name):
    body = multipart([file_part("file", raw_name, make_image_bytes())])
    response = web.generic("POST", "/api/images/", body, content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == 202, response.content
    item = ImportItem.objects.get()
    assert item.name.endswith(".jpg") and "\ufffd" in item.name
    item.name.encode("utf-8")  # storable and printable


def test_a_latin1_file_name_on_the_import_page_is_accepted(web):
    body = multipart([file_part("files", b"r\xe9sum\xe9.png", make_image_bytes(fmt="PNG"), b"image/png")])
    response = web.generic("POST", "/imports/", body, content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == 302, response.content[:300]
    assert ImportItem.objects.get().name == "r\ufffdsum\ufffd.png"


def test_recoded_part_headers_leave_contents_alone_across_read_sizes():
    content = b"--XyY is not the boundary\r\n\r\n\xe9\xff" * 5000
    body = multipart([file_part("file", b"caf\xe9.jpg", content), (b'Content-Disposition: form-data; name="city"',
                                                                   b"Oslo")])
    for size in (1, 7, 100, 65536, -1):
        stream = RecodedPartHeaders(io.BytesIO(body), b"XyZ")
        out = b""
        while chunk := stream.read(size):
            out += chunk
            if size < 0:
                break
        assert out == body.replace(b"caf\xe9.jpg", "caf\ufffd.jpg".encode())


@pytest.mark.parametrize("path, field", [("/api/images/", "file"), ("/api/imports/", "file"), ("/imports/", "files")])
def test_octet_stream_image_uploads_are_accepted(web, path, field):
    upload = SimpleUploadedFile("photo.jpg", make_image_bytes(), content_type="application/octet-stream")
    response = web.post(path, {field: [upload]})
    assert response.status_code in (202, 302), response.content[:300]
    assert ImportItem.objects.get().kind == ImportItem.Kind.UPLOAD


def test_an_octet_stream_query_picture_searches(web):
    ingest_in_cities("oct", ["Oslo"])
    upload = SimpleUploadedFile("q.bin", make_image_bytes(size=(300, 300)), content_type="application/octet-stream")
    assert web.post("/api/search/", {"image": upload}).status_code == 200
    upload.seek(0)
    assert web.post("/", {"image": upload}).status_code == 200


def multipart_meta(length: int) -> dict:
    return {"CONTENT_TYPE": "multipart/form-data; boundary=XyZ", "CONTENT_LENGTH": str(length)}


class CountingStream:
    def __init__(self, data: bytes):
        self._io, self.read_bytes = io.BytesIO(data), 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._io.read(size)
        self.read_bytes += len(chunk)
        return chunk
