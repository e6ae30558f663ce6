"""The API contract: every answer under /api/ is JSON (errors in the one shape), unknown fields are
refused by name, the same mistake gets the same status, and the schema documents all of it."""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory

from catalog.request_input import server_error
from tests.conftest import ingest_in_cities, make_image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(writer):
    client = Client(raise_request_exception=False)
    client.force_login(writer)
    return client


@pytest.fixture
def schema(web):
    return web.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def api_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["status"] == status and isinstance(error["code"], str) and error["message"]
    assert set(error) <= {"status", "code", "message", "fields"}
    return error


# --------------------------------------------------------------------------
# JSON everywhere under /api/


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/api/nothing-here/", 404),
    ("post", "/api/", 404),
    ("get", "/api/images/not-a-number/", 404),
    ("get", "/api/imports/not-a-uuid/", 404),
    ("get", "/api/search/", 405),
    ("delete", "/api/images/", 405),
    ("put", "/api/imports/", 405),
    ("trace", "/api/images/1/similar/?cities=Oslo", 405),
    ("get", "/api/images/?cities=" + "x" * 9000, 414),
    ("get", "/api/" + "y" * 9000, 414),
])
def test_unknown_paths_methods_and_long_urls_answer_in_the_error_shape(web, method, path, status):
    api_error(getattr(web, method)(path), status)


def test_anonymous_and_csrf_failures_are_in_the_error_shape(writer):
    anonymous = Client().post("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, content_type="application/json")
    assert api_error(anonymous, 401)["code"] == "not_authenticated"
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(writer)
    error = api_error(csrf.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]},
                                content_type="application/json"), 403)
    assert "CSRF" in error["message"]


def test_a_server_error_under_api_is_json_and_elsewhere_a_page():
    assert api_error(server_error(RequestFactory().get("/api/search/")), 500)["code"] == "server_error"
    page = server_error(RequestFactory().get("/"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


def test_unsupported_media_type_is_415(web):
    response = web.post("/api/search/", "q=cat", content_type="text/plain")
    assert api_error(response, 415)["code"] == "unsupported_media_type"


# --------------------------------------------------------------------------
# unknown fields


@pytest.mark.parametrize(("method", "path", "data", "kind", "unknown"), [
    ("post", "/api/search/", {"q": "cat", "city": "Oslo"}, "json", "city"),
    ("post", "/api/search/", {"q": "cat", "topk": 3}, "multipart", "topk"),
    ("post", "/api/search/?city=Oslo", {"q": "cat"}, "json", "city"),
    ("get", "/api/images/?city=Oslo", None, None, "city"),
    ("get", "/api/images/?cities=Oslo&min_widht=5", None, None, "min_widht"),
    ("get", "/api/images/{id}/?verbose=1", None, None, "verbose"),
    ("get", "/api/images/{id}/similar/?city=Oslo", None, None, "city"),
    ("get", "/api/imports/?mine=1", None, None, "mine"),
    ("post", "/api/imports/", {"url": ["https://example.com/a.jpg"]}, "json", "url"),
    ("post", "/api/imports/", {"urls": ["https://example.com/a.jpg"], "City": "Oslo"}, "json", "City"),
    ("post", "/api/images/", {"files": "upload", "city": "Oslo"}, "multipart", "files"),
])
def test_unknown_fields_are_refused_by_name(web, method, path, data, kind, unknown):
    image = ingest_in_cities("strict", ["Oslo"])[0]
    path = path.replace("{id}", str(image.pk))
    if kind == "json":
        response = web.post(path, data, content_type="application/json")
    elif kind == "multipart":
        if data.get("files") == "upload":
            data = {**data, "files": SimpleUploadedFile("a.jpg", make_image_bytes())}
        response = web.post(path, data)
    else:
        response = web.get(path)
    error = api_error(response, 400)
    assert unknown in error["fields"], error
    assert f'Unknown field "{unknown}"' in error["fields"][unknown][0]


def test_unknown_query_parameters_on_a_job_are_refused(web):
    job_id = web.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]}, content_type="application/json").json()["id"]
    assert "x" in api_error(web.get(f"/api/imports/{job_id}/?x=1"), 400)["fields"]
    assert web.get(f"/api/imports/{job_id}/").status_code == 200


@pytest.mark.parametrize("query", ["page_size=null", "page_size=0", "page_size=101", "page=0", "page=x"])
def test_bad_paging_parameters_are_400_not_ignored(web, query):
    assert query.split("=")[0] in api_error(web.get(f"/api/images/?{query}"), 400)["fields"]


def test_known_fields_still_work_everywhere(web):
    ingest_in_cities("known", ["Oslo", "Lima"])
    assert web.get("/api/images/?cities=Oslo&page=1&page_size=5").json()["count"] == 1
    assert web.post("/api/search/", {"q": "cat", "cities": ["Oslo"], "top_k": 3, "page": 1, "collapse": True},
                    content_type="application/json").status_code == 200


# --------------------------------------------------------------------------
# the same mistake, the same status


def test_missing_things_are_404_on_every_endpoint(web):
    missing = 10**12
    for response in (web.get(f"/api/images/{missing}/"), web.get(f"/api/images/{missing}/similar/"),
                     web.post("/api/search/", {"similar_to": missing}, content_type="application/json"),
                     web.post("/api/search/", {"similar_to": str(missing)}),
                     web.get(f"/api/imports/{uuid.uuid4()}/")):
        assert api_error(response, 404)["code"] == "not_found"


def test_the_same_bad_value_is_400_on_search_list_and_similar(web):
    image = ingest_in_cities("same", ["Oslo"])[0]
    for response in (web.get("/api/images/?taken_from=2020-13-01"),
                     web.get(f"/api/images/{image.pk}/similar/?taken_from=2020-13-01"),
                     web.post("/api/search/", {"q": "x", "taken_from": "2020-13-01"}, content_type="application/json")):
        assert "taken_from" in api_error(response, 400)["fields"]


# --------------------------------------------------------------------------
# the schema says so


def test_every_operation_documents_its_errors_in_the_one_shape(schema):
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("400", "503"):
                assert responses[status]["content"]["application/json"]["schema"] == error_ref, (method, path)
            if method in ("post", "put", "patch"):
                assert {"413", "415"} <= set(responses), (method, path)
            if operation.get("security") and {} not in operation["security"]:
                assert {"401", "403"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
    assert {"404", "429"} <= set(schema["paths"]["/api/search/"]["post"]["responses"])
    assert "Retry-After" in schema["paths"]["/api/search/"]["post"]["responses"]["429"]["headers"]


def test_the_error_component_is_the_shape_the_api_sends(schema):
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["error"]
    detail = components["ErrorDetail"]
    assert set(detail["required"]) == {"status", "code", "message"}
    assert detail["properties"]["fields"]["type"] == "object"


def test_uploads_are_binary_files_in_the_schema(schema):
    components = schema["components"]["schemas"]
    search = schema["paths"]["/api/search/"]["post"]["requestBody"]["content"]
    multipart = components[search["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert multipart["properties"]["image"] == {"type": "string", "format": "binary",
                                                "description": "Query picture (a file)."}
    as_json = components[search["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "image" not in as_json["properties"]
    upload = schema["paths"]["/api/images/"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    upload = components[upload["$ref"].rsplit("/", 1)[1]]
    assert upload["properties"]["file"]["items"]["format"] == "binary"


def test_the_schema_names_the_accepted_security_schemes(schema):
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    assert any(s.get("in") == "cookie" for s in schemes.values())
    login = schema["paths"]["/api/auth/token/"]["post"]
    assert login.get("security") in (None, [], [{}])


@pytest.mark.parametrize(("path", "payload", "field"), [
    ("/api/search/", {"q": 5}, "q"),
    ("/api/search/", {"q": "cat", "top_k": "5"}, "top_k"),
    ("/api/search/", {"q": "cat", "top_k": True}, "top_k"),
    ("/api/search/", {"q": "cat", "min_score": "0.5"}, "min_score"),
    ("/api/search/", {"q": "cat", "collapse": "yes"}, "collapse"),
    ("/api/search/", {"q": "cat", "cities": "Oslo"}, "cities"),
    ("/api/search/", {"q": "cat", "cities": ["Oslo", 3]}, "cities"),
    ("/api/imports/", {"urls": ["https://example.com/a.jpg"], "group_key": 0}, "group_key"),
])
def test_json_values_of_the_wrong_type_are_refused(web, path, payload, field):
    error = api_error(web.post(path, payload, content_type="application/json"), 400)
    assert field in error["fields"] and "Expected" in error["fields"][field][0]


def test_the_token_endpoints_refuse_unknown_fields_too(web, writer):
    response = web.post("/api/auth/token/", {"username": "writer", "password": "pw-for-tests-only", "remember": True},
                        content_type="application/json")
    assert "remember" in api_error(response, 400)["fields"]
    assert "all" in api_error(web.get("/api/auth/tokens/?all=1"), 400)["fields"]
