"""Schemathesis fuzzes every operation of /api/schema/ against the live server (bounded in examples
and time): no 5xx, no status code the schema does not document, no response that violates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from catalog.accounts.tokens import create_token
from tests.conftest import ingest_in_cities

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance,negative_data_rejection,unsupported_method")

SCHEMATHESIS_CONFIG = """
# Refusing bad input with 413 (too large) or 414 (URL too long) is a rejection too.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429"]

# The upload is multipart only, and a form carries only text: a generated null or 5 arrives as the
# valid strings "null" and "5". (JSON type errors are refused: tests/test_api_contract.py.)
[[operations]]
include-name = "POST /api/images/"
checks.negative_data_rejection.enabled = false
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_keeps_its_schema_under_fuzzing(live_server, writer, tmp_path):
    ingest_in_cities("fuzz", ["Oslo", "Lima"])  # so that ids 1.. and searches find something
    token = create_token(user=writer)[1]
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    command = [str(SCHEMATHESIS), "--no-color", "--config-file", str(tmp_path / "schemathesis.toml"), "run",
               f"{live_server.url}/api/schema/?format=json",
               "--checks", CHECKS, "--max-examples", "20", "--max-time", "90", "--seed", "1",
               "--generation-deterministic", "--request-timeout", "20", "--workers", "1",
               "--exclude-path-regex", "^/api/auth/",  # login throttling and token revocation: tests/test_tokens.py
               "-H", f"Authorization: Bearer {token}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    report = "\n".join(line[:300] for line in (result.stdout + result.stderr).splitlines())  # URLs get long
    assert result.returncode == 0, report[-10000:]
