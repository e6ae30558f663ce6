"""Throttles: per user and per anonymous address on search, upload/import and login, for the API and
the pages alike (one budget per scope); a 429 (the one error shape on the API, a page elsewhere) with
Retry-After; counted in the database cache, so two web processes share them."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client

from catalog.models import ImportJob
from tests.conftest import make_user

REPO = Path(__file__).resolve().parent.parent


def search(client, **headers):
    # An empty search is a 400 without touching the model; the throttle counts it all the same.
    return client.post("/api/search/", {}, content_type="application/json", **headers)


def assert_throttled(response):
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["error"]["status"] == 429 and body["error"]["code"] == "throttled", body
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.django_db
def test_search_is_throttled_per_anonymous_address_and_per_user(settings, api_token):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "2/min"}
    anonymous = Client()
    assert [search(anonymous).status_code for _ in range(2)] == [400, 400]
    assert_throttled(search(anonymous))
    # Another address, and a user (counted by account, wherever they come from), have their own counts.
    assert search(Client(REMOTE_ADDR="10.9.8.7")).status_code == 400
    token = {"HTTP_AUTHORIZATION": f"Bearer {api_token}"}
    assert [search(anonymous, **token).status_code for _ in range(2)] == [400, 400]
    assert_throttled(search(anonymous, **token))


@pytest.mark.django_db
def test_forged_forwarded_for_does_not_dodge_the_throttle(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "1/min"}
    client = Client()
    assert search(client, HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 400
    assert_throttled(search(client, HTTP_X_FORWARDED_FOR="2.2.2.2"))


@pytest.mark.django_db
def test_behind_a_proxy_the_forwarded_address_is_counted(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "1/min"}
    settings.PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="10.0.0.1")
    assert search(proxy, HTTP_X_FORWARDED_FOR="forged, 1.1.1.1").status_code == 400
    assert search(proxy, HTTP_X_FORWARDED_FOR="2.2.2.2").status_code == 400
    assert_throttled(search(proxy, HTTP_X_FORWARDED_FOR="1.1.1.1"))


@pytest.mark.django_db
def test_uploads_and_imports_share_the_upload_throttle_and_reads_are_not_counted(settings, writer_client):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "upload": "1/min"}
    first = writer_client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]},
                               content_type="application/json")
    assert first.status_code == 202
    assert writer_client.get("/api/images/").status_code == 200  # listing is not an upload
    assert_throttled(writer_client.post("/api/images/", {}))


@pytest.mark.django_db
def test_token_login_is_throttled(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": "2/min"}
    make_user("reader", password="s3cret-pass")
    client = Client()
    for _ in range(2):
        assert client.post("/api/auth/token/", {"username": "reader", "password": "s3cret-pass"},
                           content_type="application/json").status_code == 201
    assert_throttled(client.post("/api/auth/token/", {"username": "reader", "password": "s3cret-pass"},
                                 content_type="application/json"))


def assert_throttled_page(response):
    """A 429 page in the site's style (not the JSON shape), with Retry-After."""
    assert response.status_code == 429, response.content[:500]
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert 'class="site-header"' in page and "Too many requests" in page
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.django_db
def test_search_page_shares_the_search_budget_with_the_api(settings, image_bytes):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "2/min"}
    client = Client()
    assert search(client).status_code == 400  # the API ...
    assert client.get("/", {"search": "1"}).status_code == 200  # ... and an empty page search (browsing): one budget
    # Refused before any work: neither the text nor the uploaded picture reaches the model, and
    # browsing (the bare page too: it counts the collection and reads a page of it) is counted.
    assert_throttled_page(client.get("/"))
    assert_throttled_page(client.get("/", {"page": "9999", "sort": "taken"}))
    assert_throttled_page(client.get("/", {"q": "a red bus"}))
    assert_throttled_page(client.post("/", {"image": SimpleUploadedFile("q.jpg", image_bytes())}))
    assert_throttled_page(client.get("/", {"similar_to": "1"}))
    assert_throttled(search(client))
    assert Client(REMOTE_ADDR="10.9.8.7").get("/", {"search": "1"}).status_code == 200


@pytest.mark.django_db
def test_page_searches_count_per_user_with_session_or_token(settings, writer_client, api_token):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "search": "2/min"}
    Client().get("/", {"search": "1"})  # the address's count is not the user's
    assert writer_client.get("/", {"search": "1"}).status_code == 200
    assert search(Client(), HTTP_AUTHORIZATION=f"Bearer {api_token}").status_code == 400  # same user, by token
    assert_throttled_page(writer_client.get("/", {"q": "a red bus"}))
    assert_throttled_page(Client().get("/", {"q": "a red bus"}, HTTP_AUTHORIZATION=f"Bearer {api_token}"))


@pytest.mark.django_db
def test_import_page_and_admin_import_share_the_upload_budget_with_the_api(settings, writer_client, admin_client):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "upload": "1/min"}
    urls = {"urls": "https://example.com/a.jpg"}
    assert writer_client.post("/api/imports/", {"urls": ["https://example.com/a.jpg"]},
                              content_type="application/json").status_code == 202
    assert_throttled_page(writer_client.post("/imports/", urls))
    assert writer_client.get("/imports/").status_code == 200  # looking is not uploading
    assert admin_client.post("/imports/", urls).status_code == 302  # another user: their own budget
    assert_throttled_page(admin_client.post("/admin/catalog/importjob/add/", urls))
    assert ImportJob.objects.count() == 2


@pytest.mark.django_db
def test_password_spraying_across_usernames_is_throttled_per_address(settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": "10/min"}  # the default rate
    client = Client()
    assert client.get("/accounts/login/").status_code == 200 and client.get("/admin/login/").status_code == 200
    statuses = []
    for index in range(20):  # a different username each time: django-axes alone never locks any of them
        path = "/accounts/login/" if index % 2 else "/admin/login/"
        response = client.post(path, {"username": f"user{index}", "password": "guess"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert_throttled_page(response)
    assert statuses == [200] * 10 + [429] * 10
    # The API's token login is the same budget; another address has its own.
    assert_throttled(client.post("/api/auth/token/", {"username": "user0", "password": "guess"},
                                 content_type="application/json"))
    assert Client(REMOTE_ADDR="10.9.8.7").post("/accounts/login/", {"username": "u", "password": "p"}).status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_search(port: int) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/search/", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)


def wait_until_serving(port: int, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"server on {port} did not start:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_processes_share_the_throttle(tmp_path):
    module = tmp_path / "throttle_web_settings.py"
    module.write_text("from tests.settings import *  # noqa\n"
                      f"DATABASES['default']['NAME'] = {connection.settings_dict['NAME']!r}\n"
                      "THROTTLE_RATES = {**THROTTLE_RATES, 'search': '3/min'}\n")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="throttle_web_settings",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    caches["shared"].clear()
    servers = []
    try:
        for name in ("a", "b"):
            port, log = free_port(), tmp_path / f"web-{name}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "imagesearch.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            servers.append((port, process, log))
        for port, process, log in servers:
            wait_until_serving(port, process, log)
        (a, _, _), (b, _, _) = servers
        # Three requests allowed in all, whichever process answers; per-process counting would allow six.
        assert [post_search(port)[0] for port in (a, b, a)] == [400, 400, 400]
        for port in (b, a):
            status, headers, body = post_search(port)
            assert status == 429 and body["error"]["code"] == "throttled", body
            assert int(headers["Retry-After"]) > 0
    finally:
        for _, process, _ in servers:
            process.terminate()
        for _, process, _ in servers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        caches["shared"].clear()


@pytest.mark.parametrize("raw", ["5/fortnight", "0/min", "many/min", "10"])
def test_malformed_rates_stop_the_service_with_the_variable_named(raw):
    from django.core.exceptions import ImproperlyConfigured

    from imagesearch.env import Env

    assert Env({"IMAGESEARCH_THROTTLE_SEARCH": "30/hour"}).rate("IMAGESEARCH_THROTTLE_SEARCH", "1/s") == "30/hour"
    with pytest.raises(ImproperlyConfigured, match="IMAGESEARCH_THROTTLE_SEARCH"):
        Env({"IMAGESEARCH_THROTTLE_SEARCH": raw}).rate("IMAGESEARCH_THROTTLE_SEARCH", "1/s")
