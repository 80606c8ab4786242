"""Benchmark: the triage API on loopback, against MLflow's server on the same champion.

Trains and releases a `lower_gi` champion (default tree shape) from a simulated cohort in a
temporary work folder, with a second version (another seed) released as `lower_gi@challenger`
(`--pin`), starts `bentoml serve` (one worker per core) and prints:
- startup to ready (s) and resident memory per worker (MB);
- sequential single-patient score + explain latency, p50 and p99 (ms);
- throughput with explanations at 8 concurrent clients (requests/s), and errors;
- the same three figures with one shadow model (`TRIAGE_SHADOW=lower_gi@challenger`: the second
  version scores every request silently, into the audit trail), and their ratios to the figures
  without (goals: p50 at most 1.5x, throughput at least 0.6x);
- the same three figures with the PostgreSQL audit store (the configuration for several servers),
  when a server is given (`--postgres-url`, default `TRIAGE_TEST_POSTGRES_URL`; `.ci/postgres.sh`
  starts one on loopback): the audit tables go to a fresh database, dropped afterwards;
- in the same run, `mlflow models serve` predict-only latency for the same champion (p50, p99).
Both servers are measured with the same raw-socket keep-alive client (`benchmarks/drills.py`), so
the figures are the servers' and not an HTTP library's. Every loop is bounded in count and time;
all traffic stays on 127.0.0.1; the servers this script starts are stopped by PID.
Run: `.venv/bin/python benchmarks/bench_serve.py [--requests 1000] [--seconds 20]`, or with
PostgreSQL: `source .ci/postgres.sh && .venv/bin/python benchmarks/bench_serve.py; stop_postgres`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from drills import RawHttp, http_request, saturate, worker_rss_mb

from models.spec import load_spec
from serving.examples import EXAMPLE_PATIENT
from serving.server import Server, free_port, wait_until_ok

SHADOW = "lower_gi@challenger"


def percentiles(samples: list[float]) -> tuple[float, float]:
    array = np.array(samples) * 1000
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


def sequential(port: int, request: bytes, n: int, seconds: float) -> list[float]:
    """Wall time of `n` back-to-back requests on one keep-alive connection (after a warm-up)."""
    timings: list[float] = []
    deadline = time.monotonic() + seconds
    client = RawHttp(port)
    try:
        for _ in range(50):  # warm-up
            client.send(request)
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            status, body = client.send(request)
            timings.append(time.perf_counter() - started)
            assert status == 200, body[:500]
    finally:
        client.close()
    return timings


def prepare(work: Path, n: int) -> dict[str, str]:
    """Simulate, train, register, promote and release lower_gi into `work`, with a second
    version (another seed) registered as `challenger` and released for pinning (the shadow)."""
    env = {"BENTOML_HOME": str(work / "bentoml"), "TRIAGE_HOME": str(work / "var"),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
    os.environ.update(env)
    from serving.release import release_champions
    from training.cohorts.simulator import run_simulation
    from training.fit.train import TrainOptions, train_model
    from training.registry.promote import promote
    from training.registry.runs import log_training
    from training.registry.store import Tracking

    run_simulation(cohort="referrals", n=n, seed=5, out=work / "cohort")
    tracking = Tracking(work / "var")
    result = train_model(load_spec("lower_gi"), TrainOptions(work / "cohort", n_boot=20))
    logged = log_training(result, tracking)
    promote(tracking, result.spec, str(logged.version), override_reason="benchmark")
    other = train_model(load_spec("lower_gi"), TrainOptions(work / "cohort", n_boot=20, seed=6))
    challenger = log_training(other, tracking)  # registered as `challenger`
    release_champions(tracking.uri, extra=[SHADOW])
    print(f"champion: lower_gi v{logged.version}, {result.provenance['best_iteration']} trees, "
          f"{len(result.predictor.feature_names)} features; shadow: lower_gi v"
          f"{challenger.version}, {other.provenance['best_iteration']} trees")  # fmt: skip
    return {**env, "MLFLOW_TRACKING_URI": tracking.uri}


def mlflow_row() -> dict[str, object]:
    """The example patient as MLflow's pyfunc input (canonical units, age as a double)."""
    row: dict[str, object] = {"age": float(EXAMPLE_PATIENT["age"]), "sex": EXAMPLE_PATIENT["sex"]}
    for code, entry in EXAMPLE_PATIENT["analytes"].items():
        row[code] = entry["value"] * (10.0 if entry["unit"] == "g/dL" else 1.0)
    return row


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `url` (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"bench_serve_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield str(sa.engine.make_url(url).set(database=name))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def measure(env: dict[str, str], label: str, args: argparse.Namespace) -> tuple[float, float]:
    """Start a server with `env`, measure sequential latency and throughput, print, stop it;
    the sequential p50 (ms) and the throughput (requests/s)."""
    server = Server(env)
    try:
        ready = server.start(timeout=120)
        request = http_request("POST", "/v1/score", EXAMPLE_PATIENT)
        timings = sequential(server.port, request, args.requests, args.seconds)
        p50, p99 = percentiles(timings)
        done, errors = asyncio.run(saturate(server.port, request, 8, args.seconds))
        rss = sorted(worker_rss_mb(server).values())
    finally:
        server.stop()
    print(f"[{label}] triage API startup to ready: {ready:.2f} s")
    print(f"[{label}] resident memory per process (MB): {', '.join(f'{r:.0f}' for r in rss)}")
    print(f"[{label}] score+explain, sequential ({len(timings)} requests): p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms")  # fmt: skip
    print(f"[{label}] score+explain, 8 concurrent clients, {args.seconds:.0f} s: "
          f"{done / args.seconds:.0f} requests/s, {errors} errors")  # fmt: skip
    return p50, done / args.seconds


def shadow_rows(work: Path) -> int:
    """How many shadow rows the SQLite audit store of the work folder holds."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{work / 'var' / 'serving' / 'audit.db'}")
    with engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM audit_shadow").scalar()
    engine.dispose()
    return int(count or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--postgres-url", default=os.environ.get("TRIAGE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; client and server share them")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, **prepare(work, args.cohort)}
        env.pop("TRIAGE_AUDIT_URL", None)
        # `mlflow models serve` runs `uvicorn` by name: the venv's bin must be on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        p50, throughput = measure(env, "SQLite audit", args)
        s50, shadowed = measure({**env, "TRIAGE_SHADOW": SHADOW}, "SQLite audit, one shadow", args)
        print(f"one shadow ({SHADOW}, {shadow_rows(work):,} shadow rows audited) / none: "
              f"p50 {s50 / p50:.2f}x (goal <= 1.5x), throughput {shadowed / throughput:.2f}x "
              "(goal >= 0.6x)")  # fmt: skip
        if args.postgres_url:
            with fresh_database(args.postgres_url) as url:
                measure({**env, "TRIAGE_AUDIT_URL": url}, "PostgreSQL audit", args)
        else:
            print("[PostgreSQL audit] skipped: give --postgres-url (source .ci/postgres.sh)")

        port = free_port()
        started = time.monotonic()  # as for ours: from the launch
        mlflow_server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/lower_gi@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            ready = wait_until_ok(f"{base}/ping", mlflow_server, started, 180, interval=0.05)
            request = http_request("POST", "/invocations", {"dataframe_records": [mlflow_row()]})
            timings = sequential(port, request, args.requests, args.seconds)
            m50, m99 = percentiles(timings)
        finally:
            mlflow_server.terminate()
            mlflow_server.wait(timeout=30)
        print(f"mlflow models serve (predict only, same champion) startup {ready:.2f} s; "
              f"sequential p50 {m50:.2f} ms, p99 {m99:.2f} ms")  # fmt: skip
        print(f"our score+explain p50 / MLflow predict-only p50: {p50 / m50:.2f}")


if __name__ == "__main__":
    main()
