"""The metrics of predicted cancer probabilities: pure functions, no I/O.

Discrimination (AUC with a patient-level bootstrap CI, paired AUC differences), calibration
(observed/expected, calibration intercept and slope, ECE, Brier, binned curve with Wilson CIs),
thresholds (choose the red/amber/green cut-offs; sensitivity, specificity, PPV, NPV at them),
PPV/NPV at another prevalence by Bayes' rule, net benefit and ROC points.
`training.evaluation.evaluate` assembles them into one evaluation.

Conventions: `y` is 0/1 (1 = cancer), `p` a probability in [0, 1]. A test is positive when
`p >= threshold`: green (rule-out) is `p < rule_out`, red (rule-in) is `p >= rule_in`.
Every interval is a dict `{"estimate", "low", "high"}` (95%); undefined values are NaN, not errors.
Bootstrap resamples are drawn by patient (all of a patient's rows together) from one seeded
generator, so `bootstrap_indices`, `auc_ci`, `paired_auc_difference` and `evaluate_predictions`
see the same resamples for the same groups and seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import optimize, special, stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from models.calibration import expit, logit

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Interval = dict[str, float]
Direction = Literal["rule_out", "rule_in"]

Z95 = float(stats.norm.ppf(0.975))
NAN = float("nan")
# Newton steps per bootstrap refit: from the full-sample fit, 3 steps reach ~1e-9 (checked).
BOOT_NEWTON_STEPS = 4


# --------------------------------------------------------------------------- basic metrics


def as_arrays(y: Any, p: Any) -> tuple[IntArray, FloatArray]:
    """0/1 outcomes and probabilities as flat arrays of equal length (ValueError otherwise)."""
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"y has {y_arr.size} values but p has {p_arr.size}")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("y must contain only 0 and 1 (missing outcomes are not allowed)")
    if not (np.isfinite(p_arr).all() and (p_arr >= 0).all() and (p_arr <= 1).all()):
        raise ValueError("p must contain finite probabilities in [0, 1]")
    return y_arr.astype(np.intp), p_arr


def dot(a: FloatArray, b: FloatArray) -> float:
    """The dot product of two 1-D arrays."""
    # einsum, not np.dot: BLAS threads on 1-D dot products slow the bootstrap down (measured).
    return float(np.einsum("i,i->", a, b))


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is not positive."""
    return float(numerator / denominator) if denominator > 0 else NAN


def auc(y: Any, p: Any) -> float:
    """Area under the ROC curve (sklearn); NaN when only one class is present."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return NAN
    return float(roc_auc_score(y_arr, p_arr))


def brier(y: Any, p: Any) -> float:
    """Mean squared error of the probabilities (sklearn); NaN for no rows."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.size == 0:
        return NAN
    return float(brier_score_loss(y_arr, p_arr, labels=[0, 1]))


def _wilson(successes: Any, total: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised Wilson score interval (95%, no continuity correction); NaN where total == 0."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        phat = k / n
        z2 = Z95**2
        denominator = 1 + z2 / n
        centre = (phat + z2 / (2 * n)) / denominator
        half = Z95 * np.sqrt(phat * (1 - phat) / n + z2 / (4 * n * n)) / denominator
    empty = n <= 0
    phat, low, high = (np.where(empty, np.nan, a) for a in (phat, centre - half, centre + half))
    return phat, np.clip(low, 0, 1), np.clip(high, 0, 1)


def wilson_interval(successes: float, total: float) -> Interval:
    """Proportion `successes / total` with its Wilson 95% interval (NaN when total is 0)."""
    estimate, low, high = _wilson(successes, total)
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def interval(estimate: float, samples: FloatArray) -> Interval:
    """Percentile 95% interval of bootstrap samples, ignoring resamples where it is undefined."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return {"estimate": float(estimate), "low": NAN, "high": NAN}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


# --------------------------------------------------------------------------- bootstrap


def _patient_codes(groups: Any) -> tuple[IntArray, int]:
    """Each row's patient as 0..n_patients-1 (first-appearance order)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups).ravel()))
    if (codes < 0).any():
        raise ValueError("patient ids (groups) must not be missing")
    return codes.astype(np.intp), len(uniques)


def _patient_draws(n_patients: int, n_boot: int, seed: int) -> Iterator[IntArray]:
    """The patients drawn, with replacement, in each resample: the one source of randomness."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n_patients, size=n_patients)


def bootstrap_indices(groups: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_boot` patient-level resamples (deterministic for a seed).

    Patients are drawn with replacement; a drawn patient contributes all of their rows, once per
    draw, so repeated tests of one patient never end up split between resamples.
    """
    codes, n_patients = _patient_codes(groups)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_patients)
    starts = np.cumsum(counts) - counts
    for draw in _patient_draws(n_patients, n_boot, seed):
        sizes = counts[draw]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        yield order[np.repeat(starts[draw], sizes) + within]


def bootstrap_weights(groups: Any, n_boot: int, seed: int) -> Iterator[FloatArray]:
    """How often each row appears in each resample of `bootstrap_indices` (same draws)."""
    codes, n_patients = _patient_codes(groups)
    for draw in _patient_draws(n_patients, n_boot, seed):
        yield np.bincount(draw, minlength=n_patients)[codes].astype(np.float64)


@dataclass(frozen=True)
class TiedScores:
    """Predictions grouped by distinct value: a weighted resample is two bincounts."""

    values: FloatArray  # distinct predicted values, ascending
    index_pos: IntArray  # distinct-value index of each case
    index_neg: IntArray  # distinct-value index of each control
    pos: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, y: IntArray, p: FloatArray) -> TiedScores:
        values, index = np.unique(p, return_inverse=True)
        pos = y == 1
        return cls(values, index[pos], index[~pos], pos)

    def counts(self, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Weighted number of cases and of controls at each distinct value."""
        k = self.values.size
        cases = np.bincount(self.index_pos, weights=weights[self.pos], minlength=k)
        controls = np.bincount(self.index_neg, weights=weights[~self.pos], minlength=k)
        return np.asarray(cases, dtype=np.float64), np.asarray(controls, dtype=np.float64)


def auc_from_counts(cases: FloatArray, controls: FloatArray) -> float:
    """Mann-Whitney AUC from (weighted) counts per ascending distinct value; ties count 1/2."""
    n_cases, n_controls = cases.sum(), controls.sum()
    if n_cases <= 0 or n_controls <= 0:
        return NAN
    controls_below = np.cumsum(controls) - controls
    return float(dot(cases, controls_below + 0.5 * controls) / (n_cases * n_controls))


def auc_ci(y: Any, p: Any, groups: Any, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """AUC with a patient-level bootstrap 95% percentile interval."""
    y_arr, p_arr = as_arrays(y, p)
    tied = TiedScores.of(y_arr, p_arr)
    samples = np.array(
        [auc_from_counts(*tied.counts(w)) for w in bootstrap_weights(groups, n_boot, seed)]
    )
    return interval(auc(y_arr, p_arr), samples)


def paired_auc_difference(
    y: Any, p_a: Any, p_b: Any, groups: Any, n_boot: int = 200, seed: int = 0
) -> dict[str, float]:
    """AUC of A minus AUC of B, with a 95% interval from the same patient resamples for both."""
    y_arr, a = as_arrays(y, p_a)
    _, b = as_arrays(y_arr, p_b)
    tied_a, tied_b = TiedScores.of(y_arr, a), TiedScores.of(y_arr, b)
    samples = np.array(
        [
            auc_from_counts(*tied_a.counts(w)) - auc_from_counts(*tied_b.counts(w))
            for w in bootstrap_weights(groups, n_boot, seed)
        ]
    )
    return interval(auc(y_arr, a) - auc(y_arr, b), samples)


# --------------------------------------------------------------------------- calibration


def _calibration_intercept(y: IntArray, logit_p: FloatArray) -> float:
    """Calibration-in-the-large: `a` in logit P(y) = a + logit(p) (offset), by root finding."""
    events = float(y.sum())
    if events == 0 or events == y.size:
        return NAN

    def score(a: float) -> float:
        return events - float(special.expit(a + logit_p).sum())

    # logit(p) is clipped to +-27.7, so the root lies well inside +-60.
    return float(optimize.brentq(score, -60.0, 60.0, xtol=1e-12))


def _calibration_slope(y: IntArray, logit_p: FloatArray) -> float:
    """`b` in logit P(y) = a + b * logit(p): unpenalised logistic regression (sklearn)."""
    if y.min(initial=1) == y.max(initial=0):
        return NAN
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", max_iter=200, tol=1e-10)
    model.fit(logit_p[:, None], y)
    return float(model.coef_[0, 0])


def _equal_frequency_bins(p: FloatArray, n_bins: int) -> list[IntArray]:
    """Row indices of up to `n_bins` bins of (nearly) equal size, in order of p."""
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, p.size)) if b.size]


def _ece(y: IntArray, p: FloatArray, n_bins: int = 10) -> float:
    bins = _equal_frequency_bins(p, n_bins)
    if not bins:
        return NAN
    gaps = [b.size * abs(float(y[b].mean()) - float(p[b].mean())) for b in bins]
    return float(sum(gaps) / p.size)


def calibration_summary(y: Any, p: Any) -> dict[str, float]:
    """Observed/expected, calibration intercept and slope, ECE (10 equal-frequency bins), Brier.

    Perfect calibration: observed_expected 1, intercept 0, slope 1. Slope < 1 means the
    predictions are too extreme (over-confident); intercept < 0 means risk is over-estimated.
    """
    y_arr, p_arr = as_arrays(y, p)
    logit_p = logit(p_arr)
    return {
        "n": float(y_arr.size),
        "observed": float(y_arr.mean()) if y_arr.size else NAN,
        "expected": float(p_arr.mean()) if y_arr.size else NAN,
        "observed_expected": ratio(float(y_arr.sum()), float(p_arr.sum())),
        "intercept": _calibration_intercept(y_arr, logit_p),
        "slope": _calibration_slope(y_arr, logit_p),
        "ece": _ece(y_arr, p_arr),
        "brier": brier(y_arr, p_arr),
    }


def calibration_curve(y: Any, p: Any, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-frequency bins: mean predicted and observed proportion with its Wilson 95% CI."""
    y_arr, p_arr = as_arrays(y, p)
    rows = []
    for number, rows_in_bin in enumerate(_equal_frequency_bins(p_arr, n_bins), start=1):
        events, n = int(y_arr[rows_in_bin].sum()), int(rows_in_bin.size)
        observed = wilson_interval(events, n)
        rows.append(
            {
                "bin": number,
                "n": n,
                "events": events,
                "min_predicted": float(p_arr[rows_in_bin].min()),
                "max_predicted": float(p_arr[rows_in_bin].max()),
                "mean_predicted": float(p_arr[rows_in_bin].mean()),
                "observed": observed["estimate"],
                "low": observed["low"],
                "high": observed["high"],
            }
        )
    return rows


def newton_logistic(
    x: FloatArray,
    cases: FloatArray,
    total: FloatArray,
    start: tuple[float, float],
    fit_slope: bool,
    max_iter: int = 25,
    tol: float = 1e-9,
) -> tuple[float, float]:
    """Weighted logistic MLE of (a, b) in logit P = a + b x on aggregated counts (Newton).

    With `fit_slope=False`, b stays fixed at its start (x enters as an offset). Used only for
    bootstrap replicates, warm-started at the full-sample fit, from where Newton converges in two
    or three steps; the point estimates themselves come from scipy/sklearn.
    """
    a, b = start
    for _ in range(max_iter):
        mu = expit(a + b * x)
        residual = cases - total * mu
        info = total * mu * (1 - mu)
        if fit_slope:
            info_x = info * x
            h00, h01, h11 = info.sum(), info_x.sum(), float(dot(info_x, x))
            g0, g1 = residual.sum(), float(dot(residual, x))
            determinant = h00 * h11 - h01 * h01
            if not determinant > 0:
                return NAN, NAN
            step_a = (h11 * g0 - h01 * g1) / determinant
            step_b = (h00 * g1 - h01 * g0) / determinant
        else:
            h00 = info.sum()
            if not h00 > 0:
                return NAN, b
            step_a, step_b = residual.sum() / h00, 0.0
        a, b = a + float(step_a), b + float(step_b)
        if not (math.isfinite(a) and math.isfinite(b)):
            return NAN, NAN
        if max(abs(step_a), abs(step_b)) < tol:
            break
    return a, b


# --------------------------------------------------------------------------- thresholds


def confusion(y: IntArray, p: FloatArray, threshold: float) -> tuple[int, int, int, int]:
    """True and false positives and negatives when `p >= threshold` is positive."""
    positive = p >= threshold
    tp = int(np.count_nonzero(positive & (y == 1)))
    fp = int(np.count_nonzero(positive & (y == 0)))
    fn = int(np.count_nonzero(~positive & (y == 1)))
    tn = int(np.count_nonzero(~positive & (y == 0)))
    return tp, fp, tn, fn


def threshold_metrics(y: Any, p: Any, threshold: float, direction: Direction) -> dict[str, Any]:
    """Counts and Wilson-interval rates of the test `p >= threshold`.

    `rule_out` (green = p < threshold) adds the number and share ruled out (`share_ruled_out`,
    with `share_ruled_out_ci`) and the cancers among them (the false negatives); `rule_in`
    (red = p >= threshold) adds the number and share expedited and the cancers among them.
    """
    if direction not in ("rule_out", "rule_in"):
        raise ValueError(f"direction must be 'rule_out' or 'rule_in', not {direction!r}")
    y_arr, p_arr = as_arrays(y, p)
    tp, fp, tn, fn = confusion(y_arr, p_arr, threshold)
    n = tp + fp + tn + fn
    result: dict[str, Any] = {
        "threshold": float(threshold),
        "direction": direction,
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": wilson_interval(tp, tp + fn),
        "specificity": wilson_interval(tn, tn + fp),
        "ppv": wilson_interval(tp, tp + fp),
        "npv": wilson_interval(tn, tn + fn),
    }
    if direction == "rule_out":
        result["ruled_out"] = tn + fn
        result["share_ruled_out"] = ratio(tn + fn, n)
        result["share_ruled_out_ci"] = wilson_interval(tn + fn, n)
        result["cancers_ruled_out"] = fn
    else:
        result["expedited"] = tp + fp
        result["share_expedited"] = ratio(tp + fp, n)
        result["share_expedited_ci"] = wilson_interval(tp + fp, n)
        result["cancers_expedited"] = tp
    return result


def _counts_at_or_above(y: IntArray, p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Distinct values ascending, and cases / controls with p >= each value (cumulative sums)."""
    values, index = np.unique(p, return_inverse=True)
    cases = np.asarray(np.bincount(index, weights=y, minlength=values.size), dtype=np.float64)
    controls = np.asarray(np.bincount(index, weights=1 - y, minlength=values.size), np.float64)
    return values, np.cumsum(cases[::-1])[::-1], np.cumsum(controls[::-1])[::-1]


def choose_rule_out_threshold(y: Any, p: Any, sensitivity_target: float) -> float | None:
    """The highest distinct predicted value t with sensitivity of (p >= t) >= target.

    Green is p < t. None when there are no cancers (sensitivity undefined).
    """
    y_arr, p_arr = as_arrays(y, p)
    n_cases = int(y_arr.sum())
    if n_cases == 0:
        return None
    values, cases_above, _ = _counts_at_or_above(y_arr, p_arr)
    # Sensitivity falls as t rises, so the values that qualify form a prefix.
    meets = np.flatnonzero(cases_above / n_cases >= sensitivity_target - 1e-12)
    return float(values[meets[-1]]) if meets.size else None


def choose_rule_in_threshold(
    y: Any, p: Any, ppv_target: float, prevalence: float | None = None
) -> float | None:
    """The lowest distinct predicted value t with PPV of (p >= t) >= target.

    With `prevalence` (case-control data) the PPV is Bayes' PPV from the sample's sensitivity and
    specificity at that prevalence, not the sample's own PPV. None when no value meets the target.
    """
    y_arr, p_arr = as_arrays(y, p)
    n_cases = int(y_arr.sum())
    n_controls = y_arr.size - n_cases
    if n_cases == 0:
        return None
    values, cases_above, controls_above = _counts_at_or_above(y_arr, p_arr)
    if prevalence is None:
        ppv = cases_above / (cases_above + controls_above)
    else:
        if n_controls == 0:
            return None
        ppv, _ = bayes_ppv_npv(cases_above / n_cases, 1 - controls_above / n_controls, prevalence)
    meets = np.flatnonzero((cases_above > 0) & (np.nan_to_num(ppv) >= ppv_target - 1e-12))
    return float(values[meets[0]]) if meets.size else None


def bayes_ppv_npv(sensitivity: Any, specificity: Any, prevalence: float) -> tuple[Any, Any]:
    """PPV and NPV at `prevalence` from sensitivity and specificity (Bayes' rule).

    Scalars give floats; arrays give arrays. NaN where a denominator is 0.
    """
    if not 0 <= prevalence <= 1:
        raise ValueError(f"prevalence must lie in [0, 1], got {prevalence}")
    sens = np.asarray(sensitivity, dtype=np.float64)
    spec = np.asarray(specificity, dtype=np.float64)
    true_pos, false_pos = sens * prevalence, (1 - spec) * (1 - prevalence)
    true_neg, false_neg = spec * (1 - prevalence), (1 - sens) * prevalence
    with np.errstate(divide="ignore", invalid="ignore"):
        ppv = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), np.nan)
        npv = np.where(true_neg + false_neg > 0, true_neg / (true_neg + false_neg), np.nan)
    if ppv.ndim == 0:
        return float(ppv), float(npv)
    return ppv, npv


def number_needed_to_test(ppv: float) -> float:
    """Tests per cancer found: 1 / PPV, the Leeds NND = (TP + FP) / TP (inf when PPV is 0)."""
    if not math.isfinite(ppv):
        return NAN
    return math.inf if ppv <= 0 else 1.0 / ppv


# --------------------------------------------------------------------------- clinical utility


def net_benefit(y: Any, p: Any, thresholds: np.ndarray) -> pd.DataFrame:
    """Decision curve: NB = TP/n - FP/n * t/(1-t) for the model (positive: p >= t), treat-all
    and treat-none (0), at each threshold probability t in (0, 1)."""
    y_arr, p_arr = as_arrays(y, p)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("net-benefit thresholds must lie strictly between 0 and 1")
    n = y_arr.size
    cases, controls = np.sort(p_arr[y_arr == 1]), np.sort(p_arr[y_arr == 0])
    tp = cases.size - np.searchsorted(cases, t, side="left")
    fp = controls.size - np.searchsorted(controls, t, side="left")
    odds = t / (1 - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        model = tp / n - fp / n * odds
        treat_all = cases.size / n - controls.size / n * odds
    return pd.DataFrame(
        {"threshold": t, "model": model, "treat_all": treat_all, "treat_none": np.zeros_like(t)}
    )


def roc_points(y: Any, p: Any, max_points: int = 200) -> dict[str, list[float]]:
    """The ROC curve (sklearn), thinned to at most `max_points` points (ends kept)."""
    y_arr, p_arr = as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y_arr, p_arr, drop_intermediate=True)
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(np.intp))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
