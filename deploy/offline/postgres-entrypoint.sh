#!/usr/bin/env bash
# Entrypoint of dockyard-local/postgres:15-bookworm (Debian's postgresql-15). Follows the
# official postgres image for what Dockyard uses:
#   POSTGRES_PASSWORD  (required on first start unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER      (default postgres) the superuser initdb creates, with that password
#   POSTGRES_DB        (default $POSTGRES_USER) created if it is not "postgres"
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256)
#   PGDATA             (default /var/lib/postgresql/data)
# On the first start (no PGDATA/PG_VERSION): initdb (trust on the local socket, the host auth
# method for TCP from anywhere), then, with the server listening on the Unix socket only, the
# database is created and /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh run in name
# order (psql as POSTGRES_USER). Then `exec postgres` in the foreground, listening on *:5432,
# as the postgres user.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# `docker run IMAGE -c foo=bar` means `postgres -c foo=bar`.
if [[ "${1:-}" == -* ]]; then
  set -- postgres "$@"
fi

if [[ "${1:-}" != postgres ]]; then
  exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
  # Only the data directory itself when it is not already postgres's (a fresh volume).
  if [[ "$(stat -c %u "$PGDATA")" != "$(id -u postgres)" ]]; then
    chown -R postgres:postgres "$PGDATA"
  fi
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
export POSTGRES_USER POSTGRES_DB

# psql against the temporary, socket-only server.
psql_init() {
  PGHOST=/var/run/postgresql PGPORT=5432 psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc \
    --username "$POSTGRES_USER" "$@"
}

run_init_files() {
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e "$f" ]] || continue
    case "$f" in
      *.sh)
        if [[ -x "$f" ]]; then
          printf '%s: running %s\n' "$0" "$f"
          "$f"
        else
          printf '%s: sourcing %s\n' "$0" "$f"
          # shellcheck disable=SC1090
          . "$f"
        fi
        ;;
      *.sql)
        printf '%s: running %s\n' "$0" "$f"
        psql_init --dbname "$POSTGRES_DB" -f "$f"
        ;;
      *.sql.gz)
        printf '%s: running %s\n' "$0" "$f"
        gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB"
        ;;
      *) printf '%s: ignoring %s\n' "$0" "$f" ;;
    esac
  done
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    echo "       (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection)" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as upstream
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
    ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  # TCP from anywhere (other containers), with the host auth method.
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # Unix socket only while the init scripts run: a TCP health check fails until they are done.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  if [[ "$POSTGRES_DB" != postgres ]]; then
    # Identifier quoting via psql's :"var".
    psql_init --dbname postgres --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  run_init_files
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
