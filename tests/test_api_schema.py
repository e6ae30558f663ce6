"""The OpenAPI schema is generated from the code; this keeps it true."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_schema_generates_without_warnings(tmp_path, capsys):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.stat().st_size > 0


def test_schema_documents_every_endpoint(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]
    assert {"post"} <= set(paths["/api/search/"])
    assert {"get", "post"} <= set(paths["/api/images/"])
    assert "get" in paths["/api/images/{id}/"] and "get" in paths["/api/images/{id}/similar/"]
    assert "post" in paths["/api/imports/"] and "get" in paths["/api/imports/{id}/"]
    search_body = paths["/api/search/"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(search_body)
    hit = schema["components"]["schemas"]["SearchHit"]["properties"]
    assert {"score", "id", "thumbnail_url", "city"} <= set(hit)


def test_docs_page_renders(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200 and b"swagger" in response.content.lower()


@pytest.mark.parametrize("public", [True, False])
def test_schema_says_whether_reading_needs_credentials(client, settings, writer, public):
    settings.PUBLIC_READ = public
    client.force_login(writer)  # login-only reading covers the schema too
    paths = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    for path, method in (("/api/images/", "get"), ("/api/search/", "post"), ("/api/images/{id}/", "get")):
        assert ({} in paths[path][method]["security"]) is public, (path, method)
    assert {} not in paths["/api/images/"]["post"]["security"]  # an upload always needs a login
