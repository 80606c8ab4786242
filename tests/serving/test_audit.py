"""The audit store on SQLite and on a real PostgreSQL server (started by .ci/run): what a row
holds, many processes and threads appending to one chain, the old schema left alone, and every
stored score reproduced by re-scoring its canonical request."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from serving.audit import AUDIT, AuditRecord, AuditStore, canonical_request, pseudonymise
from serving.audit_replay import predictors_by_version, replay_rows
from serving.examples import EXAMPLE_PATIENT
from serving.middleware import current_config
from tests.serving.audit_support import (
    HMAC_KEY,
    append_from_processes,
    fresh_postgres,
    postgres_url,
    refused,
    scored,
    store_url,
)
from tests.serving.conftest import Released

__all__ = ["store_url"]  # the fixture, imported for use here


def test_pseudonyms_are_keyed_and_stable() -> None:
    assert pseudonymise("943 476 5919", "k1") == pseudonymise("943 476 5919", "k1")
    assert pseudonymise("943 476 5919", "k1") != pseudonymise("943 476 5919", "k2")
    assert pseudonymise(None, "k1") is None


def test_rows_round_trip_with_their_request_and_response(store_url: str, tmp_path: Path) -> None:
    store = AuditStore(store_url, HMAC_KEY)
    store.commit([scored("b", 0, item_request_id="client-0"), refused("b", 1, "ineligible")])
    store.commit([scored("a")])
    rows = list(store.rows())
    assert [(r["seq"], r["request_id"], r["item"]) for r in rows] == [
        (1, "b", 0), (2, "b", 1), (3, "a", 0),
    ], "one row per item, in chain order"  # fmt: skip
    first, second = store.lookup("b")
    assert store.find("b", 1) == second and store.find("b", 7) is None
    assert first["item_request_id"] == "client-0", "a batch item keeps the client's own id"
    assert (first["outcome"], first["probability"], first["band"]) == ("scored", 0.25, "red")
    request = json.loads(first["request"])
    assert request["record"]["age"] == 67 and request["pathway"] == "lower_gi"
    assert request["record"]["analytes"]["haemoglobin"] == {"value": 109, "unit": "g/L"}
    assert request["patient"] == first["patient_pseudonym"] != "p-1"
    assert json.loads(first["response"])["band"] == "red", "the body sent, to replay or show"
    assert (second["outcome"], second["base"], second["contributions"]) == ("refused", None, None)
    assert json.loads(second["reason_codes"]) == ["ineligible"]
    assert store.integrity_problems() == [] and store.count() == 3
    assert store.export_parquet(tmp_path / "audit.parquet") == 3
    exported = pd.read_parquet(tmp_path / "audit.parquet")
    assert list(exported["request_id"]) == ["b", "b", "a"] and "mac" in exported.columns


def test_the_builder_refuses_an_inconsistent_row() -> None:
    common: dict[str, Any] = {"request_id": "x", "endpoint": "score", "request": {}, "response": ""}
    with pytest.raises(ValueError, match="scored row needs"):
        AuditRecord.build(outcome="scored", probability=0.5, **common)
    with pytest.raises(ValueError, match="refused row"):
        AuditRecord.build(outcome="refused", reason_codes=[], **common)
    with pytest.raises(ValueError, match="refused row"):
        AuditRecord.build(outcome="refused", reason_codes=["ineligible"], probability=0.1, **common)


def test_the_reference_is_dropped_from_the_canonical_request() -> None:
    request = canonical_request(
        {"age": 60, "sex": "male", "analytes": {}, "patient_reference": "NHS-943"},
        pathway=None,
        patient_pseudonym="abc",
    )
    assert "NHS-943" not in json.dumps(request) and request["patient"] == "abc"


def test_an_old_audit_log_is_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, band TEXT)")
        connection.exec_driver_sql("INSERT INTO audit_log (band) VALUES ('red')")
    store = AuditStore(url, HMAC_KEY)
    store.commit([scored("new")])
    with engine.connect() as connection:
        old = connection.exec_driver_sql("SELECT band FROM audit_log").all()
    assert old == [("red",)] and store.count() == 1, "schema 1 kept as it was, beside schema 2"


def test_processes_and_threads_append_one_unbroken_sqlite_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    assert append_from_processes(url, processes=3, threads=4, per_thread=25) == [0, 0, 0]
    store = AuditStore(url, HMAC_KEY)
    report = store.verify()
    assert report.ok and report.rows == store.count() == 300, report
    assert len({r["request_id"] for r in store.rows()}) == 300, "every row, none twice"


def test_processes_and_threads_append_one_unbroken_postgres_chain() -> None:
    with fresh_postgres(postgres_url()) as url:
        assert append_from_processes(url, processes=3, threads=4, per_thread=25) == [0, 0, 0]
        store = AuditStore(url, HMAC_KEY)
        report = store.verify()
        assert report.ok and report.rows == store.count() == 300, report
        store.close()


def test_stored_scores_are_reproduced_by_rescoring(released: Released, tmp_path: Path) -> None:
    """Rows scored by the released predictors, re-scored from their canonical requests: the same
    probability, band, base and contributions to the last bit; an edited request is caught."""
    import bentoml

    from serving.release import BUNDLE_NAME, load_release

    served = load_release(Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path))
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", HMAC_KEY)
    expected = 0
    for n, (haemoglobin, crp) in enumerate([(10.9, 14), (8.1, 60), (14.2, 2), (12.0, 30)]):
        record = {
            "age": 71 - 5 * n,
            "sex": ("male", "female")[n % 2],
            "analytes": {**EXAMPLE_PATIENT["analytes"], "crp": {"value": crp, "unit": "mg/L"},
                         "haemoglobin": {"value": haemoglobin, "unit": "g/dL"}},
        }  # fmt: skip
        for model in served.values():
            pathway = "lower_gi" if "pathway" in model.predictor.spec.features.context else None
            score = model.predictor.score(record, pathway=pathway)
            assert score.eligible, score.issues
            store.commit([_scored_row(f"r{n}-{model.name}", model, score, record, pathway)])
            expected += 1
    store.commit([refused("refusal")])
    report = replay_rows(store.rows(), predictors_by_version(served))
    assert report.ok and report.checked == expected == 8, report.mismatches
    assert report.skipped == {"refused": 1}
    with store.engine.begin() as connection:
        row = connection.execute(sa.select(AUDIT).where(AUDIT.c.seq == 2)).one()
        request = json.loads(row.request)
        request["record"]["analytes"]["crp"]["value"] = 200
        connection.execute(
            sa.update(AUDIT).where(AUDIT.c.seq == 2).values(request=json.dumps(request))
        )
    report = replay_rows(store.rows(), predictors_by_version(served))
    assert {m.seq for m in report.mismatches} == {2}, "only the edited request re-scores apart"
    assert "probability" in {m.output for m in report.mismatches}


def _scored_row(request_id: str, model: Any, score: Any, record: Any, pathway: Any) -> AuditRecord:
    return AuditRecord.build(
        request_id=request_id, endpoint="score", outcome="scored",
        request=canonical_request(record, pathway=pathway, values=score.values, model=model.name),
        response={"probability": score.probability}, model_name=model.name,
        model_version=model.version, run_id=model.run_id, inputs=score.values,
        warnings=[i.code for i in score.issues], probability=score.probability,
        band=score.band, base=score.base, contributions=score.contributions,
    )  # fmt: skip


def test_service_writes_its_audit_trail_to_postgres(
    asgi_app: Any, serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five scores and one refusal (age 10: ineligible), each a row with its outcome."""
    with fresh_postgres(postgres_url()) as url:
        monkeypatch.setenv("TRIAGE_AUDIT_URL", url)
        current_config.cache_clear()
        with TestClient(asgi_app) as client:
            statuses = [
                client.post("/v1/score", json=EXAMPLE_PATIENT).status_code for _ in range(5)
            ]
            statuses.append(
                client.post("/v1/score", json={**EXAMPLE_PATIENT, "age": 10}).status_code
            )
        assert statuses.count(200) == 5 and statuses[-1] == 422
        store = AuditStore(url, current_config().hmac_key.get_secret_value())
        outcomes = [row["outcome"] for row in store.rows()]
        assert outcomes == ["scored"] * 5 + ["refused"], "a row per scored or refused request"
        assert store.verify().ok
        store.close()


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
        store = AuditStore(url)
        assert store.integrity_problems() == [] and store.head() == (0, "0" * 64)


def test_workers_opening_a_new_postgres_store_together_all_start() -> None:
    for _ in range(3):
        with fresh_postgres(postgres_url()) as url:
            assert open_at_once(url) == [0, 0, 0, 0]
            assert AuditStore(url).count() == 0 and AuditStore(url).head()[0] == 0
