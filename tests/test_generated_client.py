"""A client generated from /api/schema/ (openapi-python-client) works against the live server:
a search, an upload with a bearer token, a job poll, and a typed error."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from catalog.accounts.tokens import create_token
from catalog.jobs import tasks
from tests.conftest import ingest_in_cities, make_image_bytes

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def generated(live_server, tmp_path, monkeypatch):
    """The client package, generated into tmp_path from the live schema and imported."""
    with urllib.request.urlopen(f"{live_server.url}/api/schema/?format=json", timeout=30) as response:
        (tmp_path / "openapi.json").write_bytes(response.read())
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hooks
    result = subprocess.run([str(VENV_BIN / "openapi-python-client"), "generate", "--path", "openapi.json",
                             "--output-path", "imagesearch_client", "--meta", "none"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # every operation and model was generated
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lambda name: importlib.import_module(f"imagesearch_client.{name}")
    for module in [m for m in sys.modules if m.startswith("imagesearch_client")]:
        del sys.modules[module]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_generated_client_searches_uploads_and_polls(generated, live_server, writer):
    stored = ingest_in_cities("gen", ["Oslo", "Lima", "Oslo"])
    token = create_token(user=writer)[1]
    client = generated("client").AuthenticatedClient(base_url=live_server.url, token=token, raise_on_unexpected_status=True)
    models, types = generated("models"), generated("types")

    search = generated("api.search.search_create")
    found = search.sync(client=client, body=models.SearchRequest(q="a dog on grass", top_k=5, cities=["Oslo"]))
    assert isinstance(found, models.SearchResponse), found
    assert {hit.id for hit in found.results} == {stored[0].pk, stored[2].pk}
    assert all(hit.city == "Oslo" and -1 <= hit.score <= 1 for hit in found.results)

    missing = search.sync(client=client, body=models.SearchRequest(similar_to=10**12))
    assert isinstance(missing, models.Error) and missing.error.status == 404 and missing.error.code == "not_found"

    upload = generated("api.images.images_create")
    picture = types.File(payload=io.BytesIO(make_image_bytes(pattern=9)), file_name="new.jpg", mime_type="image/jpeg")
    job = upload.sync(client=client, body=models.ImageUpload(file=[picture], city="Porto"))
    assert isinstance(job, models.ImportJob), job
    assert job.state.value == "queued" and job.counts.total == 1

    tasks.run_job(job.id)  # what the worker does
    poll = generated("api.imports.imports_retrieve").sync(client=client, id=job.id)
    assert poll.state.value == "done" and poll.counts.added == 1 and poll.errors == []

    listed = generated("api.images.images_list").sync(client=client, cities=["Porto"])
    assert [image.original_name for image in listed.results] == ["new.jpg"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_generated_client_decodes_validation_errors(generated, live_server, writer):
    client = generated("client").AuthenticatedClient(base_url=live_server.url, token=create_token(user=writer)[1])
    models = generated("models")
    bad = generated("api.search.search_create").sync(client=client, body=models.SearchRequest(q="x", top_k=1000))
    assert isinstance(bad, models.Error) and bad.error.status == 400
    assert "top_k" in bad.error.fields.additional_properties
    anonymous = generated("client").Client(base_url=live_server.url)
    refused = generated("api.imports.imports_list").sync_detailed(client=anonymous)
    assert refused.status_code == 401 and json.loads(refused.content)["error"]["code"] == "not_authenticated"
