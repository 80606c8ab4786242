"""A simulated deployment: a simulated cohort's evaluation years go through a live server as FHIR
Bundles (`asOf` = the referral day, as an evaluator replaying history sends them), the
registry's diagnoses arrive later as an outcomes file, and `triage monitor` must give the same
realised numbers as replay's evaluation of the same referrals, computed offline from the cohort
(its own `cancer` column, its own scoring path)."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from models.analytes import CATALOGUE
from serving.audit import pseudonymise
from serving.server import Server
from tests.serving.conftest import API_KEY, LOG_DIR, Released
from training.monitor.audit_rows import Window
from training.monitor.run import MonitorOptions, monitor
from training.replay.options import ReplayOptions
from training.replay.run import replay

MODEL = "any_cancer"
HMAC_KEY = "monitor-test-hmac-5d1c"
N_REFERRALS = 900
N_BOOT, SEED = 50, 11
TODAY = datetime.now(UTC).date()


def bundle(row: pd.Series, as_of: date, sample: date) -> dict[str, Any]:
    """One referral as an EHR would send it: its Patient and a LOINC/UCUM Observation per result
    (haemoglobin in the unit the cohort recorded)."""
    birth = as_of.replace(year=as_of.year - int(row["age"]))
    patient = {"resourceType": "Patient", "id": f"p{row['patient_id']}", "gender": row["sex"],
               "birthDate": birth.isoformat()}  # fmt: skip
    entries = [{"resource": patient}]
    for analyte in CATALOGUE:
        code = analyte.code
        if code not in row or pd.isna(row[code]):
            continue
        unit = str(row.get(f"{code}_unit") or analyte.unit)
        entries.append({"resource": {
            "resourceType": "Observation", "id": f"o{row['referral_id']}-{code.replace('_', '-')}",
            "status": "final", "subject": {"reference": f"Patient/p{row['patient_id']}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": analyte.loinc}]},
            "effectiveDateTime": sample.isoformat(),
            "valueQuantity": {"value": float(row[code]), "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit},
        }})  # fmt: skip
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def query(row: pd.Series, as_of: date) -> dict[str, str]:
    return {"model": MODEL, "pathway": str(row["pathway"]), "asOf": as_of.isoformat()}


@pytest.fixture(scope="module")
def deployment(released: Released, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Referrals of the evaluation years (one per patient) scored through a live server, then
    a few recent ones whose horizon is still open."""
    root = tmp_path_factory.mktemp("deployment")
    spec = released.results[MODEL].spec
    cohort = released.cohort
    later = cohort.loc[pd.to_datetime(cohort["index_date"]).dt.date >= spec.split.evaluate.start]
    rows = later.drop_duplicates("patient_id").head(N_REFERRALS).reset_index(drop=True)
    env = {**os.environ, "TRIAGE_HOME": str(root / "var"), "TRIAGE_API_KEYS": API_KEY,
           "TRIAGE_HMAC_KEY": HMAC_KEY}  # fmt: skip
    server = Server(env, log=LOG_DIR / "monitor-server.log")
    statuses = []
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as client:
            for _, row in rows.iterrows():
                as_of = pd.Timestamp(row["index_date"]).date()
                sample = pd.Timestamp(row["sample_date"]).date()
                answer = client.post("/v1/fhir/score", json=bundle(row, as_of, sample),
                                     params=query(row, as_of))  # fmt: skip
                statuses.append((row["patient_id"], answer.status_code))
            recent = rows.tail(12)
            for _, row in recent.iterrows():  # scored this month: horizons not yet elapsed
                as_of = TODAY - timedelta(days=10)
                answer = client.post("/v1/fhir/score", json=bundle(row, as_of, as_of),
                                     params=query(row, as_of))  # fmt: skip
                statuses.append((row["patient_id"], answer.status_code))
    finally:
        server.stop()
    rows.to_parquet(root / "history.parquet")
    return {"root": root, "rows": rows, "statuses": statuses,
            "audit_url": f"sqlite:///{root / 'var' / 'serving' / 'audit.db'}"}  # fmt: skip


def outcomes_file(rows: pd.DataFrame, scored: set[Any], path: Path) -> dict[str, int]:
    """The registry's diagnoses of these patients (inside or beyond the horizon), plus the rows
    a real extract brings: a repeat, a year-only date, a text that is no date, a patient never
    scored, a blank reference. Returns the counts the monitor must report per reason (`scored`:
    the patients the server scored at least once; the others' diagnoses match no score)."""
    diagnosed = rows.loc[rows["diagnosis_date"].notna()]
    frame = pd.DataFrame({
        "patient_reference": [f"Patient/p{p}" for p in diagnosed["patient_id"]],
        "diagnosis_date": pd.to_datetime(diagnosed["diagnosis_date"]).dt.strftime("%Y-%m-%d"),
        "site": diagnosed["cancer_site"].astype("string").fillna(""),
    })  # fmt: skip
    control = rows.loc[rows["diagnosis_date"].isna(), "patient_id"].iloc[0]
    noise = pd.DataFrame({
        "patient_reference": [frame["patient_reference"].iloc[0], f"Patient/p{control}",
                              f"Patient/p{control}", "Patient/never-scored", ""],
        "diagnosis_date": [frame["diagnosis_date"].iloc[0], "2016", "not recorded",
                           "2016-03-01", "2016-03-01"],
        "site": [frame["site"].iloc[0], "lung", "lung", "lung", "lung"],
    })  # fmt: skip
    pd.concat([frame, noise], ignore_index=True).to_csv(path, index=False)
    unscored = int((~diagnosed["patient_id"].isin(scored)).sum())
    return {"duplicate": 1, "imprecise_date": 1, "unparseable_date": 1,
            "no_audited_score": 1 + unscored,
            "missing_reference": 1, "after_follow_up_end": 0}  # fmt: skip


def test_monitor_realised_metrics_equal_replay_of_the_same_referrals(
    deployment: dict[str, Any], released: Released
) -> None:
    root, rows = deployment["root"], deployment["rows"]
    statuses = deployment["statuses"]
    assert {status for _, status in statuses} == {200, 422}, "scores and coded refusals only"
    scored = {patient for patient, status in statuses if status == 200}
    expected_reasons = outcomes_file(rows, scored, root / "outcomes.csv")
    spec = released.results[MODEL].spec
    result = monitor(released.tracking, MonitorOptions(
        model=MODEL, out=root / "monitor", audit_url=deployment["audit_url"], hmac_key=HMAC_KEY,
        window=Window(None, None, spec.split.time_zone), policy=spec,
        outcomes=root / "outcomes.csv", follow_up_end=TODAY, n_boot=N_BOOT, seed=SEED,
    ))  # fmt: skip
    replayed = replay(released.tracking, [f"{MODEL}/1"], ReplayOptions(
        cohort=root / "history.parquet", out=root / "replay", n_boot=N_BOOT, seed=SEED,
    ))  # fmt: skip
    report = result.report
    linked = report["outcomes"]
    assert linked["excluded"] == expected_reasons
    recent_scored = sum(status == 200 for _, status in statuses[-12:])
    assert linked["scores_open"] == recent_scored  # the recent requests, horizons not elapsed
    offline = replayed.models[0].evaluation
    realised = report["versions"][0]["realised"]
    assert report["versions"][0]["role"] == "served"
    assert offline is not None and realised is not None
    tally = replayed.models[0].summary.tally
    assert realised["n"] == int(tally.loc[tally["status"] == "scored", "count"].sum())
    for key in ("n", "n_patients", "events", "prevalence", "auc", "brier", "calibration",
                "thresholds", "by_period", "net_benefit", "net_benefit_at"):  # fmt: skip
        assert _same(realised[key], offline[key]), key
    mine = {(r["column"], r["level"]): r for r in realised["subgroups"]["rows"]}
    theirs = {(r["column"], r["level"]): r for r in offline["subgroups"]["rows"]
              if r["column"] in {"sex", "age_band"}}  # fmt: skip
    assert theirs and all(_same(mine[k], v) for k, v in theirs.items())
    assert realised["events"] > 0
    json.loads((root / "monitor" / "monitor.json").read_text())  # written, valid JSON


def test_the_independent_count_of_realised_cancers(deployment: dict[str, Any]) -> None:
    """The realised cancers, counted by hand from the cohort: a diagnosis on the referral day or
    within 365 days after it (the simulator's own `cancer` flag must agree)."""
    rows = deployment["rows"]
    gap = (pd.to_datetime(rows["diagnosis_date"]) - pd.to_datetime(rows["index_date"])).dt.days
    by_hand = ((gap >= 0) & (gap <= 365)).astype(int)
    assert (by_hand == rows["cancer"].astype(int)).all()
    assert pseudonymise("Patient/p1", HMAC_KEY) != pseudonymise("Patient/p1", "another key")


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and floats to 1e-12 (JSON round trips keep them exact)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        both_nan = math.isnan(float(a)) and math.isnan(float(b))
        return both_nan or bool(np.isclose(float(a), float(b), rtol=1e-12, atol=1e-12))
    return bool(a == b)
