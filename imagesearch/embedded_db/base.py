from pathlib import Path

from django.db.backends.postgresql import base

from .server import ensure_running


class DatabaseWrapper(base.DatabaseWrapper):
    """PostgreSQL backend whose server is the embedded one, started on first connect.

    OPTIONS: ``pgdata`` (data folder) and ``server_settings`` (postgresql.conf values)."""

    def get_connection_params(self):
        server = self._ensure_server(self._server_database_name())
        self.settings_dict.update(HOST=server.socket_dir, PORT=str(server.port), USER=server.user)
        params = super().get_connection_params()
        params.pop("pgdata", None)
        params.pop("server_settings", None)
        return params

    def _ensure_server(self, database: str):
        options = self.settings_dict["OPTIONS"]
        return ensure_running(Path(options["pgdata"]), database, options.get("server_settings"))

    def _server_database_name(self) -> str:
        # NAME is None for maintenance connections, and the test runner creates its own database.
        name = self.settings_dict["NAME"]
        return "postgres" if not name or name.startswith("test_") else name

    def _nodb_cursor(self):
        # Creating/dropping the test database connects to "postgres"; the server must be up first.
        self._ensure_server("postgres")
        return super()._nodb_cursor()
