"""The registry wing: logging, registration, promotion gates and the MLflow pyfunc face."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from models.calibration import LogitCalibration
from models.predictor import TriagePredictor
from models.scoring import score_frame
from tests.training.conftest import N_BOOT
from training.evaluation.model import evaluate_model
from training.fit.train import TrainResult
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import CHALLENGER, Tracking, load_predictor


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
