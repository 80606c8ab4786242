"""What the audit tests share: stores on SQLite and on a real PostgreSQL server (started by
.ci/run; a fresh schema per test), rows built by hand, and several processes appending at once."""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serving.audit import AuditRecord, AuditStore, canonical_request, pseudonymise

POSTGRES_URL = os.environ.get("TRIAGE_TEST_POSTGRES_URL")
HMAC_KEY = "audit-test-hmac-key"


def postgres_url() -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    if os.environ.get("CI"):
        pytest.fail("CI must provide TRIAGE_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
    pytest.skip("no PostgreSQL server: set TRIAGE_TEST_POSTGRES_URL (CI does)")


@contextmanager
def fresh_postgres(base: str) -> Iterator[str]:
    """A URL whose tables live in a new, empty schema (dropped afterwards): a test that tampers
    with rows or counts a whole chain must not meet another test's."""
    engine = sa.create_engine(base)
    schema = f"audit_{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store's URL, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        with fresh_postgres(postgres_url()) as url:
            yield url


def scored(request_id: str, item: int = 0, band: str = "red", **extra: Any) -> AuditRecord:
    """A scored row as the service would build it."""
    record = {
        "age": 67,
        "sex": "female",
        "analytes": {"haemoglobin": {"value": 109, "unit": "g/L"}},
    }
    pseudonym = pseudonymise("p-1", HMAC_KEY)
    return AuditRecord.build(
        request_id=request_id, item=item, endpoint="score", outcome="scored",
        request=canonical_request(record, pathway="lower_gi", values={"haemoglobin": 109.0},
                                  patient_pseudonym=pseudonym, model="lower_gi"),
        response={"request_id": request_id, "probability": 0.25, "band": band},
        model_name="lower_gi", model_version="1", run_id="r", patient_pseudonym=pseudonym,
        inputs={"haemoglobin": 109.0}, warnings=["unit_converted"], probability=0.25, band=band,
        base=-2.0, contributions={"haemoglobin": 0.4}, **extra,
    )  # fmt: skip


def refused(request_id: str, item: int = 0, code: str = "unknown_model") -> AuditRecord:
    """A refused row: no model (an unknown one was asked for), no score."""
    record = {"age": 67, "sex": "female", "analytes": {}}
    return AuditRecord.build(
        request_id=request_id, item=item, endpoint="score", outcome="refused",
        reason_codes=[code], request=canonical_request(record, pathway=None, model="nope"),
        response={"request_id": request_id, "error": {"code": code}},
    )  # fmt: skip


def _append(url: str, tag: str, threads: int, per_thread: int, barrier: Any) -> None:
    store = AuditStore(url, HMAC_KEY)
    barrier.wait(timeout=60)

    def work(thread: int) -> None:
        for n in range(per_thread):
            store.commit([scored(f"{tag}-{thread}-{n}")])

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.close()


def append_from_processes(url: str, processes: int, threads: int, per_thread: int) -> list[Any]:
    """`processes` x `threads` appenders released together, each committing `per_thread`
    single-row requests to one store; the processes' exit codes."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    started = [
        context.Process(target=_append, args=(url, f"p{p}", threads, per_thread, barrier))
        for p in range(processes)
    ]
    for process in started:
        process.start()
    for process in started:
        process.join(timeout=300)
    return [process.exitcode for process in started]
