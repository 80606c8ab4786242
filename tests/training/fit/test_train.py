"""End-to-end training on small simulated cohorts, with MLflow in a temporary folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.calibration import LogitCalibration, logit
from models.predictor import TriagePredictor
from models.scoring import score_frame
from models.spec import load_spec
from training.cohorts.simulator import run_simulation
from training.evaluation.metrics import threshold_metrics
from training.evaluation.model import evaluate_model
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import CHALLENGER, Tracking, load_predictor

N_REFERRALS = 24_000
N_POPULATION = 300_000
N_BOOT = 20


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohorts")
    run_simulation(cohort="referrals", n=N_REFERRALS, seed=5, out=root / "referrals")
    run_simulation(cohort="myeloma", n=N_POPULATION, seed=5, out=root / "myeloma")
    return {"referrals": root / "referrals", "myeloma": root / "myeloma"}


@pytest.fixture(scope="module")
def any_cancer(cohorts: dict[str, Path]) -> TrainResult:
    return train_model(load_spec("any_cancer"), TrainOptions(cohorts["referrals"], n_boot=N_BOOT))


@pytest.fixture(scope="module")
def myeloma(cohorts: dict[str, Path]) -> TrainResult:
    return train_model(load_spec("myeloma"), TrainOptions(cohorts["myeloma"], n_boot=N_BOOT))


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


def test_train_log_register_and_refuse_a_miscalibrated_model(
    any_cancer: TrainResult, tmp_path: Path
) -> None:
    tracking = Tracking(tmp_path / "var")
    logged = log_training(any_cancer, tracking)
    assert logged.version == "1"
    alias = tracking.client.get_model_version_by_alias("any_cancer", CHALLENGER)
    assert str(alias.version) == "1", "training registers the model as challenger"
    predictor, _ = load_predictor(tracking.client, "any_cancer", CHALLENGER, tmp_path / "dl")
    rows = any_cancer.periods["evaluate"].head(100)
    assert np.array_equal(
        predictor.predict(rows)["probability"].to_numpy(),
        any_cancer.predictor.predict(rows)["probability"].to_numpy(),
    ), "the registered model is the trained model"

    bad = _miscalibrated(any_cancer)
    bad_logged = log_training(bad, tracking)
    promoted, gates = promote(tracking, bad.spec, str(bad_logged.version))
    failed = {g.name for g in gates if not g.passed}
    assert not promoted, "a miscalibrated model is refused"
    assert "observed_expected" in failed, f"O/E gate must fail: {gates}"
    promoted, gates = promote(
        tracking, bad.spec, str(bad_logged.version), override_reason="test override"
    )
    assert promoted, "an override with a reason promotes"
    tags = tracking.client.get_model_version("any_cancer", str(bad_logged.version)).tags
    assert tags["promotion_override_reason"] == "test override"


def _miscalibrated(result: TrainResult) -> TrainResult:
    """The same booster with its calibration intercept moved by +1.0 log-odds (too high)."""
    c = result.predictor.calibration
    calibration = LogitCalibration(c.slope, c.intercept + 1.0, c.shift)
    predictor = TriagePredictor(
        spec=result.spec, booster=result.predictor.booster, calibration=calibration,
        thresholds=result.predictor.thresholds, reference=result.predictor.reference,
        metadata=result.provenance,
    )  # fmt: skip
    rows = result.periods["evaluate"]
    p = predictor.predict(rows)["probability"].to_numpy()
    evaluation = evaluate_model(
        rows, p, predictor.thresholds, calibration, result.spec, N_BOOT, result.spec.seed
    )
    return dataclasses.replace(result, predictor=predictor, evaluation=evaluation)


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


def test_registered_model_loads_with_mlflow_pyfunc(any_cancer: TrainResult, tmp_path: Path) -> None:
    import mlflow

    tracking = Tracking(tmp_path / "var")
    log_training(any_cancer, tracking)
    model = mlflow.pyfunc.load_model(f"models:/any_cancer@{CHALLENGER}")
    rows = any_cancer.periods["evaluate"].head(50)
    inputs = rows[[*any_cancer.spec.features.analytes, "age", "sex", "pathway"]].copy()
    inputs["age"] = inputs["age"].astype(float)
    inputs.loc[0, "haemoglobin"] = 9.8  # implausible in g/L: refused, not scored
    inputs["pathway"] = inputs["pathway"].astype(object)
    inputs.loc[1, "pathway"] = "colonoscopy"  # not a pathway: refused, as the API and replay do
    out = model.predict(inputs)
    expected = any_cancer.predictor.predict(rows)["probability"].to_numpy()
    assert np.array_equal(out["probability"].to_numpy()[2:], expected[2:])
    assert np.isnan(out["probability"][0]) and out["status"][0] == "out_of_limits"
    assert np.isnan(out["probability"][1]) and out["status"][1] == "invalid_pathway", (
        "the pyfunc routes through the frame scorer: an unknown pathway is refused, not scored"
    )
    scored = score_frame(any_cancer.predictor, inputs)
    assert np.array_equal(out["probability"].to_numpy(), scored.probability, equal_nan=True), (
        "the pyfunc's probabilities are the frame scorer's (replay's) exactly"
    )
    assert set(out["band"][2:]) <= {"green", "amber", "red"}
