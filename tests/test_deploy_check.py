"""The production switch: `check --deploy` is clean with IMAGESEARCH_PRODUCTION=true, DEBUG cannot be
on with it, and the security headers (CSP, HSTS, SSL redirect behind a proxy, CORS) are sent."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

REPO = Path(__file__).resolve().parent.parent
LONG_SECRET = secrets.token_urlsafe(50)


def manage(tmp_path, *args, **env_vars):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("IMAGESEARCH_", "DJANGO_"))}  # e.g. the browser tests' DJANGO_ALLOW_ASYNC_UNSAFE
    env.update(DJANGO_SETTINGS_MODULE="imagesearch.settings", IMAGESEARCH_DATA_DIR=str(tmp_path),
               IMAGESEARCH_SECRET_KEY=LONG_SECRET, **env_vars)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_check_deploy_is_clean_in_production_mode(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                    IMAGESEARCH_PRODUCTION="true", IMAGESEARCH_ALLOWED_HOSTS="images.example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # Without the switch the same command does warn: the test can fail.
    plain = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert plain.returncode != 0 and "security.W004" in plain.stderr + plain.stdout


@pytest.mark.slow
def test_production_refuses_debug(tmp_path):
    result = manage(tmp_path, "check", IMAGESEARCH_PRODUCTION="true", IMAGESEARCH_DEBUG="true")
    assert result.returncode != 0 and "IMAGESEARCH_DEBUG must be off" in result.stderr


@pytest.mark.django_db
def test_pages_send_a_content_security_policy_with_a_nonce_for_inline_scripts(client):
    from catalog.jobs import requests as jobs
    from catalog.models import ImportJob

    from tests.conftest import make_user

    user = make_user("watcher", "view_importjob")
    job = jobs.create_job(urls=["https://example.com/a.jpg"], via=ImportJob.Via.API)
    client.force_login(user)
    response = client.get(f"/imports/{job.pk}/")
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in response.content.decode()  # the progress poller may run
    docs = client.get("/api/docs/").content.decode()
    assert "<script>" not in docs  # Swagger UI's script comes as a file: no inline script to allow


@pytest.mark.django_db
def test_production_headers_behind_a_tls_proxy(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    client = Client()
    assert client.get("/api/schema/").status_code == 301  # plain http is sent to https
    secure = client.get("/api/schema/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.django_db
def test_cors_only_for_configured_origins(settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    client = Client()
    allowed = client.options("/api/images/", HTTP_ORIGIN="https://app.example.com",
                             HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
                             HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization")
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "authorization" in allowed["Access-Control-Allow-Headers"]
    other = client.get("/api/images/", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other
    settings.CORS_ALLOWED_ORIGINS = []
    assert "Access-Control-Allow-Origin" not in client.get("/api/images/", HTTP_ORIGIN="https://app.example.com")
