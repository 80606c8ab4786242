"""The audit store on SQLite and on a real PostgreSQL server (started by .ci/run)."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from serving.audit import AUDIT, AuditRecord, AuditStore, pseudonymise
from serving.examples import EXAMPLE_PATIENT
from serving.middleware import current_config

POSTGRES_URL = os.environ.get("TRIAGE_TEST_POSTGRES_URL")


def _postgres_url() -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    if os.environ.get("CI"):
        pytest.fail("CI must provide TRIAGE_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
    pytest.skip("no PostgreSQL server: set TRIAGE_TEST_POSTGRES_URL (CI does)")


def _record(request_id: str, item: int = 0) -> AuditRecord:
    return AuditRecord.build(
        request_id=request_id, item=item, endpoint="score", model_name="lower_gi",
        model_version="1", run_id="r", patient_pseudonym=pseudonymise("p-1", "k"),
        inputs={"haemoglobin": 109.0}, warnings=["unit_converted"], probability=0.25,
        band="red", base=-2.0, contributions={"haemoglobin": 0.4},
    )  # fmt: skip


def test_pseudonyms_are_keyed_and_stable() -> None:
    assert pseudonymise("943 476 5919", "k1") == pseudonymise("943 476 5919", "k1")
    assert pseudonymise("943 476 5919", "k1") != pseudonymise("943 476 5919", "k2")
    assert pseudonymise(None, "k1") is None


def test_sqlite_store_detects_an_altered_row(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    store.write([_record("a"), _record("b")])
    assert store.count() == 2 and store.integrity_problems() == []
    with store.engine.begin() as connection:
        connection.execute(sa.update(AUDIT).where(AUDIT.c.request_id == "b").values(band="green"))
    problems = store.integrity_problems()
    assert len(problems) == 1 and "request b" in problems[0], problems


def test_postgres_store_round_trip(tmp_path: Path) -> None:
    store = AuditStore(_postgres_url())
    request_id = uuid.uuid4().hex
    before = store.count()
    store.write([_record(request_id, 0), _record(request_id, 1)])
    assert store.count() == before + 2
    assert store.integrity_problems() == []
    assert store.export_parquet(tmp_path / "audit.parquet") == before + 2
    exported = pd.read_parquet(tmp_path / "audit.parquet")
    assert (exported["request_id"] == request_id).sum() == 2


def test_service_writes_its_audit_trail_to_postgres(
    asgi_app: Any, serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _postgres_url()
    monkeypatch.setenv("TRIAGE_AUDIT_URL", url)
    current_config.cache_clear()
    store = AuditStore(url)
    before = store.count()
    with TestClient(asgi_app) as client:
        statuses = [client.post("/v1/score", json=EXAMPLE_PATIENT).status_code for _ in range(5)]
        bad = {**EXAMPLE_PATIENT, "age": 10}
        statuses.append(client.post("/v1/score", json=bad).status_code)
    assert statuses.count(200) == 5 and statuses[-1] == 422
    assert store.count() - before == 5, "PostgreSQL holds one row per scored request"


def _open_store(url: str, barrier: Any) -> None:
    barrier.wait(timeout=60)
    AuditStore(url).count()


def open_at_once(url: str, processes: int = 4) -> list[int | None]:
    """Open one new store from several processes released together, as a server's workers do;
    their exit codes."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    started = [context.Process(target=_open_store, args=(url, barrier)) for _ in range(processes)]
    for process in started:
        process.start()
    for process in started:
        process.join(timeout=120)
    return [process.exitcode for process in started]


def test_workers_opening_a_new_sqlite_store_together_all_start(tmp_path: Path) -> None:
    for attempt in range(5):  # the race is one check-then-create window wide; try it a few times
        url = f"sqlite:///{tmp_path / f'audit-{attempt}.db'}"
        assert open_at_once(url) == [0, 0, 0, 0]
        assert AuditStore(url).integrity_problems() == []


def test_workers_opening_a_new_postgres_store_together_all_start() -> None:
    base = _postgres_url()
    engine = sa.create_engine(base)
    for _ in range(3):
        schema = f"race_{uuid.uuid4().hex[:12]}"
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            url = f"{base}?options=-csearch_path%3D{schema}"
            assert open_at_once(url) == [0, 0, 0, 0]
            assert AuditStore(url).count() == 0
        finally:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()
