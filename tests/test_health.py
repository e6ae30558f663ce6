"""/healthz and /readyz, and the 503 answers while the database cannot be reached."""

from __future__ import annotations

import socket
import time

import pytest
from django.db import connections

from catalog import embedder
from catalog.embedder import get_embedder
from tests.conftest import ingest_pictures, varied_picture


def test_healthz_answers_without_the_database(client):
    response = client.get("/healthz")  # no django_db mark: any query would raise here
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_once_the_database_answers_and_the_model_is_loaded(client, monkeypatch):
    monkeypatch.setattr(embedder, "_embedders", embedder.OrderedDict())  # as in a fresh web process
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "model": "loading"}

    deadline = time.monotonic() + 120  # the first call started loading the model in the background
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.2)
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok", "model": "ok"}


@pytest.mark.django_db
def test_readyz_waits_for_the_active_spaces_model_not_the_configured_one(client, monkeypatch):
    from catalog.models import EmbeddingSpace

    get_embedder()  # the configured model is loaded ...
    EmbeddingSpace.objects.create(name="ViT-S-32-alt/random-init", dimensions=256, architecture="ViT-S-32-alt",
                                  random_init=True, state=EmbeddingSpace.State.ACTIVE)
    active = embedder.EmbedderConfig.for_space(EmbeddingSpace.objects.get(state="active"))
    monkeypatch.setattr(embedder, "_embedders", embedder.OrderedDict(
        [(embedder.EmbedderConfig.from_settings(), get_embedder())]))
    # ... but searches use the active space's, so that is the one readiness is about.
    assert client.get("/readyz").json()["model"] == "loading"
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.2)
    assert embedder.is_loaded(active)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once closed


@pytest.mark.django_db(transaction=True)
def test_api_and_pages_answer_503_while_the_database_is_unreachable_and_recover(client, monkeypatch):
    get_embedder()
    image = ingest_pictures([("kept.png", varied_picture(3))])[0]
    connection = connections["default"]
    real_params = connection.get_connection_params
    port = _closed_port()

    def unreachable():  # a real connection attempt, refused by a loopback port nobody listens on
        return {**real_params(), "host": "127.0.0.1", "port": port}

    connection.close()
    monkeypatch.setattr(connection, "get_connection_params", unreachable)

    response = client.get("/api/images/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {"error": {
        "status": 503, "code": "database_unavailable",
        "message": "The database cannot be reached right now; try again in a few seconds."}}
    response = client.post("/api/search/", {"q": "kept", "top_k": 3}, content_type="application/json")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "database_unavailable")

    response = client.get(f"/images/{image.pk}/")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert "Temporarily unavailable" in response.content.decode()

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "unavailable: OperationalError"

    monkeypatch.undo()  # the database is back
    connection.close()
    assert client.get("/api/images/").status_code == 200
    assert client.get(f"/images/{image.pk}/").status_code == 200
    response = client.post("/api/search/", {"q": "kept", "top_k": 3}, content_type="application/json")
    assert response.status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_database_error_met_outside_a_view_is_a_503_not_a_500(rf):
    """handler500 runs inside Django's except block, e.g. for a session saved by middleware."""
    from django.db import OperationalError

    from imagesearch.middleware import server_error

    for path, kind in (("/api/images/", "application/json"), ("/images/1/", "text/html")):
        try:
            raise OperationalError("connection refused")
        except OperationalError:
            response = server_error(rf.get(path))
        assert (response.status_code, response["Content-Type"].split(";")[0]) == (503, kind)
    try:
        raise ValueError("a bug")
    except ValueError:
        assert server_error(rf.get("/api/images/")).status_code == 500


def test_probes_answer_in_production_mode_from_inside_the_container(client, settings):
    """Host 127.0.0.1 over plain http: neither refused by ALLOWED_HOSTS nor redirected to https."""
    settings.ALLOWED_HOSTS = ["images.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz", HTTP_HOST="127.0.0.1:8000").status_code == 200
    assert client.get("/api/images/", HTTP_HOST="127.0.0.1:8000").status_code == 400  # the host check stands
    assert client.get("/api/images/", HTTP_HOST="images.example.com").status_code == 301  # so does the redirect
