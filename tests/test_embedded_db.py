"""The embedded PostgreSQL default: started on demand, tuned, stopped when its last user exits."""

import json
import os
import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.db import connection

from imagesearch.embedded_db.server import _forget_dead_holders
from imagesearch.machine import usable_memory


@pytest.mark.django_db
def test_server_runs_with_the_configured_settings_and_pgvector():
    if settings.DATABASES["default"]["ENGINE"] != "imagesearch.embedded_db":
        pytest.skip("DATABASE_URL points at an external server")
    wanted = settings.DATABASES["default"]["OPTIONS"]["server_settings"]
    with connection.cursor() as cursor:
        # In bytes: PostgreSQL shows 2048MB as 2GB.
        cursor.execute("SELECT pg_size_bytes(current_setting('shared_buffers')) = pg_size_bytes(%s)",
                       [wanted["shared_buffers"]])
        assert cursor.fetchone()[0]
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"
        cursor.execute("SHOW shared_preload_libraries")  # autoprewarm: warm buffers after a restart
        assert cursor.fetchone()[0] == "pg_prewarm"
        cursor.execute("SHOW pg_prewarm.autoprewarm")
        assert cursor.fetchone()[0] == "on"


def test_the_embedded_server_gets_a_quarter_of_the_memory_by_default():
    if settings.DATABASES["default"]["ENGINE"] != "imagesearch.embedded_db" or (
            "IMAGESEARCH_EMBEDDED_SHARED_BUFFERS" in os.environ):
        pytest.skip("an external server, or buffers set explicitly")
    wanted = settings.DATABASES["default"]["OPTIONS"]["server_settings"]
    assert wanted["shared_buffers"] == f"{max(128, usable_memory() // 4 // 2**20)}MB"
    assert wanted["effective_cache_size"] == f"{max(512, usable_memory() // 2 // 2**20)}MB"


def test_holders_killed_without_cleanup_are_forgotten(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / ".handle_pids.json").write_text(json.dumps([dead_pid, os.getpid()]))
    _forget_dead_holders(tmp_path, threading.Lock())
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == [os.getpid()]


def test_manage_help_does_not_start_the_database_or_import_torch(tmp_path):
    env = {**os.environ, "IMAGESEARCH_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "imagesearch.settings"}
    code = ("import sys; from django.core.management import execute_from_command_line; "
            "execute_from_command_line(['manage.py', 'help']); "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'heavy import'")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            cwd=settings.BASE_DIR)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pgdata").exists()
