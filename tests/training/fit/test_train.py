"""End-to-end training on small simulated cohorts (shared: tests/training/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.calibration import logit
from models.predictor import TriagePredictor
from models.spec import load_spec
from tests.training.conftest import N_BOOT
from training.evaluation.metrics import threshold_metrics
from training.fit.train import TrainOptions, TrainResult, train_model


def _additivity_error(result: TrainResult) -> float:
    rows = result.periods["evaluate"].head(500)
    base, contributions = result.predictor.explain(rows)
    p = result.predictor.predict(rows)["probability"].to_numpy()
    return float(np.max(np.abs(base + contributions.sum(axis=1).to_numpy() - np.log(p / (1 - p)))))


def test_contributions_add_up_to_calibrated_log_odds(any_cancer: TrainResult) -> None:
    assert _additivity_error(any_cancer) < 1e-9, "base + sum(contributions) == logit(p)"


def test_additivity_holds_for_a_prevalence_shifted_case_control_model(
    myeloma: TrainResult,
) -> None:
    assert myeloma.predictor.calibration.shift < -5, "60/100k vs ~20% cases: a large shift"
    assert _additivity_error(myeloma) < 1e-9, "the shift sits in the base, additivity holds"
    sample_fraction = myeloma.periods["calibrate"]["cancer"].mean()
    expected = logit(6e-4) - logit(float(sample_fraction))
    assert myeloma.predictor.calibration.shift == pytest.approx(expected)


def test_thresholds_meet_their_targets_on_the_calibration_period(any_cancer: TrainResult) -> None:
    spec, predictor = any_cancer.spec, any_cancer.predictor
    rows = any_cancer.periods["calibrate"]
    p = predictor.predict(rows)["probability"].to_numpy()
    y = rows["cancer"].to_numpy()
    t = predictor.thresholds
    assert t.rule_out is not None, "a rule-out threshold exists at this size"
    green = threshold_metrics(y, p, t.rule_out, "rule_out")
    assert green["sensitivity"]["estimate"] >= spec.triage.rule_out_sensitivity
    if t.rule_in is not None:
        red = threshold_metrics(y, p, t.rule_in, "rule_in")
        assert red["ppv"]["estimate"] >= spec.triage.rule_in_ppv


def test_periods_are_temporal_and_patient_disjoint(any_cancer: TrainResult) -> None:
    periods = any_cancer.periods
    assert periods["train"]["index_date"].max() < periods["calibrate"]["index_date"].min()
    assert periods["calibrate"]["index_date"].max() < periods["evaluate"]["index_date"].min()
    seen: set[int] = set()
    for name in ("train", "stop", "calibrate", "evaluate"):
        patients = set(periods[name]["patient_id"])
        assert not patients & seen, f"{name} shares patients with an earlier period"
        seen |= patients


def test_predictor_round_trips_through_its_artifact(
    any_cancer: TrainResult, tmp_path: Path
) -> None:
    folder = any_cancer.predictor.save(tmp_path / "predictor")
    loaded = TriagePredictor.load(folder)
    rows = any_cancer.periods["evaluate"].head(200)
    assert np.array_equal(
        loaded.predict(rows)["probability"].to_numpy(),
        any_cancer.predictor.predict(rows)["probability"].to_numpy(),
    ), "the saved artifact predicts exactly as the trained object"


def test_same_inputs_and_seed_reproduce_the_metrics(
    cohorts: dict[str, Path], any_cancer: TrainResult
) -> None:
    again = train_model(load_spec("any_cancer"), TrainOptions(cohorts["referrals"], n_boot=N_BOOT))
    assert again.evaluation["auc"] == any_cancer.evaluation["auc"]
    assert again.evaluation["calibration"] == any_cancer.evaluation["calibration"]
    assert again.predictor.thresholds == any_cancer.predictor.thresholds
    assert again.provenance["cohort_digest"] == any_cancer.provenance["cohort_digest"]


def test_custom_cohort_with_its_own_columns_and_units(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    """A lab extract with its own names and g/dL haemoglobin trains through a spec mapping."""
    wide = pd.read_parquet(next(cohorts["referrals"].glob("*_wide.parquet")))
    wide = wide[wide.get("haemoglobin_unit", pd.Series("g/L", index=wide.index)) == "g/L"]
    custom = wide.rename(columns={"haemoglobin": "HGB", "platelets": "PLT", "age": "AGE_YRS"})
    custom["HGB"] = custom["HGB"] / 10.0  # this lab reports g/dL
    custom = custom.drop(columns=[c for c in custom if c.endswith("_unit")])
    path = tmp_path / "custom.parquet"
    custom.to_parquet(path)
    data = load_spec("any_cancer").model_dump(mode="json")
    data["name"] = "custom_lab"
    data["column_map"] = {
        "HGB": {"code": "haemoglobin", "unit": "g/dL"},
        "PLT": {"code": "platelets", "unit": "10^9/L"},
        "AGE_YRS": {"code": "age"},
    }
    spec_path = tmp_path / "custom_lab.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_path)
    result = train_model(spec, TrainOptions(path, n_boot=N_BOOT))
    assert result.evaluation["auc"]["estimate"] > 0.6, "the mapped cohort trains a useful model"
    hb = result.periods["train"]["haemoglobin"]
    assert 100 < hb.median() < 160, "g/dL values were converted to g/L through the mapping"


def test_long_format_trains_the_same_model_as_the_wide_table(
    cohorts: dict[str, Path], any_cancer: TrainResult
) -> None:
    """Lab extracts + index events, through the as-of selection, give the same model."""
    from_long = train_model(
        load_spec("any_cancer"), TrainOptions(cohorts["referrals"], source="long", n_boot=N_BOOT)
    )
    assert from_long.provenance["rows"] == any_cancer.provenance["rows"]
    rows = any_cancer.periods["evaluate"].head(300)
    assert np.array_equal(
        from_long.predictor.predict(rows)["probability"].to_numpy(),
        any_cancer.predictor.predict(rows)["probability"].to_numpy(),
    ), "as-of selection reproduces the wide table, so the fitted model is identical"
