"""A simulated deployment: a simulated cohort's evaluation years go through a live server as FHIR
Bundles (`asOf` = the referral day, as an evaluator replaying history sends them), with a second
version scoring silently beside the champion (`TRIAGE_SHADOW`); the registry's diagnoses arrive
later as an outcomes file, and `triage monitor` must give, for the champion and for the shadow,
the same realised numbers as replay's evaluation of the same referrals by the same two versions,
computed offline from the cohort (its own `cancer` column, its own scoring path)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from serving.audit import pseudonymise
from serving.server import Server
from tests.serving.conftest import API_KEY, LOG_DIR, Released
from tests.small_specs import small_cohort_spec
from training.fit.train import TrainOptions, train_model
from training.monitor.audit_rows import Window
from training.monitor.deployment import registry_outcomes, send_referrals
from training.monitor.run import MonitorOptions, monitor
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import Tracking
from training.replay.options import ReplayOptions
from training.replay.run import replay

MODEL = "any_cancer"
SHADOW = f"{MODEL}@challenger"
RELEASE = """
import sys
from serving.release import release_champions
release_champions(sys.argv[1], extra=[sys.argv[2]])
"""
HMAC_KEY = "monitor-test-hmac-5d1c"
N_REFERRALS = 900
N_BOOT, SEED = 50, 11
TODAY = datetime.now(UTC).date()


def release_with_shadow(released: Released, root: Path) -> Tracking:
    """A registry and BentoML store of their own: the session's any_cancer as v1 (champion) and
    another, trained with another seed, as v2 (challenger), released with `--pin` (in a child
    process: the session's BentoML store stays as it was)."""
    tracking = Tracking(root / "registry")
    log_training(released.results[MODEL], tracking)
    promote(tracking, released.results[MODEL].spec, "1", override_reason="test fixture")
    cohort = released.tracking.workdir.parent / "cohort"
    other = train_model(small_cohort_spec(MODEL), TrainOptions(cohort, n_boot=10, seed=99))
    assert str(log_training(other, tracking).version) == "2"
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    done = subprocess.run([sys.executable, "-c", RELEASE, tracking.uri, SHADOW], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return tracking


@pytest.fixture(scope="module")
def deployment(released: Released, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Referrals of the evaluation years (one per patient) scored through a live server with a
    shadow, then a few recent ones, pinned to v1 (no shadow), whose horizon is still open."""
    root = tmp_path_factory.mktemp("deployment")
    tracking = release_with_shadow(released, root)
    spec = released.results[MODEL].spec
    cohort = released.cohort
    later = cohort.loc[pd.to_datetime(cohort["index_date"]).dt.date >= spec.split.evaluate.start]
    rows = later.drop_duplicates("patient_id").head(N_REFERRALS).reset_index(drop=True)
    env = {**os.environ, "TRIAGE_HOME": str(root / "var"), "TRIAGE_API_KEYS": API_KEY,
           "TRIAGE_HMAC_KEY": HMAC_KEY, "BENTOML_HOME": str(root / "bentoml"),
           "TRIAGE_SHADOW": SHADOW}  # fmt: skip
    server = Server(env, log=LOG_DIR / "monitor-server.log")
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as client:
            statuses = send_referrals(client, rows, MODEL)
            # scored ten days ago, pinned to v1 (so no shadow): horizons not yet elapsed
            statuses += send_referrals(client, rows.tail(12), f"{MODEL}/1",
                                       as_of=TODAY - timedelta(days=10))  # fmt: skip
    finally:
        server.stop()
    rows.to_parquet(root / "history.parquet")
    return {"root": root, "rows": rows, "statuses": statuses, "tracking": tracking,
            "audit_url": f"sqlite:///{root / 'var' / 'serving' / 'audit.db'}"}  # fmt: skip


def outcomes_file(rows: pd.DataFrame, scored: set[Any], path: Path) -> dict[str, int]:
    """The registry's diagnoses of these patients (inside or beyond the horizon), plus the rows
    a real extract brings: a repeat, a year-only date, a text that is no date, a patient never
    scored, a blank reference. Returns the counts the monitor must report per reason (`scored`:
    the patients the server scored at least once; the others' diagnoses match no score)."""
    frame = registry_outcomes(rows)
    diagnosed = rows.loc[rows["diagnosis_date"].notna()]
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
    root, rows, tracking = deployment["root"], deployment["rows"], deployment["tracking"]
    statuses = deployment["statuses"]
    assert {status for _, status in statuses} == {200, 422}, "scores and coded refusals only"
    scored = {patient for patient, status in statuses if status == 200}
    expected_reasons = outcomes_file(rows, scored, root / "outcomes.csv")
    spec = released.results[MODEL].spec
    result = monitor(tracking, MonitorOptions(
        model=MODEL, out=root / "monitor", audit_url=deployment["audit_url"], hmac_key=HMAC_KEY,
        window=Window(None, None, spec.split.time_zone), policy=spec,
        outcomes=root / "outcomes.csv", follow_up_end=TODAY, n_boot=N_BOOT, seed=SEED,
    ))  # fmt: skip
    replayed = replay(tracking, [f"{MODEL}/1", f"{MODEL}/2"], ReplayOptions(
        cohort=root / "history.parquet", out=root / "replay", n_boot=N_BOOT, seed=SEED,
    ))  # fmt: skip
    report = result.report
    linked = report["outcomes"]
    assert linked["excluded"] == expected_reasons
    recent_scored = sum(status == 200 for _, status in statuses[-12:])
    assert linked["scores_open"] == recent_scored  # the recent requests, horizons not elapsed
    blocks = {(b["role"], b["version"]): b for b in report["versions"]}
    assert set(blocks) == {("served", "1"), ("shadow", "2")}
    for role, version, offline in (("served", "1", replayed.models[0]),
                                   ("shadow", "2", replayed.models[1])):  # fmt: skip
        realised = blocks[(role, version)]["realised"]
        assert offline.evaluation is not None and realised is not None
        tally = offline.summary.tally
        assert realised["n"] == int(tally.loc[tally["status"] == "scored", "count"].sum())
        for key in ("n", "n_patients", "events", "prevalence", "auc", "brier", "calibration",
                    "thresholds", "by_period", "net_benefit", "net_benefit_at"):  # fmt: skip
            assert _same(realised[key], offline.evaluation[key]), (role, key)
        mine = {(r["column"], r["level"]): r for r in realised["subgroups"]["rows"]}
        theirs = {(r["column"], r["level"]): r for r in offline.evaluation["subgroups"]["rows"]
                  if r["column"] in {"sex", "age_band"}}  # fmt: skip
        assert theirs and all(_same(mine[k], v) for k, v in theirs.items())
        assert realised["events"] > 0
    (agreement,) = report["shadow_agreement"]
    paired = pd.read_parquet(root / "replay" / f"scores_{MODEL}_v1.parquet").merge(
        pd.read_parquet(root / "replay" / f"scores_{MODEL}_v2.parquet"),
        on=["patient_id", "referral_id"],
        suffixes=("_1", "_2"),
    )
    both = paired.loc[(paired["status_1"] == "scored") & (paired["status_2"] == "scored")]
    expected = pd.crosstab(both["band_1"], both["band_2"])
    assert agreement["both_scored"] == len(both)
    for served_band, row in expected.iterrows():
        for shadow_band, count in row.items():
            assert agreement["bands"][served_band][shadow_band] == count
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
