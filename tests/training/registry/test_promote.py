"""Promotion against a champion: the champion re-scores the candidate's own evaluation patients.

Two simulated cohorts of the same size from different seeds share their referral ids (each id is
the row's rank by date) but not their patients: pairing the two models by id would compare
strangers. The gate must instead score the candidate's evaluation rows with the champion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.predictor import TriagePredictor
from models.scoring import score_frame
from models.spec import ModelSpec, parse_spec
from tests.small_specs import small_cohort_spec
from training.cohorts.simulator import run_simulation
from training.evaluation.metrics import auc
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.promote import (
    Champion,
    ComparisonError,
    auc_gate,
    champion_of,
    check_gates,
    compare,
    load_candidate,
    paired_difference,
    promote,
    subgroup_gate,
)
from training.registry.runs import log_training, parquet_safe
from training.registry.store import Tracking

N_REFERRALS = 20_000
N_BOOT = 10  # the training evaluation's own CIs (the gates use the spec's 1,000)


@dataclass
class Registry:
    tracking: Tracking
    spec: ModelSpec
    versions: dict[str, str]  # role -> registered version
    results: dict[str, TrainResult]


def _weak_spec() -> ModelSpec:
    """any_cancer on two analytes only (haemoglobin and WBC), no demographics or pathway."""
    data = small_cohort_spec("any_cancer").model_dump(mode="json")
    data["features"] |= {"analytes": ["haemoglobin", "wbc"], "derived": [], "demographics": []}
    data["features"]["context"] = []
    return parse_spec(data, "any_cancer.yaml (weakened: 2 features)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("promote")
    for seed in (11, 12):
        run_simulation(cohort="referrals", n=N_REFERRALS, seed=seed, out=root / f"cohort-{seed}")
    spec = small_cohort_spec("any_cancer")
    tracking = Tracking(root / "var")
    plan = {
        "champion": (spec, 11),
        "other_cohort": (spec, 12),
        "weak": (_weak_spec(), 12),
        "retrain": (spec, 11),
    }
    versions, results = {}, {}
    for role, (model_spec, seed) in plan.items():
        options = TrainOptions(root / f"cohort-{seed}", n_boot=N_BOOT, num_threads=1)
        results[role] = train_model(model_spec, options)
        versions[role] = str(log_training(results[role], tracking).version)
    promote(tracking, spec, versions["champion"], override_reason="test: the first champion")
    return Registry(tracking, spec, versions, results)


def _gate(gates: list[Any], name: str) -> Any:
    return next(g for g in gates if g.name == name)


def test_a_candidate_from_another_cohort_is_compared_on_its_own_patients(
    registry: Registry,
) -> None:
    tracking, spec = registry.tracking, registry.spec
    candidate = load_candidate(tracking, spec.name, registry.versions["other_cohort"])
    champion = champion_of(tracking, spec.name)
    assert champion is not None and champion.predictor is not None
    rows = candidate.rows
    assert rows is not None, "the run logs its evaluation rows"
    evaluate = registry.results["other_cohort"].periods["evaluate"]
    assert len(rows) == len(evaluate)
    assert np.array_equal(rows["patient_id"].to_numpy(), evaluate["patient_id"].to_numpy())

    diff = paired_difference(candidate, champion, spec.outcome.column, 1000, spec.seed)
    assert diff.n_rows == len(rows) - diff.refused_by_champion
    assert diff.refused_by_champion == 0, "the same spec refuses none of its own eligible rows"
    assert diff.n_patients == rows["patient_id"].nunique()
    assert diff.events == int(rows[spec.outcome.column].sum())
    assert diff.n_boot == 1000 and diff.grouped_by == "patient_id"
    assert diff.champion_auc > 0.6, "the champion scores the candidate's patients, not strangers"
    expected = score_frame(registry.results["champion"].predictor, rows.drop(columns="probability"))
    y = rows[spec.outcome.column].to_numpy()[expected.eligible]
    assert diff.champion_auc == pytest.approx(auc(y, expected.probability[expected.eligible]))
    own = registry.results["other_cohort"].evaluation["auc"]["estimate"]
    assert diff.candidate_auc == pytest.approx(own)

    gate = auc_gate(spec, candidate, champion)
    assert f"{diff.n_rows:,} rows" in gate.detail and "1,000" in gate.detail
    assert gate.passed == (diff.low >= -spec.promotion.auc_margin)

    table = compare(tracking, spec, n_boot=1000).set_index("version")
    row = table.loc[int(registry.versions["other_cohort"])]
    assert row["auc_diff_rows"] == diff.n_rows
    assert row["auc_diff_vs_champion"] == pytest.approx(diff.estimate)
    assert row["n_boot"] == 1000
    assert table.loc[int(registry.versions["champion"]), "auc_diff_note"] == "champion"


def test_a_weakened_candidate_is_refused(registry: Registry) -> None:
    weak = registry.results["weak"]
    promoted, gates = promote(registry.tracking, weak.spec, registry.versions["weak"])
    gate = _gate(gates, "auc_vs_champion")
    assert not promoted
    assert not gate.passed, gate.detail
    assert "non-inferior when the lower bound >= -0.01" in gate.detail


def test_a_retrain_on_the_same_cohort_and_the_champion_itself_pass(registry: Registry) -> None:
    tracking, spec = registry.tracking, registry.spec
    champion = champion_of(tracking, spec.name)
    retrain = load_candidate(tracking, spec.name, registry.versions["retrain"])
    gate = _gate(check_gates(spec, retrain, champion), "auc_vs_champion")
    assert gate.passed, gate.detail
    itself = load_candidate(tracking, spec.name, registry.versions["champion"])
    gate = _gate(check_gates(spec, itself, champion), "auc_vs_champion")
    assert gate.passed and gate.detail == "the candidate is the champion"


def test_a_run_without_evaluation_rows_fails_the_gate(registry: Registry) -> None:
    tracking, spec = registry.tracking, registry.spec
    old = dataclasses.replace(
        load_candidate(tracking, spec.name, registry.versions["other_cohort"]), rows=None
    )
    champion = champion_of(tracking, spec.name)
    assert champion is not None
    with pytest.raises(ComparisonError, match="retrain"):
        paired_difference(old, champion, spec.outcome.column, 1000, spec.seed)
    gate = auc_gate(spec, old, champion)
    assert not gate.passed and "no evaluation rows" in gate.detail


def _subgroup_rows(flags: bool, **flagged: list[str]) -> dict[str, Any]:
    rows = []
    for column, level, events in (("sex", "female", 40), ("sex", "male", 45),
                                  ("age_band", "80+", 25), ("age_band", "18-39", 3),
                                  ("lab", "north", 60)):  # fmt: skip
        row: dict[str, Any] = {"column": column, "level": level, "events": events}
        if flags:
            row["flags"] = flagged.get(f"{column}_{level}", [])
        rows.append(row)
    return {"subgroups": {"rows": rows}}


def test_the_subgroup_gate_refuses_a_flagged_level() -> None:
    spec = small_cohort_spec("any_cancer")
    passed = subgroup_gate(spec, _subgroup_rows(True))
    assert passed is not None and passed.passed
    assert "3 levels of age_band, sex with >= 20 events" in passed.detail
    failed = subgroup_gate(spec, _subgroup_rows(True, **{"age_band_80+": ["observed_expected"]}))
    assert failed is not None and not failed.passed
    assert "age_band 80+ (observed_expected, 25 events)" in failed.detail
    few = subgroup_gate(spec, _subgroup_rows(True, **{"age_band_18-39": ["rule_out_sensitivity"]}))
    assert few is not None and few.passed, "a level with fewer events than the minimum is not gated"
    ungated = subgroup_gate(spec, _subgroup_rows(True, lab_north=["observed_expected"]))
    assert ungated is not None and ungated.passed, "only the spec's gated subgroups count"
    old = subgroup_gate(spec, _subgroup_rows(False))
    assert old is not None and old.passed and "not assessed" in old.detail


def test_no_champion_means_nothing_to_compare(registry: Registry) -> None:
    candidate = load_candidate(registry.tracking, registry.spec.name, registry.versions["weak"])
    gate = auc_gate(registry.spec, candidate, None)
    assert gate.passed and "no champion" in gate.detail


def test_a_champion_that_maps_its_cohort_columns_reads_canonical_rows(registry: Registry) -> None:
    """A champion whose spec reads Hb in g/dL under its own name still scores the candidate's
    canonical rows (g/L, catalogue codes) as they are: its column map is set aside."""
    tracking, spec = registry.tracking, registry.spec
    champion = champion_of(tracking, spec.name)
    assert champion is not None and champion.predictor is not None
    data = spec.model_dump(mode="json")
    data["column_map"] = {"hb_g_dl": {"code": "haemoglobin", "unit": "g/dL"}}
    plain = champion.predictor
    mapped = TriagePredictor(
        spec=parse_spec(data, "any_cancer.yaml (Hb in g/dL)"), booster=plain.booster,
        calibration=plain.calibration, thresholds=plain.thresholds, reference=plain.reference,
    )  # fmt: skip
    candidate = load_candidate(tracking, spec.name, registry.versions["other_cohort"])
    expected = paired_difference(candidate, champion, spec.outcome.column, 1000, spec.seed)
    found = paired_difference(
        candidate, Champion(champion.version, mapped), spec.outcome.column, 1000, spec.seed
    )
    assert found == expected


def test_evaluation_rows_are_stored_parquet_safe(tmp_path: Path) -> None:
    frame = pd.DataFrame({"lab": ["north", 3, None], "age": [60.0, 70.0, 80.0]})
    safe = parquet_safe(frame)
    safe.to_parquet(tmp_path / "rows.parquet")
    assert list(safe["lab"]) == ["north", "3", None] and safe["age"].dtype == np.float64
