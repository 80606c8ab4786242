"""TRIPOD-style evaluation of predicted cancer probabilities: pure functions, no I/O.

Discrimination (AUC with a patient-level bootstrap CI), calibration (observed/expected, calibration
intercept and slope, ECE, Brier, binned curve with Wilson CIs), the red/amber/green thresholds
(choose them; sensitivity, specificity, PPV, NPV at them), net benefit, subgroups, performance by
period, PPV/NPV moved to a deployment prevalence by Bayes' rule (Leeds myeloma style) and, for
simulated cohorts, a comparison with the true risk. `evaluate_predictions` assembles all of it.

Conventions: `y` is 0/1 (1 = cancer), `p` a probability in [0, 1]. A test is positive when
`p >= threshold`: green (rule-out) is `p < rule_out`, red (rule-in) is `p >= rule_in`.
Every interval is a dict `{"estimate", "low", "high"}` (95%); undefined values are NaN, not errors.
Bootstrap resamples are drawn by patient (all of a patient's rows together) from one seeded
generator, so `bootstrap_indices`, `auc_ci`, `paired_auc_difference` and `evaluate_predictions`
see the same resamples for the same groups and seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
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
# Newton steps per bootstrap refit: from the full-sample fit, 3 steps reach ~1e-9 (checked).
_BOOT_NEWTON = 4
SUBGROUP_MIN_EVENTS = 5


# --------------------------------------------------------------------------- basic metrics


def _as_arrays(y: Any, p: Any) -> tuple[IntArray, FloatArray]:
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


def _dot(a: FloatArray, b: FloatArray) -> float:
    # einsum, not np.dot: BLAS threads on 1-D dot products slow the bootstrap down (measured).
    return float(np.einsum("i,i->", a, b))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else NAN


def auc(y: Any, p: Any) -> float:
    """Area under the ROC curve (sklearn); NaN when only one class is present."""
    y_arr, p_arr = _as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return NAN
    return float(roc_auc_score(y_arr, p_arr))


def brier(y: Any, p: Any) -> float:
    """Mean squared error of the probabilities (sklearn); NaN for no rows."""
    y_arr, p_arr = _as_arrays(y, p)
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


def _interval(estimate: float, samples: FloatArray) -> Interval:
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


def _bootstrap_weights(groups: Any, n_boot: int, seed: int) -> Iterator[FloatArray]:
    """How often each row appears in each resample of `bootstrap_indices` (same draws)."""
    codes, n_patients = _patient_codes(groups)
    for draw in _patient_draws(n_patients, n_boot, seed):
        yield np.bincount(draw, minlength=n_patients)[codes].astype(np.float64)


@dataclass(frozen=True)
class _Tied:
    """Predictions grouped by distinct value: a weighted resample is two bincounts."""

    values: FloatArray  # distinct predicted values, ascending
    index_pos: IntArray  # distinct-value index of each case
    index_neg: IntArray  # distinct-value index of each control
    pos: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, y: IntArray, p: FloatArray) -> _Tied:
        values, index = np.unique(p, return_inverse=True)
        pos = y == 1
        return cls(values, index[pos], index[~pos], pos)

    def counts(self, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Weighted number of cases and of controls at each distinct value."""
        k = self.values.size
        cases = np.bincount(self.index_pos, weights=weights[self.pos], minlength=k)
        controls = np.bincount(self.index_neg, weights=weights[~self.pos], minlength=k)
        return np.asarray(cases, dtype=np.float64), np.asarray(controls, dtype=np.float64)


def _auc_from_counts(cases: FloatArray, controls: FloatArray) -> float:
    """Mann-Whitney AUC from (weighted) counts per ascending distinct value; ties count 1/2."""
    n_cases, n_controls = cases.sum(), controls.sum()
    if n_cases <= 0 or n_controls <= 0:
        return NAN
    controls_below = np.cumsum(controls) - controls
    return float(_dot(cases, controls_below + 0.5 * controls) / (n_cases * n_controls))


def auc_ci(y: Any, p: Any, groups: Any, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """AUC with a patient-level bootstrap 95% percentile interval."""
    y_arr, p_arr = _as_arrays(y, p)
    tied = _Tied.of(y_arr, p_arr)
    samples = np.array(
        [_auc_from_counts(*tied.counts(w)) for w in _bootstrap_weights(groups, n_boot, seed)]
    )
    return _interval(auc(y_arr, p_arr), samples)


def paired_auc_difference(
    y: Any, p_a: Any, p_b: Any, groups: Any, n_boot: int = 200, seed: int = 0
) -> dict[str, float]:
    """AUC of A minus AUC of B, with a 95% interval from the same patient resamples for both."""
    y_arr, a = _as_arrays(y, p_a)
    _, b = _as_arrays(y_arr, p_b)
    tied_a, tied_b = _Tied.of(y_arr, a), _Tied.of(y_arr, b)
    samples = np.array(
        [
            _auc_from_counts(*tied_a.counts(w)) - _auc_from_counts(*tied_b.counts(w))
            for w in _bootstrap_weights(groups, n_boot, seed)
        ]
    )
    return _interval(auc(y_arr, a) - auc(y_arr, b), samples)


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
    y_arr, p_arr = _as_arrays(y, p)
    logit_p = logit(p_arr)
    return {
        "n": float(y_arr.size),
        "observed": float(y_arr.mean()) if y_arr.size else NAN,
        "expected": float(p_arr.mean()) if y_arr.size else NAN,
        "observed_expected": _ratio(float(y_arr.sum()), float(p_arr.sum())),
        "intercept": _calibration_intercept(y_arr, logit_p),
        "slope": _calibration_slope(y_arr, logit_p),
        "ece": _ece(y_arr, p_arr),
        "brier": brier(y_arr, p_arr),
    }


def calibration_curve(y: Any, p: Any, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-frequency bins: mean predicted and observed proportion with its Wilson 95% CI."""
    y_arr, p_arr = _as_arrays(y, p)
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


def _newton_logistic(
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
            h00, h01, h11 = info.sum(), info_x.sum(), float(_dot(info_x, x))
            g0, g1 = residual.sum(), float(_dot(residual, x))
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


def _confusion(y: IntArray, p: FloatArray, threshold: float) -> tuple[int, int, int, int]:
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
    y_arr, p_arr = _as_arrays(y, p)
    tp, fp, tn, fn = _confusion(y_arr, p_arr, threshold)
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
        result["share_ruled_out"] = _ratio(tn + fn, n)
        result["share_ruled_out_ci"] = wilson_interval(tn + fn, n)
        result["cancers_ruled_out"] = fn
    else:
        result["expedited"] = tp + fp
        result["share_expedited"] = _ratio(tp + fp, n)
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
    y_arr, p_arr = _as_arrays(y, p)
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
    y_arr, p_arr = _as_arrays(y, p)
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
    y_arr, p_arr = _as_arrays(y, p)
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
    y_arr, p_arr = _as_arrays(y, p)
    if y_arr.min(initial=1) == y_arr.max(initial=0):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y_arr, p_arr, drop_intermediate=True)
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(np.intp))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


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
            y_sub, p_sub = _as_arrays(frame.loc[mask, y_col], frame.loc[mask, p_col])
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
                    "prevalence": _ratio(events, n),
                    "auc": area,
                    "auc_low": low,
                    "auc_high": high,
                    "observed_expected": _ratio(events, float(p_sub.sum())),
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
    than `min_events` cancers or no non-cancers; Hanley-McNeil 95% CI), observed/expected and the
    rule-out sensitivity (share of cancers with p >= threshold) with its Wilson CI."""
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
        y_sub, p_sub = _as_arrays(frame.loc[mask, y_col], frame.loc[mask, p_col])
        rows.append(
            {
                "period": str(label),
                "n": int(y_sub.size),
                "events": int(y_sub.sum()),
                "auc": auc(y_sub, p_sub),
                "observed_expected": _ratio(float(y_sub.sum()), float(p_sub.sum())),
            }
        )
    return rows


# --------------------------------------------------------------------------- oracle


def oracle_summary(y: Any, p: Any, true_risk: Any) -> dict[str, float]:
    """Compare the model with the simulator's true risk: the AUC an oracle would reach, the gap,
    and calibration against the truth (sum of true risk / sum of p; OLS slope of logit(true
    risk) on logit(p), 1 when the model's log-odds are neither too extreme nor too flat; mean
    absolute error)."""
    y_arr, p_arr = _as_arrays(y, p)
    _, truth = _as_arrays(y_arr, true_risk)
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
        "observed_expected_vs_truth": _ratio(float(truth.sum()), float(p_arr.sum())),
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
    tied = _Tied.of(y, p)
    values, x = tied.values, logit(tied.values)
    intercept0, slope0 = start
    # Starting points: the full-sample intercept (offset model) and the full-sample (a, b) of
    # the slope model, refitted here on the aggregated counts (one cheap pass).
    cases, controls = tied.counts(np.ones(y.size))
    offset_start = (intercept0 if math.isfinite(intercept0) else 0.0, 1.0)
    slope_start = _newton_logistic(
        x, cases, cases + controls, (0.0, slope0 if math.isfinite(slope0) else 1.0), True
    )
    if not math.isfinite(slope_start[1]):
        slope_start = (0.0, 1.0)
    out: dict[str, list[float]] = {k: [] for k in ("auc", "oe", "brier", "intercept", "slope")}
    for weights in _bootstrap_weights(groups, n_boot, seed):
        cases, controls = tied.counts(weights)
        total = cases + controls
        out["auc"].append(_auc_from_counts(cases, controls))
        out["oe"].append(_ratio(float(cases.sum()), _dot(total, values)))
        squared = _dot(cases, (1 - values) ** 2) + _dot(controls, values**2)
        out["brier"].append(_ratio(squared, float(total.sum())))
        out["intercept"].append(
            _newton_logistic(x, cases, total, offset_start, False, _BOOT_NEWTON, 1e-7)[0]
        )
        out["slope"].append(
            _newton_logistic(x, cases, total, slope_start, True, _BOOT_NEWTON, 1e-7)[1]
        )
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def _discrimination_and_calibration(
    y: IntArray, p: FloatArray, groups: Any, n_boot: int, seed: int
) -> dict[str, Any]:
    """AUC, Brier and calibration, each with a patient-level bootstrap 95% interval."""
    summary = calibration_summary(y, p)
    boot = _bootstrap_metrics(y, p, groups, n_boot, seed, (summary["intercept"], summary["slope"]))
    return {
        "auc": _interval(auc(y, p), boot["auc"]),
        "brier": summary["brier"],
        "calibration": {
            **summary,
            "ci": {
                "observed_expected": _interval(summary["observed_expected"], boot["oe"]),
                "intercept": _interval(summary["intercept"], boot["intercept"]),
                "slope": _interval(summary["slope"], boot["slope"]),
                "brier": _interval(summary["brier"], boot["brier"]),
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
    tp, fp, tn, fn = _confusion(y, p, threshold)
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
        "sample_prevalence": _ratio(float(y.sum()), float(y.size)),
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
            "(NND = (TP+FP)/TP = 1/PPV) and tests and cancers per 100,000 are at the deployment "
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


def _json_safe(value: Any) -> Any:
    """Plain Python types only (dict, list, str, int, float, bool, None)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


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
    y, p = _as_arrays(frame[y_col], frame[p_col])
    groups = frame[patient_col].to_numpy()
    notes = [] if date_col in frame.columns else [f"no {date_col!r} column: no by-period table"]
    has_truth = true_risk_col is not None and true_risk_col in frame.columns
    result: dict[str, Any] = {
        "n": int(y.size),
        "n_patients": int(pd.Series(groups).nunique()),
        "events": int(y.sum()),
        "prevalence": _ratio(float(y.sum()), float(y.size)),
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
    safe: dict[str, Any] = _json_safe(result)
    return safe
