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
from models.features import SEX_CODES
from models.predictor import TriagePredictor
from models.spec import ModelSpec
from models.triage import Thresholds
from training.evaluation.evaluate import evaluate_predictions, oracle_summary
from training.evaluation.metrics import paired_auc_difference
from training.evaluation.subgroups import AGE_BANDS, DECADE_AGE_BANDS, AgeBands

EXPLAINED_SAMPLE_ROWS = 2000  # rows explained for the report's SHAP plot (training and replay)
POPULATION_SCALE = "population (case-control sample; controls weighted by 1/r_s of their stratum)"
WEIGHT_COLUMN = "population_weight"


def sample_scale(probability: np.ndarray, calibration: LogitCalibration) -> np.ndarray:
    """Probabilities on the case-control sample's scale (undo the prevalence shift)."""
    return expit(logit(probability) - calibration.shift)


def population_weights(
    frame: pd.DataFrame, calibration: LogitCalibration, outcome: str
) -> np.ndarray:
    """Each row's weight on the population scale (`LogitCalibration.population_weights`: 1 for
    a case, 1/r_s for a control of stratum s, from its age and sex)."""
    nan = pd.Series(np.nan, index=frame.index)
    age = pd.to_numeric(frame["age"], errors="coerce") if "age" in frame else nan
    sex = pd.to_numeric(frame["sex"].map(SEX_CODES)) if "sex" in frame else nan
    as_float = [np.asarray(c, dtype=np.float64) for c in (frame[outcome], age, sex)]
    return calibration.population_weights(*as_float)


def bootstrap_groups(frame: pd.DataFrame) -> str:
    """The column the bootstrap draws whole: the matched set when present, else the patient."""
    return "matched_set" if "matched_set" in frame else "patient_id"


def subgroup_age_bands(spec: ModelSpec) -> AgeBands:
    """Ten-year bands from 40 for populations aged 40 and over, else 18-49, 50-59, ... 80+."""
    return DECADE_AGE_BANDS if spec.eligibility.min_age >= 40 else AGE_BANDS


def net_benefit_point(spec: ModelSpec, rule_in: float | None) -> tuple[float, str]:
    """The decision-curve point quoted: the guideline's referral threshold for referral cohorts,
    else the rule-in threshold (when set), and why."""
    referral = spec.triage.referral_threshold
    if spec.cohort.kind == "referrals" or rule_in is None:
        return (
            referral,
            f"the guideline's {referral * 100:g}% referral threshold (triage.referral_threshold)",
        )
    return rule_in, "the rule-in (red) threshold"


def evaluate_model(
    frame: pd.DataFrame, probability: np.ndarray, thresholds: Thresholds,
    calibration: LogitCalibration, spec: ModelSpec, n_boot: int, seed: int,
    *, choices: Mapping[str, Any] | None = None, case_control_sample: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The evaluation-period report.

    Case-control models matched on strata (`calibration.case_control`) are judged on the
    population scale: on their case-control sample (`case_control_sample`; None: when the rows
    carry a `matched_set`), controls weighted 1/r_s, resamples of whole matched sets, the
    thresholds and the oracle as they are (population scale); on rows of the population itself
    (a replay of the simulator's population table), unweighted, as any cohort. Legacy
    global-shift case-control models (`deployment_prevalence`) are judged on the sample's scale,
    with PPV/NPV at the deployment prevalence. `choices` (the threshold choices' `to_dict()` by
    direction) are recorded."""
    triage, gates = spec.triage, spec.promotion
    subgroups = tuple(dict.fromkeys((*spec.subgroups, *gates.subgroups)))
    at, reason = net_benefit_point(spec, thresholds.rule_in)
    common: dict[str, Any] = {
        "y_col": spec.outcome.column, "p_col": "probability", "date_col": spec.split.date_column,
        "subgroups": subgroups, "n_boot": n_boot, "seed": seed, "net_benefit_at": at,
        "net_benefit_reason": reason, "referral_threshold": triage.referral_threshold,
        "sensitivity_target": triage.rule_out_sensitivity,
        "sensitivity_bound": triage.sensitivity_bound,
        "subgroup_min_events": gates.subgroup_min_events, "oe_range": gates.observed_expected,
        "age_bands": subgroup_age_bands(spec), "threshold_choices": choices,
    }  # fmt: skip
    scored = frame.assign(probability=probability)
    truth = "true_risk" if "true_risk" in scored else None
    rule_out, rule_in = thresholds.rule_out, thresholds.rule_in
    sampled = "matched_set" in frame if case_control_sample is None else case_control_sample
    if spec.calibration.case_control is not None and sampled:
        scored[WEIGHT_COLUMN] = population_weights(frame, calibration, spec.outcome.column)
        evaluation = evaluate_predictions(
            scored, patient_col=bootstrap_groups(frame), true_risk_col=truth,
            rule_out=rule_out, rule_in=rule_in, weight_col=WEIGHT_COLUMN, **common,
        )  # fmt: skip
        evaluation["scale"] = POPULATION_SCALE
        if evaluation.get("oracle"):
            evaluation["oracle"]["scale"] = POPULATION_SCALE
        return evaluation
    legacy = spec.calibration.deployment_prevalence is not None
    if legacy:
        # The sample's scale: thresholds and the net-benefit point move with the probabilities;
        # the green band's risk there is not the population's, so no referral comparison.
        scored["probability"] = sample_scale(probability, calibration)
        rule_out, rule_in = (
            None if t is None else float(sample_scale(np.array([t]), calibration)[0])
            for t in (rule_out, rule_in)
        )
        at = float(sample_scale(np.array([at]), calibration)[0])
        reason = f"{reason}, on the case-control sample's scale"
        common |= {"net_benefit_at": at, "net_benefit_reason": reason, "referral_threshold": None}
    evaluation = evaluate_predictions(
        scored, patient_col="patient_id", true_risk_col=None if legacy else truth,
        rule_out=rule_out, rule_in=rule_in,
        deployment_prevalence=spec.calibration.deployment_prevalence, **common,
    )  # fmt: skip
    if legacy and truth is not None:
        evaluation["oracle"] = oracle_summary(
            frame[spec.outcome.column].to_numpy(), probability, frame[truth].to_numpy()
        )
        evaluation["oracle"]["scale"] = "population (true risks and shifted probabilities)"
    evaluation["scale"] = "case-control sample" if legacy else "cohort"
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
    """Flat numeric metrics for MLflow, named as the README's "MLflow runs" table says: AUC with
    its CI, calibration (`calibration_slope` is the evaluation's slope, never the Platt
    coefficient), the green cut-off as a test (`rule_out_*`: positive = not green) and the red
    one (`rule_in_*`: positive = red) with the predictive values of the result a patient gets
    (`non_green_ppv`, `green_npv`, `red_ppv`, `non_red_npv`), the green band's risk, flagged
    subgroup levels, the oracle (`oracle_*`) and net benefit. `prefix` names the section, e.g.
    `eval/` for the served model and `comparator/` for the other family."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and np.isfinite(value):
            out[f"{prefix}{name}"] = float(value)

    def put_interval(name: str, block: Any, bounds: tuple[str, ...] = ("low", "high")) -> None:
        block = block if isinstance(block, Mapping) else {}
        put(name, block.get("estimate"))
        for bound in bounds:
            put(f"{name}_{bound}", block.get(bound))

    put("rows", evaluation.get("n"))
    put("events", evaluation.get("events"))
    put_interval("auc", evaluation.get("auc"))
    put("brier", evaluation.get("brier"))
    calibration = evaluation.get("calibration") or {}
    ci = calibration.get("ci") or {}
    put_interval("calibration_slope", ci.get("slope") or {"estimate": calibration.get("slope")})
    put_interval(
        "calibration_intercept", ci.get("intercept") or {"estimate": calibration.get("intercept")}
    )
    put_interval(
        "observed_expected",
        ci.get("observed_expected") or {"estimate": calibration.get("observed_expected")},
    )
    put("observed_risk", calibration.get("observed"))
    put("expected_risk", calibration.get("expected"))
    put("calibration_ece", calibration.get("ece"))
    thresholds = evaluation.get("thresholds") or {}
    for band, test, results, share in (
        ("green", "rule_out", ("non_green_ppv", "green_npv"), "share_ruled_out"),
        ("red", "rule_in", ("red_ppv", "non_red_npv"), "share_expedited"),
    ):
        block = thresholds.get(band) or {}
        put(f"{test}_threshold", block.get("threshold"))
        for key, name in (
            ("sensitivity", f"{test}_sensitivity"),
            ("specificity", f"{test}_specificity"),
            ("ppv", results[0]),
            ("npv", results[1]),
        ):
            put_interval(name, block.get(key), ("low",))
        put(f"{band}_share", block.get(share))
    green = thresholds.get("green") or {}
    put_interval("green_risk", green.get("risk_in_green"), ("high",))
    subgroups = evaluation.get("subgroups")
    if isinstance(subgroups, Mapping) and "flagged" in subgroups:
        put("subgroups_flagged", len(subgroups["flagged"]))
    oracle = evaluation.get("oracle") or {}
    for key, name in (
        ("oracle_auc", "oracle_auc"),
        ("model_auc", "oracle_model_auc"),
        ("auc_gap", "oracle_auc_gap"),
        ("observed_expected_vs_truth", "oracle_observed_expected"),
        ("slope_vs_truth", "oracle_calibration_slope"),
        ("mean_absolute_error", "oracle_mean_absolute_error"),
    ):
        put(name, oracle.get(key))
    point = evaluation.get("net_benefit_at") or {}
    put("net_benefit", point.get("model"))
    put("net_benefit_threshold", point.get("threshold"))
    put_interval("auc_minus_comparator", evaluation.get("vs_baseline"))
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
