"""One whole evaluation of a set of predictions, as a JSON-ready dict (`evaluate_predictions`).

Built from `training.evaluation.metrics`: discrimination and calibration with patient-level
bootstrap CIs, the red/amber/green thresholds, net benefit, subgroups (with their AUC, O/E and
rule-out sensitivity), performance by period, PPV/NPV at a deployment prevalence (Leeds myeloma
style) and, for simulated cohorts, a comparison with the true risk. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from models.calibration import logit
from training.evaluation.metrics import (
    BOOT_NEWTON_STEPS,
    NAN,
    Z95,
    FloatArray,
    IntArray,
    TiedScores,
    as_arrays,
    auc,
    auc_from_counts,
    bayes_ppv_npv,
    bootstrap_weights,
    calibration_curve,
    calibration_summary,
    confusion,
    dot,
    interval,
    net_benefit,
    newton_logistic,
    number_needed_to_test,
    ratio,
    roc_points,
    threshold_metrics,
    wilson_interval,
)
from training.json_files import json_safe

AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("18-49", 18, 50),
    ("50-59", 50, 60),
    ("60-69", 60, 70),
    ("70-79", 70, 80),
    ("80+", 80, math.inf),
)
# The Leeds myeloma script applies these cut-offs on the case-control probability scale.
CASE_CONTROL_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
NET_BENEFIT_GRID: FloatArray = np.round(np.arange(0.005, 0.5 + 1e-9, 0.005), 3)
MISSING_LEVEL = "(missing)"
SUBGROUP_MIN_EVENTS = 5


# --------------------------------------------------------------------------- subgroups, periods


def _require(frame: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns missing from the frame: {missing}")


def _hanley_mcneil(area: float, n_cases: int, n_controls: int) -> tuple[float, float]:
    """Approximate 95% CI of an AUC (Hanley & McNeil 1982); row-level, not patient-level."""
    if not math.isfinite(area) or n_cases == 0 or n_controls == 0:
        return NAN, NAN
    q1, q2 = area / (2 - area), 2 * area**2 / (1 + area)
    variance = (
        area * (1 - area) + (n_cases - 1) * (q1 - area**2) + (n_controls - 1) * (q2 - area**2)
    ) / (n_cases * n_controls)
    half = Z95 * math.sqrt(max(variance, 0.0))
    return max(area - half, 0.0), min(area + half, 1.0)


def _levels(values: pd.Series) -> list[Any]:
    """Observed levels in their natural order (category order, else sorted)."""
    present = values.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        seen = set(present.unique())
        return [c for c in values.cat.categories if c in seen]
    unique = list(present.unique())
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def _level_label(level: Any) -> str:
    """A level as text; whole-number floats (e.g. a deprivation quintile 3.0) print as 3."""
    if isinstance(level, float | np.floating) and float(level).is_integer():
        return str(int(level))
    return str(level)


def _subgroup_rows(
    frame: pd.DataFrame,
    y_col: str,
    p_col: str,
    group_cols: Sequence[str],
    rule_out_threshold: float | None,
    min_events: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for column in group_cols:
        values = frame[column]
        masks = [
            (_level_label(level), (values == level).fillna(False).to_numpy(dtype=bool))
            for level in _levels(values)
        ]
        if values.isna().any():
            masks.append((MISSING_LEVEL, values.isna().to_numpy()))
        for level, mask in masks:
            y_sub, p_sub = as_arrays(frame.loc[mask, y_col], frame.loc[mask, p_col])
            events, n = int(y_sub.sum()), int(y_sub.size)
            enough = events >= min_events and n - events > 0
            area = auc(y_sub, p_sub) if enough else NAN
            low, high = _hanley_mcneil(area, events, n - events)
            if rule_out_threshold is None:
                sensitivity = {"estimate": NAN, "low": NAN, "high": NAN}
            else:
                detected = int(np.count_nonzero(p_sub[y_sub == 1] >= rule_out_threshold))
                sensitivity = wilson_interval(detected, events)
            rows.append(
                {
                    "column": column,
                    "level": level,
                    "n": n,
                    "events": events,
                    "prevalence": ratio(events, n),
                    "auc": area,
                    "auc_low": low,
                    "auc_high": high,
                    "observed_expected": ratio(events, float(p_sub.sum())),
                    "rule_out_sensitivity": sensitivity,
                }
            )
    return rows


def subgroup_table(
    frame: pd.DataFrame,
    y_col: str,
    p_col: str,
    group_cols: Sequence[str],
    rule_out_threshold: float | None,
    min_events: int = 5,
) -> list[dict[str, Any]]:
    """Per column and level (missing values form their own level): n, events, AUC (NaN with fewer
    than `min_events` events or no non-events; Hanley-McNeil 95% CI), observed/expected and the
    rule-out sensitivity (share of events with p >= threshold) with its Wilson CI."""
    _require(frame, y_col, p_col, *group_cols)
    return _subgroup_rows(frame, y_col, p_col, group_cols, rule_out_threshold, min_events)


def by_period(
    frame: pd.DataFrame, y_col: str, p_col: str, date_col: str, freq: str = "year"
) -> list[dict[str, Any]]:
    """Per calendar year (or `freq="quarter"`): n, events, AUC, observed/expected.

    Rows with a missing date are left out.
    """
    _require(frame, y_col, p_col, date_col)
    dates = pd.to_datetime(frame[date_col], errors="coerce")
    if freq == "year":
        period = dates.dt.year.astype("Int64").astype("string")
    elif freq == "quarter":
        period = dates.dt.to_period("Q").astype("string")
    else:
        raise ValueError(f"freq must be 'year' or 'quarter', not {freq!r}")
    rows = []
    for label in sorted(period.dropna().unique()):
        mask = (period == label).fillna(False).to_numpy(dtype=bool)
        y_sub, p_sub = as_arrays(frame.loc[mask, y_col], frame.loc[mask, p_col])
        rows.append(
            {
                "period": str(label),
                "n": int(y_sub.size),
                "events": int(y_sub.sum()),
                "auc": auc(y_sub, p_sub),
                "observed_expected": ratio(float(y_sub.sum()), float(p_sub.sum())),
            }
        )
    return rows


# --------------------------------------------------------------------------- oracle


def oracle_summary(y: Any, p: Any, true_risk: Any) -> dict[str, float]:
    """Compare the model with the simulator's true risk: the AUC an oracle would reach, the gap,
    and calibration against the truth (sum of true risk / sum of p; OLS slope of logit(true
    risk) on logit(p), 1 when the model's log-odds are neither too extreme nor too flat; mean
    absolute error)."""
    y_arr, p_arr = as_arrays(y, p)
    _, truth = as_arrays(y_arr, true_risk)
    oracle_auc, model_auc = auc(y_arr, truth), auc(y_arr, p_arr)
    logit_p = logit(p_arr)
    slope = (
        float(stats.linregress(logit_p, logit(truth)).slope)
        if y_arr.size > 1 and np.ptp(logit_p) > 0
        else NAN
    )
    return {
        "oracle_auc": oracle_auc,
        "model_auc": model_auc,
        "auc_gap": oracle_auc - model_auc,
        "observed_expected_vs_truth": ratio(float(truth.sum()), float(p_arr.sum())),
        "slope_vs_truth": slope,
        "mean_absolute_error": float(np.abs(p_arr - truth).mean()) if y_arr.size else NAN,
    }


# --------------------------------------------------------------------------- the whole report


def _age_band(age: pd.Series) -> pd.Series:
    """Age bands 18-49, 50-59, 60-69, 70-79, 80+ (under 18 or missing: NaN)."""
    edges = [band[1] for band in AGE_BANDS] + [math.inf]
    labels = [band[0] for band in AGE_BANDS]
    return pd.cut(pd.to_numeric(age, errors="coerce"), edges, right=False, labels=labels)


def _bootstrap_metrics(
    y: IntArray, p: FloatArray, groups: Any, n_boot: int, seed: int, start: tuple[float, float]
) -> dict[str, FloatArray]:
    """AUC, O/E, Brier, calibration intercept and slope in each patient-level resample.

    Every statistic is computed from the weighted counts of cases and controls at each distinct
    predicted value, so a resample costs two bincounts plus a few Newton steps, not a refit.
    """
    tied = TiedScores.of(y, p)
    values, x = tied.values, logit(tied.values)
    intercept0, slope0 = start
    # Starting points: the full-sample intercept (offset model) and the full-sample (a, b) of
    # the slope model, refitted here on the aggregated counts (one cheap pass).
    cases, controls = tied.counts(np.ones(y.size))
    offset_start = (intercept0 if math.isfinite(intercept0) else 0.0, 1.0)
    slope_start = newton_logistic(
        x, cases, cases + controls, (0.0, slope0 if math.isfinite(slope0) else 1.0), True
    )
    if not math.isfinite(slope_start[1]):
        slope_start = (0.0, 1.0)
    out: dict[str, list[float]] = {k: [] for k in ("auc", "oe", "brier", "intercept", "slope")}
    for weights in bootstrap_weights(groups, n_boot, seed):
        cases, controls = tied.counts(weights)
        total = cases + controls
        out["auc"].append(auc_from_counts(cases, controls))
        out["oe"].append(ratio(float(cases.sum()), dot(total, values)))
        squared = dot(cases, (1 - values) ** 2) + dot(controls, values**2)
        out["brier"].append(ratio(squared, float(total.sum())))
        out["intercept"].append(
            newton_logistic(x, cases, total, offset_start, False, BOOT_NEWTON_STEPS, 1e-7)[0]
        )
        out["slope"].append(
            newton_logistic(x, cases, total, slope_start, True, BOOT_NEWTON_STEPS, 1e-7)[1]
        )
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def _discrimination_and_calibration(
    y: IntArray, p: FloatArray, groups: Any, n_boot: int, seed: int
) -> dict[str, Any]:
    """AUC, Brier and calibration, each with a patient-level bootstrap 95% interval."""
    summary = calibration_summary(y, p)
    boot = _bootstrap_metrics(y, p, groups, n_boot, seed, (summary["intercept"], summary["slope"]))
    return {
        "auc": interval(auc(y, p), boot["auc"]),
        "brier": summary["brier"],
        "calibration": {
            **summary,
            "ci": {
                "observed_expected": interval(summary["observed_expected"], boot["oe"]),
                "intercept": interval(summary["intercept"], boot["intercept"]),
                "slope": interval(summary["slope"], boot["slope"]),
                "brier": interval(summary["brier"], boot["brier"]),
            },
        },
        "calibration_curve": calibration_curve(y, p),
        "roc": roc_points(y, p),
    }


def _threshold_block(
    y: IntArray, p: FloatArray, rule_out: float | None, rule_in: float | None
) -> dict[str, Any]:
    return {
        "rule_out": rule_out,
        "rule_in": rule_in,
        "green": None if rule_out is None else threshold_metrics(y, p, rule_out, "rule_out"),
        "red": None if rule_in is None else threshold_metrics(y, p, rule_in, "rule_in"),
    }


def _prevalence_row(
    y: IntArray, p: FloatArray, threshold: float, prevalence: float, label: str
) -> dict[str, Any]:
    """Sample sensitivity/specificity at `threshold`, PPV/NPV at `prevalence` (Bayes)."""
    tp, fp, tn, fn = confusion(y, p, threshold)
    sensitivity, specificity = wilson_interval(tp, tp + fn), wilson_interval(tn, tn + fp)
    sens, spec = sensitivity["estimate"], specificity["estimate"]
    ppv, npv = bayes_ppv_npv(sens, spec, prevalence)
    return {
        "label": label,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "number_needed_to_test": number_needed_to_test(ppv),
        "tested_per_100k": (sens * prevalence + (1 - spec) * (1 - prevalence)) * 100_000,
        "cancers_found_per_100k": sens * prevalence * 100_000,
    }


def _prevalence_block(
    y: IntArray,
    p: FloatArray,
    rule_out: float | None,
    rule_in: float | None,
    deployment_prevalence: float,
) -> dict[str, Any]:
    """Leeds style: sensitivity and specificity from the case-control sample, PPV/NPV/NND at
    the deployment prevalence, at the model's thresholds and at the cut-offs 0.1-0.5."""
    bands = (("green (rule-out)", rule_out), ("red (rule-in)", rule_in))
    return {
        "deployment_prevalence": deployment_prevalence,
        "sample_prevalence": ratio(float(y.sum()), float(y.size)),
        "at_thresholds": [
            _prevalence_row(y, p, t, deployment_prevalence, label)
            for label, t in bands
            if t is not None
        ],
        "sweep": [
            _prevalence_row(y, p, t, deployment_prevalence, f"case-control {t:g}")
            for t in CASE_CONTROL_SWEEP
        ],
        "note": (
            "Thresholds apply to the case-control-scale probabilities. Sensitivity and "
            "specificity come from the sample; PPV, NPV, the number needed to test "
            "(NND = (TP+FP)/TP = 1/PPV) and tests and events per 100,000 are at the deployment "
            "prevalence by Bayes' rule."
        ),
    }


def _subgroup_block(
    frame: pd.DataFrame, y_col: str, p_col: str, subgroups: Sequence[str], rule_out: float | None
) -> dict[str, Any]:
    """Subgroup rows (age_band derived from age when absent); absent columns are noted."""
    if "age_band" in subgroups and "age_band" not in frame.columns and "age" in frame.columns:
        frame = frame.assign(age_band=_age_band(frame["age"]))
    present = [c for c in subgroups if c in frame.columns]
    skipped = [
        {"column": c, "reason": "column not in the evaluation frame"}
        for c in subgroups
        if c not in frame.columns
    ]
    rows = _subgroup_rows(frame, y_col, p_col, present, rule_out, SUBGROUP_MIN_EVENTS)
    return {"rows": rows, "skipped": skipped, "min_events_for_auc": SUBGROUP_MIN_EVENTS}


def _net_benefit_at(y: IntArray, p: FloatArray, at: float) -> dict[str, float]:
    point = net_benefit(y, p, np.array([at])).iloc[0]
    return {k: float(point[k]) for k in ("threshold", "model", "treat_all", "treat_none")}


def evaluate_predictions(
    frame: pd.DataFrame,
    *,
    y_col: str = "cancer",
    p_col: str = "probability",
    patient_col: str = "patient_id",
    date_col: str = "index_date",
    true_risk_col: str | None = "true_risk",
    rule_out: float | None,
    rule_in: float | None,
    subgroups: Sequence[str] = (),
    deployment_prevalence: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    net_benefit_at: float = 0.03,
) -> dict[str, Any]:
    """The whole evaluation of one set of predictions as a JSON-serialisable dict.

    `rule_out` / `rule_in` are the thresholds chosen on the calibration period, on the scale of
    `p_col` (None: that band is not offered). For case-control data pass probabilities on the
    case-control sample's scale (as the outcomes were sampled) and `deployment_prevalence`: the
    `prevalence_adjusted` block then gives PPV/NPV at that prevalence. Subgroup columns absent
    from the frame are listed under `subgroups.skipped`; `oracle` needs `true_risk_col`.
    """
    _require(frame, y_col, p_col, patient_col)
    y, p = as_arrays(frame[y_col], frame[p_col])
    groups = frame[patient_col].to_numpy()
    notes = [] if date_col in frame.columns else [f"no {date_col!r} column: no by-period table"]
    has_truth = true_risk_col is not None and true_risk_col in frame.columns
    result: dict[str, Any] = {
        "n": int(y.size),
        "n_patients": int(pd.Series(groups).nunique()),
        "events": int(y.sum()),
        "prevalence": ratio(float(y.sum()), float(y.size)),
        "n_boot": n_boot,
        "seed": seed,
        **_discrimination_and_calibration(y, p, groups, n_boot, seed),
        "thresholds": _threshold_block(y, p, rule_out, rule_in),
        "net_benefit": net_benefit(y, p, NET_BENEFIT_GRID).to_dict(orient="records"),
        "net_benefit_at": _net_benefit_at(y, p, net_benefit_at),
        "subgroups": _subgroup_block(frame, y_col, p_col, subgroups, rule_out),
        "by_period": by_period(frame, y_col, p_col, date_col) if not notes else [],
        "prevalence_adjusted": None
        if deployment_prevalence is None
        else _prevalence_block(y, p, rule_out, rule_in, deployment_prevalence),
        "oracle": oracle_summary(y, p, frame[str(true_risk_col)]) if has_truth else None,
        "notes": notes,
    }
    safe: dict[str, Any] = json_safe(result)
    return safe
