#!/bin/bash
# A streaming replica of the "db" service (docker-compose profile "replica"). On the first start
# (empty volume) it copies the primary with pg_basebackup -R (standby.signal plus primary_conninfo),
# then runs PostgreSQL as a hot standby through the image's own entry point.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:=db}"
: "${PRIMARY_PORT:=5432}"
: "${POSTGRES_REPLICATION_USER:=replicator}"
if [ -z "${POSTGRES_REPLICATION_PASSWORD:-}" ]; then
    echo "imagesearch replica: set POSTGRES_REPLICATION_PASSWORD (the same for db and db-replica)" >&2
    exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    until gosu postgres pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do sleep 1; done
    echo "imagesearch replica: copying $PRIMARY_HOST with pg_basebackup"
    # -R writes the connection (password included) into postgresql.auto.conf for streaming.
    PGPASSWORD="$POSTGRES_REPLICATION_PASSWORD" gosu postgres pg_basebackup \
        -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$POSTGRES_REPLICATION_USER" \
        -D "$PGDATA" -R -X stream --checkpoint=fast --progress
fi
# PG_VERSION exists now, so the image's entry point skips initdb and starts the standby.
# The compose file's command (postgres and its settings, as db has them), or plain postgres.
[ "$#" -gt 0 ] || set -- postgres
exec docker-entrypoint.sh "$@"
