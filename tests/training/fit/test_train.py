"""End-to-end training on small simulated cohorts (shared: tests/training/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

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


def test_no_rows_score_and_explain_to_empty_arrays(any_cancer: TrainResult) -> None:
    """A replay chunk emptied by a period filter: LightGBM's contributions divide by the row
    count, so zero rows must give empty results without calling the booster."""
    for predictor in (any_cancer.predictor, any_cancer.comparator):
        none = any_cancer.periods["evaluate"].iloc[:0]
        base, contributions = predictor.explain(none)
        assert len(base) == 0 and contributions.shape == (0, len(predictor.feature_names))
        assert predictor.probability(predictor.feature_matrix(none)).shape == (0,)


def test_case_control_offsets_are_each_strata_sampling_ratio(
    myeloma: TrainResult, cohorts: dict[str, Path]
) -> None:
    """Each row's offset is log(controls sampled / population non-cases) of its 5-year age band
    and sex, recounted here from the cohort file and the simulator's strata CSV; additivity
    holds with the offset in the base."""
    assert _additivity_error(myeloma) < 1e-9, "the offset sits in the base, additivity holds"
    sample = pd.read_parquet(next(cohorts["myeloma"].glob("*_wide.parquet")))
    counts = pd.read_csv(cohorts["myeloma"] / "myeloma_strata.csv")
    sample["age_from"] = sample["age"] // 5 * 5
    controls = sample[sample["cancer"] == 0].groupby(["age_from", "sex"], observed=True).size()
    table = counts.set_index(["age_from", "sex"])
    ratio = controls / (table["population"] - table["cases"])
    rows = myeloma.periods["evaluate"]
    x = myeloma.predictor.feature_matrix(rows)
    offsets = myeloma.predictor.row_shift(x)
    assert offsets is not None
    for age, sex, offset in zip(rows["age"], rows["sex"], offsets, strict=True):
        expected = ratio.get((int(age // 5 * 5), sex))
        if expected is not None and expected > 0:
            assert offset == pytest.approx(np.log(expected), abs=1e-12)
    older = rows["age"].to_numpy() >= 80
    assert offsets[older].mean() > offsets[rows["age"].to_numpy() < 55].mean(), (
        "more controls per non-case where myeloma is commoner: the age effect comes back"
    )


def test_thresholds_meet_their_targets_on_the_calibration_period(any_cancer: TrainResult) -> None:
    spec, predictor = any_cancer.spec, any_cancer.predictor
    rows = any_cancer.periods["calibrate"]
    p = predictor.predict(rows)["probability"].to_numpy()
    y = rows["cancer"].to_numpy()
    t = predictor.thresholds
    if t.rule_out is None:  # only when no cut-off could show the target with 95% confidence
        events = int(y.sum())
        z2 = 1.959963984540054**2
        best_possible = events / (events + z2)  # Wilson lower bound with every event detected
        reason = any_cancer.provenance["thresholds"]["rule_out"]["reason"]
        assert events < spec.triage.min_events or best_possible < spec.triage.rule_out_sensitivity
        assert reason and str(events) in reason.replace(",", "")
        return
    green = threshold_metrics(y, p, t.rule_out, "rule_out")
    assert green["sensitivity"]["low"] >= spec.triage.rule_out_sensitivity, (
        "the Wilson lower bound, not only the point estimate, meets the target"
    )
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


def test_the_api_describes_a_case_control_model(myeloma: TrainResult) -> None:
    """`GET /v1/models` lists a stratified case-control model (its strata in the calibration):
    the response schema once took only numbers there and answered 500."""
    from serving.schemas import ModelInfo

    info = ModelInfo(version="1", run_id=None, **myeloma.predictor.describe())
    strata = info.calibration["strata"]
    assert isinstance(strata, dict) and len(strata["strata"]) > 10
    assert info.family == myeloma.predictor.family


def test_platt_scaling_refuses_a_model_without_a_margin() -> None:
    """scikit-learn would silently calibrate predict_proba instead of the raw margin, which is
    not affine in the explanations' log-odds: a model without decision_function is refused."""
    from sklearn.dummy import DummyClassifier

    from training.fit.family import calibrate

    x, y = pd.DataFrame({"a": np.arange(40.0)}), np.tile([0, 1], 20)
    model = DummyClassifier(strategy="prior").fit(x, y)
    assert not hasattr(model, "decision_function")
    with pytest.raises(TypeError, match="decision_function"):
        calibrate(model, x, y, load_spec("any_cancer"))
