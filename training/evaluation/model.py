"""A trained model judged: its evaluation-period report (`evaluate_model`, also what replay
reports), the explained sample behind the report's SHAP plot, the flat metrics logged to MLflow,
and the paired comparison of two models on the same rows (promotion, side-by-side replay)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.calibration import LogitCalibration, expit, logit
from models.predictor import TriagePredictor
from models.spec import ModelSpec
from models.triage import Thresholds
from training.evaluation.evaluate import evaluate_predictions, oracle_summary
from training.evaluation.metrics import paired_auc_difference

EXPLAINED_SAMPLE_ROWS = 2000  # rows explained for the report's SHAP plot (training and replay)


def sample_scale(probability: np.ndarray, calibration: LogitCalibration) -> np.ndarray:
    """Probabilities on the case-control sample's scale (undo the prevalence shift)."""
    return expit(logit(probability) - calibration.shift)


def evaluate_model(
    frame: pd.DataFrame, probability: np.ndarray, thresholds: Thresholds,
    calibration: LogitCalibration, spec: ModelSpec, n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The evaluation-period report. Case-control models are judged on the sample's scale
    (where outcomes were sampled), with PPV/NPV at the deployment prevalence, and their oracle
    comparison on the population scale (where true risks live)."""
    case_control = spec.is_case_control
    scored = frame.assign(probability=probability)
    rule_out, rule_in = thresholds.rule_out, thresholds.rule_in
    if case_control:
        scored["probability"] = sample_scale(probability, calibration)
        rule_out, rule_in = (
            None if t is None else float(sample_scale(np.array([t]), calibration)[0])
            for t in (rule_out, rule_in)
        )
    has_truth = "true_risk" in scored and not case_control
    evaluation = evaluate_predictions(
        scored, y_col=spec.outcome.column, p_col="probability", patient_col="patient_id",
        date_col=spec.split.date_column, true_risk_col="true_risk" if has_truth else None,
        rule_out=rule_out, rule_in=rule_in, subgroups=spec.subgroups,
        deployment_prevalence=spec.calibration.deployment_prevalence, n_boot=n_boot, seed=seed,
    )  # fmt: skip
    if case_control and "true_risk" in frame:
        evaluation["oracle"] = oracle_summary(
            frame[spec.outcome.column].to_numpy(), probability, frame["true_risk"].to_numpy()
        )
        evaluation["oracle"]["scale"] = "population (true risks and shifted probabilities)"
    evaluation["scale"] = "case-control sample" if case_control else "cohort"
    return evaluation


def explanation_sample(
    predictor: TriagePredictor, frame: pd.DataFrame, seed: int, rows: int = EXPLAINED_SAMPLE_ROWS
) -> pd.DataFrame:
    """Calibrated contributions and feature values of a random evaluation sample (for plots)."""
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed)
    base, contributions = predictor.explain(sample)
    values = predictor.feature_frame(sample)
    return pd.concat(
        [
            contributions.add_prefix("contrib__").reset_index(drop=True),
            values.add_prefix("value__").reset_index(drop=True),
            pd.DataFrame({"base": base}),
        ],
        axis=1,
    )


def summary_metrics(evaluation: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flat numeric metrics for MLflow (AUC with CI, calibration, thresholds, oracle)."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and np.isfinite(value):
            out[f"{prefix}{name}"] = float(value)

    auc = evaluation.get("auc", {})
    put("auc", auc.get("estimate"))
    put("auc_low", auc.get("low"))
    put("auc_high", auc.get("high"))
    put("brier", evaluation.get("brier"))
    for key, value in evaluation.get("calibration", {}).items():
        put(key, value)
    for band in ("green", "red"):
        block = evaluation.get("thresholds", {}).get(band) or {}
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            put(f"{band}_{key}", (block.get(key) or {}).get("estimate"))
            put(f"{band}_{key}_low", (block.get(key) or {}).get("low"))
        put(f"{band}_share", block.get("share_ruled_out", block.get("share_expedited")))
    for key, value in (evaluation.get("oracle") or {}).items():
        put(f"oracle_{key}", value)
    put("net_benefit", evaluation.get("net_benefit_at", {}).get("model"))
    return out


@dataclass(frozen=True)
class Paired:
    """Two models' predictions joined on the rows both scored."""

    rows: pd.DataFrame  # A's columns, then B's with the suffix `_b` (e.g. `probability_b`)
    known: pd.DataFrame  # the joined rows with a known outcome
    auc_difference: dict[str, float] | None  # A - B; None without both outcomes


def pair_predictions(
    a: pd.DataFrame, b: pd.DataFrame, *, key: str, outcome: str, n_boot: int, seed: int
) -> Paired:
    """Join A's and B's predictions on `key` and compare their AUC on the same rows: the paired
    difference A - B with a patient-level bootstrap CI (`patient_id` groups the resamples).
    `a` carries the outcome and `patient_id`; both carry `probability`."""
    rows = a.merge(b, on=key, suffixes=("", "_b"))
    known = rows[rows[outcome].notna()]
    difference = None
    if not known.empty and known[outcome].nunique() >= 2:
        difference = paired_auc_difference(
            known[outcome].to_numpy(np.int64),
            known["probability"].to_numpy(),
            known["probability_b"].to_numpy(),
            known["patient_id"].to_numpy(),
            n_boot=n_boot,
            seed=seed,
        )
    return Paired(rows, known, difference)
