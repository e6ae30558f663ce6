#!/bin/bash
# Lets streaming replicas connect to the primary (docker-compose profile "replica"): a REPLICATION
# role and a pg_hba.conf line for it. Run by the postgres image on the first start of an empty
# volume (/docker-entrypoint-initdb.d); on an existing one run it once by hand:
#   docker compose exec -u postgres db bash /docker-entrypoint-initdb.d/20-imagesearch-replication.sh
# Does nothing unless POSTGRES_REPLICATION_PASSWORD is set. Safe to run again.
set -euo pipefail

if [ -z "${POSTGRES_REPLICATION_PASSWORD:-}" ]; then
    echo "imagesearch: POSTGRES_REPLICATION_PASSWORD is not set; no replication role created"
    exit 0
fi
role="${POSTGRES_REPLICATION_USER:-replicator}"

# psql variables (:'name') quote the role name and password; DO blocks take no variables, hence \gexec.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v role="$role" -v password="$POSTGRES_REPLICATION_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I WITH REPLICATION LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH REPLICATION LOGIN PASSWORD %L', :'role', :'password') \gexec
-- WAL kept for a replica that was away for a while (no replication slot: a replica gone for good
-- must not fill the primary's disk). One that fell further behind is set up again (README).
ALTER SYSTEM SET wal_keep_size = '1GB';
SQL

hba="${PGDATA:-/var/lib/postgresql/data}/pg_hba.conf"
line="host replication $role all scram-sha-256"
grep -qxF "$line" "$hba" || echo "$line" >> "$hba"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres -c "SELECT pg_reload_conf()" >/dev/null
echo "imagesearch: replication role $role ready"
