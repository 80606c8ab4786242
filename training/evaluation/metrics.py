"""The metrics of predicted cancer probabilities: pure functions, no I/O.

Discrimination (AUC with a patient-level bootstrap CI, paired AUC differences), calibration
(observed/expected, calibration intercept and slope, ECE, Brier, binned curve), thresholds
(`training.evaluation.thresholds`: choosing the red/amber/green cut-offs; sensitivity,
specificity, PPV, NPV and the risk in the green band at them), PPV/NPV at another prevalence by
Bayes' rule, net benefit and ROC points. `training.evaluation.evaluate` assembles them.

Conventions: `y` is 0/1 (1 = cancer), `p` a probability in [0, 1]. A test is positive when
`p >= threshold`: green (rule-out) is `p < rule_out`, red (rule-in) is `p >= rule_in`.
Optional `weights` put a case-control sample on the population scale: 1 for a case, 1/r_s for a
control of stratum s (r_s = the share of the stratum's non-cases sampled as controls), so every
figure is the population's. Every interval is a dict `{"estimate", "low", "high"}` (95%);
undefined values are NaN, not errors. Bootstrap resamples are drawn by patient (all of a patient's
rows together; for case-control data by matched set) from one seeded generator, so
`bootstrap_indices`, `auc_ci`, `paired_auc_difference` and `evaluate_predictions` see the same
resamples for the same groups and seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from models.calibration import logit
from training.evaluation.basics import (
    NAN,
    NO_INTERVAL,
    Z95,
    Direction,
    FloatArray,
    IntArray,
    Interval,
    TiedScores,
    as_arrays,
    as_weights,
    auc_from_counts,
    bootstrap_indices,
    bootstrap_weights,
    dot,
    interval,
    patient_codes,
    ratio,
    sum_by,
    weighted_auc,
    wilson_bounds,
    wilson_interval,
)
from training.evaluation.thresholds import (
    ThresholdChoice,
    bayes_ppv_npv,
    choose_rule_in,
    choose_rule_in_threshold,
    choose_rule_out,
    choose_rule_out_threshold,
    confusion,
    number_needed_to_test,
    rates,
    threshold_metrics,
)

__all__ = [
    "BOOT_NEWTON_STEPS", "BOOT_NEWTON_TOL", "NAN", "NO_INTERVAL", "Z95", "Direction", "FloatArray",
    "IntArray",
    "Interval", "ThresholdChoice", "TiedScores", "as_arrays", "as_weights", "auc", "auc_ci",
    "auc_from_counts", "bayes_ppv_npv", "bootstrap_indices", "bootstrap_weights", "brier",
    "calibration_curve", "calibration_summary", "choose_rule_in", "choose_rule_in_threshold",
    "choose_rule_out", "choose_rule_out_threshold", "confusion", "curve_bin_index", "dot",
    "interval", "net_benefit", "net_benefit_grid", "newton_logistic", "number_needed_to_test",
    "paired_auc_difference", "patient_codes", "rates", "ratio", "roc_points", "sum_by",
    "threshold_metrics",
    "weighted_auc", "wilson_bounds", "wilson_interval",
]  # fmt: skip

# Bootstrap refits stop after a Newton step below BOOT_NEWTON_TOL: convergence is quadratic, so
# the error left is ~1e-10. From the full-sample fit that takes 3 steps on a large sample (checked
# on 125,000 rows: 1e-14); small or extreme resamples take more, up to BOOT_NEWTON_STEPS.
BOOT_NEWTON_STEPS = 25
BOOT_NEWTON_TOL = 1e-5


# --------------------------------------------------------------------------- basic metrics


def auc(y: Any, p: Any, weights: Any = None) -> float:
    """Area under the ROC curve (sklearn; weighted Mann-Whitney with `weights`); NaN when only
    one class is present."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return NAN
    w = as_weights(weights, y_arr.size)
    if w is not None:
        return weighted_auc(y_arr, p_arr, w)
    return float(roc_auc_score(y_arr, p_arr))


def brier(y: Any, p: Any, weights: Any = None) -> float:
    """(Weighted) mean squared error of the probabilities; NaN for no rows."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.size == 0:
        return NAN
    w = as_weights(weights, y_arr.size)
    squared = (y_arr - p_arr) ** 2
    return float(squared.mean() if w is None else dot(w, squared) / w.sum())


def auc_ci(
    y: Any, p: Any, groups: Any, n_boot: int = 200, seed: int = 0, weights: Any = None
) -> dict[str, float]:
    """AUC with a patient-level (or matched-set) bootstrap 95% percentile interval."""
    y_arr, p_arr = as_arrays(y, p)
    w = as_weights(weights, y_arr.size)
    tied = TiedScores.of(y_arr, p_arr)
    samples = np.array(
        [
            tied.auc(*tied.counts(b if w is None else b * w))
            for b in bootstrap_weights(groups, n_boot, seed)
        ]
    )
    return interval(auc(y_arr, p_arr, w), samples)


def paired_auc_difference(
    y: Any, p_a: Any, p_b: Any, groups: Any, n_boot: int = 200, seed: int = 0, weights: Any = None
) -> dict[str, float]:
    """AUC of A minus AUC of B, with a 95% interval from the same patient resamples for both."""
    y_arr, a = as_arrays(y, p_a)
    _, b = as_arrays(y_arr, p_b)
    w = as_weights(weights, y_arr.size)
    tied_a, tied_b = TiedScores.of(y_arr, a), TiedScores.of(y_arr, b)
    samples = []
    for boot in bootstrap_weights(groups, n_boot, seed):
        rw = boot if w is None else boot * w
        samples.append(tied_a.auc(*tied_a.counts(rw)) - tied_b.auc(*tied_b.counts(rw)))
    return interval(auc(y_arr, a, w) - auc(y_arr, b, w), np.array(samples))


# --------------------------------------------------------------------------- calibration


def _calibration_intercept(y: IntArray, logit_p: FloatArray, w: FloatArray | None) -> float:
    """Calibration-in-the-large: `a` in logit P(y) = a + logit(p) (offset), by root finding."""
    weights = np.ones(y.size) if w is None else w
    events, total = float(dot(weights, y.astype(np.float64))), float(weights.sum())
    if events <= 0 or events >= total:
        return NAN

    def score(a: float) -> float:
        return events - dot(weights, special.expit(a + logit_p))

    # logit(p) is clipped to +-27.7, so the root lies well inside +-60.
    return float(optimize.brentq(score, -60.0, 60.0, xtol=1e-12))


def _calibration_slope(y: IntArray, logit_p: FloatArray, w: FloatArray | None) -> float:
    """`b` in logit P(y) = a + b * logit(p): unpenalised (weighted) logistic regression."""
    if y.min(initial=1) == y.max(initial=0):
        return NAN
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", max_iter=200, tol=1e-10)
    model.fit(logit_p[:, None], y, sample_weight=w)
    return float(model.coef_[0, 0])


def _equal_frequency_bins(p: FloatArray, n_bins: int) -> list[IntArray]:
    """Row indices of up to `n_bins` bins of (nearly) equal numbers of rows, in order of p."""
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, p.size)) if b.size]


def curve_bin_index(p: FloatArray, n_bins: int = 10) -> IntArray:
    """Each row's calibration-curve bin (0-based), as `calibration_curve` bins them."""
    index = np.zeros(p.size, dtype=np.intp)
    for number, rows in enumerate(_equal_frequency_bins(p, n_bins)):
        index[rows] = number
    return index


def _ece(y: IntArray, p: FloatArray, w: FloatArray | None, n_bins: int = 10) -> float:
    bins = _equal_frequency_bins(p, n_bins)
    if not bins:
        return NAN
    weights = np.ones(y.size) if w is None else w
    # |sum of w (y - p)| over a bin = the bin's weight x |observed - mean predicted|
    gaps = [abs(dot(weights[b], y[b] - p[b])) for b in bins]
    return float(sum(gaps) / weights.sum())


def calibration_summary(y: Any, p: Any, weights: Any = None) -> dict[str, float]:
    """Observed/expected, calibration intercept and slope, ECE (10 equal-frequency bins), Brier;
    population-weighted with `weights`.

    Perfect calibration: observed_expected 1, intercept 0, slope 1. Slope < 1 means the
    predictions are too extreme (over-confident); intercept < 0 means risk is over-estimated.
    """
    y_arr, p_arr = as_arrays(y, p)
    w = as_weights(weights, y_arr.size)
    logit_p = logit(p_arr)
    ones = np.ones(y_arr.size) if w is None else w
    total = float(ones.sum())
    events, expected = dot(ones, y_arr.astype(np.float64)), dot(ones, p_arr)
    return {
        "n": float(y_arr.size),
        "observed": ratio(events, total),
        "expected": ratio(expected, total),
        "observed_expected": ratio(events, expected),
        "intercept": _calibration_intercept(y_arr, logit_p, w),
        "slope": _calibration_slope(y_arr, logit_p, w),
        "ece": _ece(y_arr, p_arr, w),
        "brier": brier(y_arr, p_arr, w),
    }


def calibration_curve(
    y: Any, p: Any, n_bins: int = 10, weights: Any = None, samples: FloatArray | None = None
) -> list[dict[str, float]]:
    """Bins of equal numbers of rows: mean predicted and observed proportion with a 95% CI.

    Unweighted: Wilson CI. With `weights` the mean predicted and the observed proportion are
    weighted (population scale) and the CI is the bootstrap percentile interval of `samples`
    (resamples x bins of the observed proportion; NaN bounds without). `n` and `events` are
    the sample's rows and events; `population` is the bin's weight."""
    y_arr, p_arr = as_arrays(y, p)
    w = as_weights(weights, y_arr.size)
    rows = []
    for number, rows_in_bin in enumerate(_equal_frequency_bins(p_arr, n_bins), start=1):
        events, n = int(y_arr[rows_in_bin].sum()), int(rows_in_bin.size)
        row: dict[str, float] = {"bin": number, "n": n, "events": events,
                                 "min_predicted": float(p_arr[rows_in_bin].min()),
                                 "max_predicted": float(p_arr[rows_in_bin].max())}  # fmt: skip
        if w is None:
            observed = wilson_interval(events, n)
            row["mean_predicted"] = float(p_arr[rows_in_bin].mean())
        else:
            wb = w[rows_in_bin]
            estimate = dot(wb, y_arr[rows_in_bin].astype(np.float64)) / wb.sum()
            observed = (
                {**NO_INTERVAL, "estimate": estimate}
                if samples is None
                else interval(estimate, samples[:, number - 1])
            )
            row["mean_predicted"] = dot(wb, p_arr[rows_in_bin]) / wb.sum()
            row["population"] = float(wb.sum())
        row |= {"observed": observed["estimate"], "low": observed["low"], "high": observed["high"]}
        rows.append(row)
    return rows


def newton_logistic(
    x: FloatArray,
    cases: FloatArray,
    total: FloatArray,
    start: tuple[float, float],
    fit_slope: bool,
    max_iter: int = 25,
    tol: float = 1e-9,
    exp_neg_x: FloatArray | None = None,
) -> tuple[float, float]:
    """Weighted logistic MLE of (a, b) in logit P = a + b x on aggregated counts (Newton).

    With `fit_slope=False`, b stays fixed at its start (b x enters as an offset; pass
    `exp_neg_x` = exp(-b x) to save an exponential per call). Used only for bootstrap
    replicates, warm-started at the full-sample fit, from where Newton converges in two or three
    steps; the point estimates themselves come from scipy/sklearn. Steps stop below `tol`.
    """
    a, b = start
    if not fit_slope:
        offset = np.exp(-b * x) if exp_neg_x is None else exp_neg_x
        return _newton_offset(offset, cases, total, a, max_iter, tol), b
    events, events_x = float(cases.sum()), dot(cases, x)
    x_squared = x * x
    mu, expected = np.empty_like(x), np.empty_like(x)
    for _ in range(max_iter):
        # mu = expit(a + b x), computed in place (no temporary arrays: the loop is hot).
        np.multiply(x, -b, out=mu)
        mu -= a
        with np.errstate(over="ignore"):
            np.exp(mu, out=mu)
        mu += 1.0
        np.reciprocal(mu, out=mu)
        np.multiply(total, mu, out=expected)
        g0, g1 = events - float(expected.sum()), events_x - dot(expected, x)
        np.multiply(expected, mu, out=mu)
        np.subtract(expected, mu, out=mu)  # the information weights total mu (1 - mu)
        h00, h01, h11 = float(mu.sum()), dot(mu, x), dot(mu, x_squared)
        determinant = h00 * h11 - h01 * h01
        if not determinant > 0:
            return NAN, NAN
        step_a = (h11 * g0 - h01 * g1) / determinant
        step_b = (h00 * g1 - h01 * g0) / determinant
        a, b = a + step_a, b + step_b
        if not (math.isfinite(a) and math.isfinite(b)):
            return NAN, NAN
        if max(abs(step_a), abs(step_b)) < tol:
            break
    return a, b


def _newton_offset(
    exp_neg_offset: FloatArray,
    cases: FloatArray,
    total: FloatArray,
    a: float,
    max_iter: int,
    tol: float,
) -> float:
    """The intercept of the offset model: mu = 1 / (1 + exp(-a) exp(-offset)), so no
    exponential per row and step."""
    events = float(cases.sum())
    mu, expected = np.empty_like(exp_neg_offset), np.empty_like(exp_neg_offset)
    for _ in range(max_iter):
        if not -700.0 < a < 700.0:
            return NAN
        np.multiply(exp_neg_offset, math.exp(-a), out=mu)
        mu += 1.0
        np.reciprocal(mu, out=mu)
        np.multiply(total, mu, out=expected)
        info = float(expected.sum()) - dot(expected, mu)  # sum of total mu (1 - mu)
        if not info > 0:
            return NAN
        step = (events - float(expected.sum())) / info
        a += step
        if not math.isfinite(a):
            return NAN
        if abs(step) < tol:
            break
    return a


# --------------------------------------------------------------------------- clinical utility


def net_benefit_grid(prevalence: float, points: int = 60) -> FloatArray:
    """Decision-curve threshold probabilities that suit the outcome's prevalence: a log grid
    from prevalence/5 to min(0.5, 30 x prevalence) (population prevalence 0.0006: ~0.0001-0.02;
    5%: 0.01-0.5), rounded to 3 significant figures."""
    if not (math.isfinite(prevalence) and 0 < prevalence < 1):
        return np.round(np.arange(0.005, 0.5 + 1e-9, 0.005), 3)
    high = min(0.5, 30 * prevalence)
    low = min(max(prevalence / 5, 1e-6), high / 10)
    grid = np.geomspace(low, high, points)
    return np.unique([float(f"{t:.3g}") for t in grid])


def net_benefit(y: Any, p: Any, thresholds: np.ndarray, weights: Any = None) -> pd.DataFrame:
    """Decision curve: NB = TP/n - FP/n * t/(1-t) for the model (positive: p >= t), treat-all
    and treat-none (0), at each threshold probability t in (0, 1); TP, FP and n weighted
    (population scale) with `weights`."""
    y_arr, p_arr = as_arrays(y, p)
    w = np.ones(y_arr.size) if weights is None else as_weights(weights, y_arr.size)
    assert w is not None
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("net-benefit thresholds must lie strictly between 0 and 1")
    n = float(w.sum())

    def weight_at_or_above(mask: np.ndarray) -> tuple[FloatArray, float]:
        order = np.argsort(p_arr[mask], kind="stable")
        values, weights_sorted = p_arr[mask][order], w[mask][order]
        above = np.concatenate([np.cumsum(weights_sorted[::-1])[::-1], [0.0]])
        return above[np.searchsorted(values, t, side="left")], float(weights_sorted.sum())

    (tp, cases), (fp, controls) = weight_at_or_above(y_arr == 1), weight_at_or_above(y_arr == 0)
    odds = t / (1 - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        model = tp / n - fp / n * odds
        treat_all = cases / n - controls / n * odds
    return pd.DataFrame(
        {"threshold": t, "model": model, "treat_all": treat_all, "treat_none": np.zeros_like(t)}
    )


def roc_points(
    y: Any, p: Any, max_points: int = 200, weights: Any = None
) -> dict[str, list[float]]:
    """The (weighted) ROC curve (sklearn), thinned to at most `max_points` points (ends kept)."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return {"fpr": [], "tpr": []}
    w = as_weights(weights, y_arr.size)
    fpr, tpr, _ = roc_curve(y_arr, p_arr, sample_weight=w, drop_intermediate=True)
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(np.intp))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
