"""One whole evaluation of a set of predictions, as a JSON-ready dict (`evaluate_predictions`).

Built from `training.evaluation.metrics` and `.subgroups`: discrimination and calibration with
patient-level bootstrap CIs, the red/amber/green thresholds (with the risk in the green band),
net benefit over a grid that suits the prevalence, subgroups (AUC, O/E, rule-out sensitivity and
flags), performance by period, PPV/NPV at a deployment prevalence (legacy Leeds style) and, for
simulated cohorts, a comparison with the true risk. With `weight_col` (a case-control sample,
controls weighted 1/r_s) every figure is on the population scale and the resamples draw whole
`patient_col` groups (pass the matched sets). One bootstrap loop serves every interval.
Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from models.calibration import logit
from training.evaluation.metrics import (
    BOOT_NEWTON_STEPS,
    BOOT_NEWTON_TOL,
    NAN,
    FloatArray,
    IntArray,
    TiedScores,
    as_arrays,
    as_weights,
    auc,
    bayes_ppv_npv,
    bootstrap_weights,
    calibration_curve,
    calibration_summary,
    confusion,
    curve_bin_index,
    dot,
    interval,
    net_benefit,
    net_benefit_grid,
    newton_logistic,
    number_needed_to_test,
    rates,
    ratio,
    roc_points,
    sum_by,
    threshold_metrics,
    wilson_interval,
)
from training.evaluation.subgroups import (
    AGE_BANDS,
    FLAG_MIN_EVENTS,
    MIN_EVENTS_FOR_AUC,
    OE_RANGE,
    AgeBands,
    SubgroupStatistics,
    age_band,
    by_period,
    flagged,
    require,
    subgroup_rows,
    subgroup_table,
)
from training.json_files import json_safe

__all__ = ["CASE_CONTROL_SWEEP", "by_period", "evaluate_predictions", "oracle_summary",
           "subgroup_table"]  # fmt: skip

# The Leeds myeloma script applies these cut-offs on the case-control probability scale.
CASE_CONTROL_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
CURVE_BINS = 10
# The ROC band's false-positive rates: every 0.005 up to 0.1 (where a triage curve rises
# steeply), every 0.025 above.
ROC_BAND_FPR: FloatArray = np.unique(
    np.r_[np.linspace(0, 0.1, 21), np.linspace(0.1, 1, 37)].round(4)
)


# --------------------------------------------------------------------------- oracle


def oracle_summary(y: Any, p: Any, true_risk: Any, weights: Any = None) -> dict[str, float]:
    """Compare the model with the simulator's true risk: the AUC an oracle would reach, the gap,
    and calibration against the truth (sum of true risk / sum of p; least-squares slope of
    logit(true risk) on logit(p), 1 when the model's log-odds are neither too extreme nor too
    flat; mean absolute error). Population-weighted with `weights`."""
    y_arr, p_arr = as_arrays(y, p)
    _, truth = as_arrays(y_arr, true_risk)
    w = as_weights(weights, y_arr.size)
    ones = np.ones(y_arr.size) if w is None else w
    oracle_auc, model_auc = auc(y_arr, truth, w), auc(y_arr, p_arr, w)
    x, z, total = logit(p_arr), logit(truth), float(ones.sum())
    slope = NAN
    if y_arr.size > 1 and np.ptp(x) > 0:
        dx = x - dot(ones, x) / total
        slope = dot(ones * dx, z - dot(ones, z) / total) / dot(ones * dx, dx)
    return {
        "oracle_auc": oracle_auc,
        "model_auc": model_auc,
        "auc_gap": oracle_auc - model_auc,
        "observed_expected_vs_truth": ratio(dot(ones, truth), dot(ones, p_arr)),
        "slope_vs_truth": float(slope),
        "mean_absolute_error": ratio(dot(ones, np.abs(p_arr - truth)), total),
    }


# --------------------------------------------------------------------------- the bootstrap


def _newton_starts(
    x: FloatArray, tied: TiedScores, weights: FloatArray, start: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Warm starts: the full-sample intercept (offset model) and the full-sample (a, b) of the
    slope model, refitted here on the aggregated counts (one cheap pass)."""
    intercept0, slope0 = start
    cases, controls = tied.counts(weights)
    offset_start = (intercept0 if math.isfinite(intercept0) else 0.0, 1.0)
    slope_start = newton_logistic(
        x, cases, cases + controls, (0.0, slope0 if math.isfinite(slope0) else 1.0), True
    )
    if not math.isfinite(slope_start[1]):
        slope_start = (0.0, 1.0)
    return offset_start, slope_start


def _bootstrap(
    y: IntArray, p: FloatArray, w: FloatArray | None, groups: Any, n_boot: int, seed: int,
    start: tuple[float, float], thresholds: Mapping[str, float],
    curve_bins: IntArray | None, subgroups: SubgroupStatistics | None,
) -> dict[str, Any]:  # fmt: skip
    """Every resampled statistic from one loop over patient-level resamples: AUC, O/E, Brier,
    calibration intercept and slope, the sensitivity at each false-positive rate of
    `ROC_BAND_FPR`, the rates at each threshold, the calibration curve's observed proportions
    (weighted only) and the subgroups' AUC and O/E.

    The headline figures come from the weighted counts of cases and controls at each distinct
    predicted value, so a resample costs one bincount plus a few Newton steps, not a refit.
    """
    tied = TiedScores.of(y, p)
    values, x = tied.values, logit(tied.values)
    offset_start, slope_start = _newton_starts(x, tied, np.ones(y.size) if w is None else w, start)
    exp_neg_x, steps = np.exp(-x), (BOOT_NEWTON_STEPS, BOOT_NEWTON_TOL)
    cut = {name: int(np.searchsorted(values, t, side="left")) for name, t in thresholds.items()}
    out: dict[str, list[Any]] = {k: [] for k in ("auc", "oe", "brier", "intercept", "slope")}
    counts: dict[str, list[tuple[float, ...]]] = {name: [] for name in cut}
    curve: list[FloatArray] = []
    roc: list[FloatArray] = []
    yf = y.astype(np.float64)
    for boot in bootstrap_weights(groups, n_boot, seed):
        weights = boot if w is None else boot * w
        cases, controls = tied.counts(weights)
        total = cases + controls
        n_cases, n_controls = float(cases.sum()), float(controls.sum())
        out["auc"].append(tied.auc(cases, controls))
        out["oe"].append(ratio(n_cases, dot(total, values)))
        squared = dot(cases, (1 - values) ** 2) + dot(controls, values**2)
        out["brier"].append(ratio(squared, n_cases + n_controls))
        intercept, _ = newton_logistic(x, cases, total, offset_start, False, *steps, exp_neg_x)
        _, slope = newton_logistic(x, cases, total, slope_start, True, *steps)
        out["intercept"].append(intercept)
        out["slope"].append(slope)
        roc.append(_sensitivity_at(cases, controls, ROC_BAND_FPR))
        for name, index in cut.items():
            fn, tn = float(cases[:index].sum()), float(controls[:index].sum())
            counts[name].append((n_cases - fn, n_controls - tn, tn, fn))
        if curve_bins is not None:
            weight = sum_by(curve_bins, weights, CURVE_BINS)
            events = sum_by(curve_bins, weights * yf, CURVE_BINS)
            with np.errstate(divide="ignore", invalid="ignore"):
                curve.append(events / weight)
        if subgroups is not None:
            subgroups.add(weights)
    result: dict[str, Any] = {k: np.array(v, dtype=np.float64) for k, v in out.items()}
    result["thresholds"] = {
        name: rates(*np.array(rows, dtype=np.float64).reshape(-1, 4).T)
        for name, rows in counts.items()
    }
    result["curve"] = np.vstack(curve) if curve else None
    result["roc"] = np.vstack(roc) if roc else np.empty((0, ROC_BAND_FPR.size))
    return result


def _sensitivity_at(cases: FloatArray, controls: FloatArray, fpr: FloatArray) -> FloatArray:
    """Sensitivity at each false-positive rate `fpr` on the ROC curve of (weighted) counts per
    ascending distinct value, linear between its points (a tie is a diagonal step); NaN without
    both classes. Two cumulative sums: cheap beside the resample's Newton fits."""
    n_cases, n_controls = float(cases.sum()), float(controls.sum())
    if n_cases <= 0 or n_controls <= 0:
        return np.full(fpr.size, NAN)
    tpr_points = np.r_[0.0, np.cumsum(cases[::-1]) / n_cases]
    fpr_points = np.r_[0.0, np.cumsum(controls[::-1]) / n_controls]
    return np.asarray(np.interp(fpr, fpr_points, tpr_points), dtype=np.float64)


def _roc_band(samples: FloatArray) -> dict[str, list[float]]:
    """The pointwise 95% percentile band of sensitivity over `ROC_BAND_FPR` (NaN resamples
    ignored; empty lists without any defined resample)."""
    finite = samples[np.isfinite(samples).all(axis=1)]
    if finite.shape[0] == 0:
        return {"fpr": [], "low": [], "high": []}
    low, high = np.percentile(finite, [2.5, 97.5], axis=0)
    return {"fpr": ROC_BAND_FPR.tolist(), "low": low.tolist(), "high": high.tolist()}


# --------------------------------------------------------------------------- blocks


def _headline(
    y: IntArray, p: FloatArray, w: FloatArray | None, summary: dict[str, float],
    boot: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """AUC, Brier and calibration, each with a patient-level bootstrap 95% interval."""
    return {
        "auc": interval(auc(y, p, w), boot["auc"]),
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
        "calibration_curve": calibration_curve(y, p, CURVE_BINS, w, boot["curve"]),
        "roc": {**roc_points(y, p, weights=w), "band": _roc_band(boot["roc"])},
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


def _subgroup_frame(
    frame: pd.DataFrame, subgroups: Sequence[str], bands: AgeBands
) -> tuple[dict[str, pd.Series], list[dict[str, str]]]:
    """The subgroup columns present (age_band derived from age when absent), and those skipped."""
    if "age_band" in subgroups and "age_band" not in frame.columns and "age" in frame.columns:
        frame = frame.assign(age_band=age_band(frame["age"], bands))
    present = {c: frame[c] for c in dict.fromkeys(subgroups) if c in frame.columns}
    skipped = [
        {"column": c, "reason": "column not in the evaluation frame"}
        for c in subgroups
        if c not in frame.columns
    ]
    return present, skipped


def _net_benefit_at(
    y: IntArray, p: FloatArray, w: FloatArray | None, at: float, reason: str | None
) -> dict[str, Any]:
    point = net_benefit(y, p, np.array([at]), w).iloc[0]
    out: dict[str, Any] = {k: float(point[k]) for k in ("threshold", "model", "treat_all",
                                                        "treat_none")}  # fmt: skip
    out["reason"] = reason
    return out


def _threshold_block(
    y: IntArray, p: FloatArray, w: FloatArray | None, cuts: Mapping[str, float | None],
    samples: Mapping[str, Mapping[str, FloatArray]], bound: Literal["wilson", "bootstrap"],
    referral_threshold: float | None, choices: Mapping[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    bands = {"green": ("rule_out", cuts["rule_out"]), "red": ("rule_in", cuts["rule_in"])}
    block: dict[str, Any] = {"rule_out": cuts["rule_out"], "rule_in": cuts["rule_in"]}
    for band, (direction, t) in bands.items():
        block[band] = None if t is None else threshold_metrics(
            y, p, t, direction, weights=w, samples=samples.get(direction),  # type: ignore[arg-type]
            sensitivity_ci=bound, referral_threshold=referral_threshold,
        )  # fmt: skip
    block["sensitivity_bound"] = bound
    block["chosen"] = None if choices is None else dict(choices)
    return block


# --------------------------------------------------------------------------- the whole report


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
    net_benefit_reason: str | None = None,
    net_benefit_thresholds: Sequence[float] | None = None,
    weight_col: str | None = None,
    referral_threshold: float | None = None,
    sensitivity_target: float | None = None,
    sensitivity_bound: Literal["wilson", "bootstrap"] = "wilson",
    subgroup_min_events: int = FLAG_MIN_EVENTS,
    oe_range: tuple[float, float] = OE_RANGE,
    age_bands: AgeBands = AGE_BANDS,
    threshold_choices: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole evaluation of one set of predictions as a JSON-serialisable dict.

    `rule_out` / `rule_in` are the thresholds chosen on the calibration period, on the scale of
    `p_col` (None: that band is not offered); `threshold_choices` (the choices' `to_dict()`, by
    direction) are recorded beside them. `weight_col` puts a case-control sample on the
    population scale (controls weighted 1/r_s): then pass the matched sets as `patient_col`. For
    a legacy global-shift case-control sample pass sample-scale probabilities and
    `deployment_prevalence` instead: the `prevalence_adjusted` block gives PPV/NPV by Bayes.
    `net_benefit_at` is the quoted decision-curve point (`net_benefit_reason` says why); the
    curve covers `net_benefit_thresholds` or a grid that suits the prevalence. Subgroup levels
    with at least `subgroup_min_events` events are flagged when their rule-out sensitivity's upper
    bound is below `sensitivity_target` or their O/E CI lies outside `oe_range`. Subgroup columns
    absent from the frame are listed under `subgroups.skipped`; `oracle` needs `true_risk_col`.
    """
    require(frame, y_col, p_col, patient_col, *((weight_col,) if weight_col else ()))
    y, p = as_arrays(frame[y_col], frame[p_col])
    w = None if weight_col is None else as_weights(frame[weight_col], y.size)
    if w is not None and deployment_prevalence is not None:
        raise ValueError("give weight_col (population weights) or deployment_prevalence, not both")
    groups = frame[patient_col].to_numpy()
    notes = [] if date_col in frame.columns else [f"no {date_col!r} column: no by-period table"]
    has_truth = true_risk_col is not None and true_risk_col in frame.columns
    ones = np.ones(y.size) if w is None else w
    prevalence = ratio(dot(ones, y.astype(np.float64)), float(ones.sum()))

    columns, skipped = _subgroup_frame(frame, subgroups, age_bands)
    stats = SubgroupStatistics(y, p, columns)
    cuts = {"rule_out": rule_out, "rule_in": rule_in}
    # Rates at a threshold need resamples when weighted, or for a bootstrap sensitivity bound.
    resampled = {
        name: t
        for name, t in cuts.items()
        if t is not None
        and (w is not None or (name, sensitivity_bound) == ("rule_out", "bootstrap"))
    }
    summary = calibration_summary(y, p, w)
    boot = _bootstrap(
        y, p, w, groups, n_boot, seed, (summary["intercept"], summary["slope"]), resampled,
        None if w is None else curve_bin_index(p, CURVE_BINS), stats,
    )  # fmt: skip
    grid = np.asarray(
        net_benefit_grid(prevalence) if net_benefit_thresholds is None else net_benefit_thresholds
    )
    if 0 < net_benefit_at < 1:
        grid = np.union1d(grid, [net_benefit_at])
    rows = subgroup_rows(y, p, w, stats, rule_out, min_events_for_auc=MIN_EVENTS_FOR_AUC,
                         sensitivity_target=sensitivity_target, min_events=subgroup_min_events,
                         oe_range=oe_range)  # fmt: skip
    dated = pd.DataFrame({y_col: y, p_col: p, "_w": ones})
    if not notes:
        dated[date_col] = frame[date_col].to_numpy()
    weighting = None if w is None else {
        "weight_col": weight_col, "population": float(w.sum()),
        "population_events": dot(w, y.astype(np.float64)),
    }  # fmt: skip
    thresholds = _threshold_block(
        y, p, w, cuts, boot["thresholds"], sensitivity_bound, referral_threshold,
        threshold_choices,
    )  # fmt: skip
    result: dict[str, Any] = {
        "n": int(y.size),
        "n_patients": int(pd.Series(groups).nunique()),
        "events": int(y.sum()),
        "prevalence": prevalence,
        "n_boot": n_boot,
        "seed": seed,
        "bootstrap_groups": patient_col,
        "weighting": weighting,
        **_headline(y, p, w, summary, boot),
        "thresholds": thresholds,
        "net_benefit": net_benefit(y, p, grid, w).to_dict(orient="records"),
        "net_benefit_at": _net_benefit_at(y, p, w, net_benefit_at, net_benefit_reason),
        "subgroups": {
            "rows": rows,
            "skipped": skipped,
            "min_events_for_auc": MIN_EVENTS_FOR_AUC,
            "min_events_for_flags": subgroup_min_events,
            "sensitivity_target": sensitivity_target,
            "oe_range": list(oe_range),
            "age_bands": [band[0] for band in age_bands],
            "flagged": flagged(rows),
            "ci_method": "AUC and O/E: bootstrap percentile over the headline's resamples; "
            "rule-out sensitivity: Wilson",
        },
        "by_period": by_period(dated, y_col, p_col, date_col, weight_col="_w") if not notes else [],
        "prevalence_adjusted": None
        if deployment_prevalence is None
        else _prevalence_block(y, p, rule_out, rule_in, deployment_prevalence),
        "oracle": oracle_summary(y, p, frame[str(true_risk_col)], w) if has_truth else None,
        "notes": notes,
    }
    safe: dict[str, Any] = json_safe(result)
    return safe
