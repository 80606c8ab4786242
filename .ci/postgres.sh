#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the audit-trail tests (sourced by .ci/run).
# Installs the server from Debian's packages when the machine lacks it. Exports
# TRIAGE_TEST_POSTGRES_URL and defines stop_postgres, which ends the server it started.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
PG_PORT=${PG_PORT:-55432}
PG_DATA=$(mktemp -d /tmp/triage-pg.XXXXXX)
chown postgres "$PG_DATA"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U triage >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA" start >/dev/null
export TRIAGE_TEST_POSTGRES_URL="postgresql+psycopg://triage@127.0.0.1:$PG_PORT/postgres"
stop_postgres() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DATA"
}
