#!/usr/bin/env bash
# Start a throwaway MLflow tracking server on 127.0.0.1 (sourced by .ci/run, after postgres.sh and
# once the virtual environment exists). Its backend store is a database `mlflow` in the PostgreSQL
# server that postgres.sh started; its artifact root is a local folder, proxied by the server
# (`mlflow-artifacts:/`), so clients need no access to that folder. Exports
# TRIAGE_TEST_MLFLOW_SERVER (the server's URL, for the slow tests) and defines stop_mlflow, which
# ends the server it started (its process group) and removes its folder.
: "${TRIAGE_TEST_POSTGRES_URL:?source .ci/postgres.sh first}"
MLFLOW_BIN=${MLFLOW_BIN:-.venv/bin/mlflow}
MLFLOW_DIR=$(mktemp -d /tmp/triage-mlflow.XXXXXX)
# The URL's scheme names the driver SQLAlchemy uses: psycopg (3), from the `postgres` extra.
MLFLOW_DB_URL="${TRIAGE_TEST_POSTGRES_URL%/*}/mlflow"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U triage mlflow
MLFLOW_PORT=${MLFLOW_PORT:-$(.venv/bin/python -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mlflow_ready() {
  .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1
}
# setsid: the server (and the uvicorn worker it spawns) in a process group of its own, whose id
# is MLFLOW_PID, so stop_mlflow ends exactly what was started here. No job runner: it serves
# GenAI evaluation jobs only, and would add seven idle processes and a folder in /dev/shm.
MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$MLFLOW_BIN" server \
  --backend-store-uri "$MLFLOW_DB_URL" \
  --artifacts-destination "$MLFLOW_DIR/artifacts" \
  --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  >"$MLFLOW_DIR/server.log" 2>&1 &
MLFLOW_PID=$!
stop_mlflow() {
  kill -TERM -- "-$MLFLOW_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 -- "-$MLFLOW_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL -- "-$MLFLOW_PID" 2>/dev/null || true
  rm -rf "$MLFLOW_DIR"
}
for _ in $(seq 1 120); do  # the first start creates the schema (alembic migrations): ~10-30 s
  if mlflow_ready; then
    break
  fi
  if ! kill -0 "$MLFLOW_PID" 2>/dev/null; then
    echo "mlflow server exited; its log:" >&2
    cat "$MLFLOW_DIR/server.log" >&2
    stop_mlflow
    return 1 2>/dev/null || exit 1
  fi
  sleep 0.5
done
if ! mlflow_ready; then
  echo "mlflow server not ready in time; its log:" >&2
  cat "$MLFLOW_DIR/server.log" >&2
  stop_mlflow
  return 1 2>/dev/null || exit 1
fi
export TRIAGE_TEST_MLFLOW_SERVER="http://127.0.0.1:$MLFLOW_PORT"
