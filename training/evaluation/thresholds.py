"""Triage thresholds: choosing the green (rule-out) and red (rule-in) cut-offs on the calibration
period, and the figures at a cut-off (sensitivity, specificity, PPV, NPV, the share in the band
and the risk of the outcome in the green band).

A test is positive when `p >= threshold`: green is `p < rule_out`, red is `p >= rule_in`.
Rule-out: the highest distinct value t whose lower 95% bound of sensitivity reaches the target
(`wilson`, vectorised over every candidate; or `bootstrap`, percentile over patient or matched-set
resamples, vectorised over cases; `point` is the bare estimate, the legacy rule). Rule-in: the
lowest t whose PPV reaches the target (population-weighted with `weights`; by Bayes' rule at a
`prevalence` for legacy global-shift case-control specs). With fewer than `min_events` events
no threshold is set (None, with the reason), so that band is never given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.evaluation.basics import (
    NAN,
    Direction,
    FloatArray,
    IntArray,
    as_arrays,
    as_weights,
    bootstrap_weights,
    interval,
    sum_by,
    wilson_bounds,
    wilson_interval,
)

Bound = Literal["wilson", "bootstrap", "point"]
DEFAULT_MIN_EVENTS = 50  # models.spec_policy.TriagePolicy.min_events
TOLERANCE = 1e-12
RATES = ("sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen cut-off (None: not set, see `reason`) and what it rests on."""

    direction: Direction
    threshold: float | None
    target: float  # sensitivity (rule-out) or PPV (rule-in) target
    method: str  # "wilson", "bootstrap" or "point" (rule-out); "ppv", "weighted ppv", "bayes"
    events: int  # events (cases) in the rows the threshold was chosen on
    min_events: int
    estimate: float  # sensitivity or PPV at the threshold (NaN when None)
    lower_bound: float  # rule-out: the lower 95% bound of sensitivity reached; rule-in: NaN
    events_in_band: int | None  # rule-out: cases below it (missed); rule-in: cases at/above it
    reason: str | None = None
    limited_by: str | None = None  # rule-out: the subgroup level that lowered the cut-off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- choosing


def _sensitivity_steps(y: IntArray, p: FloatArray) -> tuple[FloatArray, FloatArray, IntArray]:
    """Distinct case values (descending), cases with p >= each, and each case's position."""
    case_p = p[y == 1]
    values, inverse = np.unique(case_p, return_inverse=True)
    detected = np.cumsum(np.bincount(inverse, minlength=values.size)[::-1]).astype(np.float64)
    return values[::-1], detected, (values.size - 1 - inverse).astype(np.intp)


def _bootstrap_lower_bounds(
    position: IntArray, candidates: IntArray, rows: IntArray, groups: Any, n_boot: int, seed: int
) -> FloatArray:
    """2.5th percentile over resamples of the sensitivity at each candidate step."""
    size = int(position.max()) + 1 if position.size else 0
    samples = np.empty((n_boot, candidates.size))
    for b, weights in enumerate(bootstrap_weights(groups, n_boot, seed, rows=rows)):
        detected = np.cumsum(sum_by(position, weights, size))
        total = detected[-1]
        samples[b] = detected[candidates] / total if total > 0 else np.nan
    with np.errstate(all="ignore"):
        low: FloatArray = np.nanpercentile(samples, 2.5, axis=0)
    return low


def choose_rule_out(
    y: Any, p: Any, target: float, *, bound: Bound = "wilson",
    min_events: int = DEFAULT_MIN_EVENTS, groups: Any = None, n_boot: int = 1000, seed: int = 0,
    events_name: str = "events", within: Mapping[str, Any] | None = None,
    within_min_events: int = 20,
) -> ThresholdChoice:  # fmt: skip
    """The highest distinct value t with a lower 95% bound of sensitivity of (p >= t) >= target.

    `bound="bootstrap"` resamples `groups` (patients, or matched sets for case-control data;
    rows when None) and only considers values whose estimated sensitivity meets the target.
    Sensitivity involves only the cases, which carry weight 1 in a case-control sample, so no
    population weights are needed. `within` maps a subgroup's name to each row's level (labels
    or codes; missing levels as NaN or None): t must also give an estimated sensitivity >= target
    in every level with at least `within_min_events` cases (`limited_by` names the level that
    lowered t, if one did)."""
    if bound not in ("wilson", "bootstrap", "point"):
        raise ValueError(f"bound must be 'wilson', 'bootstrap' or 'point', not {bound!r}")
    y_arr, p_arr = as_arrays(y, p)
    n_cases = int(y_arr.sum())
    common: dict[str, Any] = {"direction": "rule_out", "target": target, "method": bound,
                              "events": n_cases, "min_events": min_events}  # fmt: skip
    if n_cases < max(min_events, 1):
        reason = (
            f"only {n_cases} calibration-period {events_name}; at least {min_events} are needed "
            "to set a rule-out threshold (triage.min_events)"
        )
        return ThresholdChoice(**common, threshold=None, estimate=NAN, lower_bound=NAN,
                               events_in_band=None, reason=reason)  # fmt: skip
    values, detected, position = _sensitivity_steps(y_arr, p_arr)
    sensitivity, wilson_low, _ = wilson_bounds(detected, n_cases)
    if bound == "point":
        low = wilson_low
        meets = sensitivity >= target - TOLERANCE
    elif bound == "wilson":
        low = wilson_low
        meets = low >= target - TOLERANCE
    else:
        candidates = np.flatnonzero(sensitivity >= target - TOLERANCE)
        low = np.full(values.size, np.nan)
        if candidates.size:
            groups_arr = np.arange(y_arr.size) if groups is None else np.asarray(groups)
            rows = np.flatnonzero(y_arr == 1)
            low[candidates] = _bootstrap_lower_bounds(
                position, candidates, rows, groups_arr, n_boot, seed
            )
        meets = np.nan_to_num(low, nan=-1.0) >= target - TOLERANCE
    overall = np.flatnonzero(meets)
    limits = _within_limits(y_arr, position, values.size, target, within, within_min_events)
    limited_by = None
    for label, level_meets in limits:
        before = int(np.flatnonzero(meets)[0]) if meets.any() else None
        meets = meets & level_meets
        after = int(np.flatnonzero(meets)[0]) if meets.any() else None
        if before is not None and after != before:
            limited_by = label
    chosen = np.flatnonzero(meets)
    if chosen.size == 0 and overall.size:
        reason = (
            f"no threshold reaches an estimated sensitivity of {target:g} within {limited_by} "
            f"as well as overall; more {events_name} are needed there"
        )
        return ThresholdChoice(**common, threshold=None, estimate=NAN, lower_bound=NAN,
                               events_in_band=None, reason=reason,
                               limited_by=limited_by)  # fmt: skip
    if chosen.size == 0:
        best = float(np.nanmax(low)) if np.isfinite(low).any() else NAN
        what = "an estimated" if bound == "point" else f"a lower 95% bound ({bound}) of"
        reason = (
            f"no threshold reaches {what} sensitivity of {target:g} with {n_cases} "
            f"calibration-period {events_name} (the best lower bound is {best:.3f}); more "
            f"{events_name} are needed"
        )
        return ThresholdChoice(**common, threshold=None, estimate=NAN, lower_bound=best,
                               events_in_band=None, reason=reason)  # fmt: skip
    j = int(chosen[0])
    return ThresholdChoice(**common, threshold=float(values[j]), estimate=float(sensitivity[j]),
                           lower_bound=float(low[j]), events_in_band=n_cases - int(detected[j]),
                           limited_by=limited_by)  # fmt: skip


def _within_limits(
    y: IntArray, position: IntArray, steps: int, target: float,
    within: Mapping[str, Any] | None, min_events: int,
) -> list[tuple[str, npt.NDArray[np.bool_]]]:  # fmt: skip
    """For each subgroup level with >= `min_events` cases: its label ("age_band 18-49") and,
    per candidate step, whether the level's estimated sensitivity meets the target."""
    out: list[tuple[str, npt.NDArray[np.bool_]]] = []
    for name, levels in (within or {}).items():
        case_levels = pd.Series(np.asarray(levels, dtype=object)[y == 1])
        for level, rows in case_levels.groupby(case_levels, sort=True).groups.items():
            if len(rows) < min_events:
                continue
            found = np.cumsum(np.bincount(position[np.asarray(rows)], minlength=steps))
            out.append((f"{name} {level}", found / len(rows) >= target - TOLERANCE))
    return out


def _counts_at_or_above(
    y: IntArray, p: FloatArray, weights: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Distinct values ascending, and (weighted) cases / controls with p >= each value."""
    values, index = np.unique(p, return_inverse=True)
    w = np.ones(y.size) if weights is None else weights
    cases = sum_by(index, w * y, values.size)
    controls = sum_by(index, w * (1 - y), values.size)
    return values, np.cumsum(cases[::-1])[::-1], np.cumsum(controls[::-1])[::-1]


def choose_rule_in(
    y: Any, p: Any, target: float, *, weights: Any = None, prevalence: float | None = None,
    min_events: int = DEFAULT_MIN_EVENTS, events_name: str = "events",
) -> ThresholdChoice:  # fmt: skip
    """The lowest distinct value t with PPV of (p >= t) >= target.

    With `weights` (controls weighted 1/r_s) the PPV is the population's. With `prevalence`
    (legacy global-shift case-control specs) it is Bayes' PPV from the sample's sensitivity and
    specificity at that prevalence."""
    y_arr, p_arr = as_arrays(y, p)
    w = as_weights(weights, y_arr.size)
    if w is not None and prevalence is not None:
        raise ValueError("give weights (population scale) or prevalence (Bayes), not both")
    n_cases = int(y_arr.sum())
    method = "bayes" if prevalence is not None else ("weighted ppv" if w is not None else "ppv")
    common: dict[str, Any] = {"direction": "rule_in", "target": target, "method": method,
                              "events": n_cases, "min_events": min_events,
                              "lower_bound": NAN}  # fmt: skip
    if n_cases < max(min_events, 1):
        reason = (
            f"only {n_cases} calibration-period {events_name}; at least {min_events} are needed "
            "to set a rule-in threshold (triage.min_events)"
        )
        return ThresholdChoice(**common, threshold=None, estimate=NAN, events_in_band=None,
                               reason=reason)  # fmt: skip
    values, cases_above, controls_above = _counts_at_or_above(y_arr, p_arr, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prevalence is None:
            ppv = cases_above / (cases_above + controls_above)
        else:
            n_controls = y_arr.size - n_cases
            specificity = 1 - controls_above / n_controls if n_controls else np.nan
            ppv = np.asarray(bayes_ppv_npv(cases_above / n_cases, specificity, prevalence)[0])
    meets = np.flatnonzero((cases_above > 0) & (np.nan_to_num(ppv) >= target - TOLERANCE))
    if meets.size == 0:
        best = float(np.nanmax(ppv)) if np.isfinite(ppv).any() else NAN
        reason = f"no threshold reaches a PPV of {target:g} (the highest is {best:.3g})"
        return ThresholdChoice(**common, threshold=None, estimate=NAN, events_in_band=None,
                               reason=reason)  # fmt: skip
    j = int(meets[0])
    in_band = int(np.count_nonzero(p_arr[y_arr == 1] >= values[j]))
    return ThresholdChoice(**common, threshold=float(values[j]), estimate=float(ppv[j]),
                           events_in_band=in_band)  # fmt: skip


def choose_rule_out_threshold(y: Any, p: Any, sensitivity_target: float) -> float | None:
    """Legacy rule: the highest distinct value t whose estimated sensitivity of (p >= t) meets
    the target (no bound, no minimum number of events). None when there are no cancers."""
    return choose_rule_out(y, p, sensitivity_target, bound="point", min_events=1).threshold


def choose_rule_in_threshold(
    y: Any, p: Any, ppv_target: float, prevalence: float | None = None
) -> float | None:
    """Legacy rule: `choose_rule_in` without a minimum number of events."""
    return choose_rule_in(y, p, ppv_target, prevalence=prevalence, min_events=1).threshold


# --------------------------------------------------------------------------- at a threshold


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


def confusion(y: IntArray, p: FloatArray, threshold: float) -> tuple[int, int, int, int]:
    """True and false positives and negatives when `p >= threshold` is positive."""
    positive = p >= threshold
    tp = int(np.count_nonzero(positive & (y == 1)))
    fp = int(np.count_nonzero(positive & (y == 0)))
    fn = int(np.count_nonzero(~positive & (y == 1)))
    tn = int(np.count_nonzero(~positive & (y == 0)))
    return tp, fp, tn, fn


def rates(tp: Any, fp: Any, tn: Any, fn: Any) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, the shares ruled out and expedited and the risk in the
    green band from (weighted) counts; elementwise over arrays, NaN where undefined."""
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "share_ruled_out": (tn + fn) / (tp + fp + tn + fn),
            "share_expedited": (tp + fp) / (tp + fp + tn + fn),
            "risk_in_green": fn / (tn + fn),
        }


def weighted_confusion(
    y: IntArray, p: FloatArray, threshold: float, weights: FloatArray
) -> tuple[float, float, float, float]:
    """Weighted true and false positives and negatives of `p >= threshold`."""
    positive = p >= threshold
    cases = y == 1
    tp, fp = weights[positive & cases].sum(), weights[positive & ~cases].sum()
    tn, fn = weights[~positive & ~cases].sum(), weights[~positive & cases].sum()
    return float(tp), float(fp), float(tn), float(fn)


def threshold_metrics(
    y: Any, p: Any, threshold: float, direction: Direction, *, weights: Any = None,
    samples: Mapping[str, FloatArray] | None = None,
    sensitivity_ci: Literal["wilson", "bootstrap"] = "wilson",
    referral_threshold: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Counts and rates of the test `p >= threshold`, each rate with a 95% interval.

    Unweighted: Wilson intervals. With `weights` (population scale) the estimates are weighted and
    the intervals are bootstrap percentiles of `samples` (replicates per rate name, from the same
    resamples as the rest of the evaluation; NaN bounds without them). Sensitivity keeps its
    Wilson interval on the case counts unless `sensitivity_ci="bootstrap"`: cases carry weight 1.
    `rule_out` (green = p < threshold) adds the number and share ruled out, the cancers among them
    (false negatives) and `risk_in_green` = events ruled out / patients ruled out, beside the
    guideline's `referral_threshold`; `rule_in` adds the number and share expedited.
    """
    if direction not in ("rule_out", "rule_in"):
        raise ValueError(f"direction must be 'rule_out' or 'rule_in', not {direction!r}")
    y_arr, p_arr = as_arrays(y, p)
    w = as_weights(weights, y_arr.size)
    tp, fp, tn, fn = confusion(y_arr, p_arr, threshold)
    weighted = (tp, fp, tn, fn) if w is None else weighted_confusion(y_arr, p_arr, threshold, w)
    point = rates(*weighted)
    n = tp + fp + tn + fn
    wilson = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
              "npv": (tn, tn + fn), "share_ruled_out": (tn + fn, n),
              "share_expedited": (tp + fp, n), "risk_in_green": (fn, tn + fn)}  # fmt: skip
    boot = samples or {}

    def resampled(name: str) -> bool:
        wanted = sensitivity_ci == "bootstrap" if name == "sensitivity" else w is not None
        return wanted and name in boot

    def ci(name: str) -> dict[str, float]:
        if resampled(name):
            return interval(float(point[name]), boot[name])
        if w is None or name == "sensitivity":
            return {**wilson_interval(*wilson[name]), "estimate": float(point[name])}
        return {"estimate": float(point[name]), "low": NAN, "high": NAN}

    result: dict[str, Any] = {"threshold": float(threshold), "direction": direction, "n": n,
                              "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                              **{name: ci(name) for name in RATES}}  # fmt: skip
    result["ci_method"] = "wilson" if w is None else "bootstrap percentile"
    result["sensitivity_ci_method"] = "bootstrap" if resampled("sensitivity") else "wilson"
    if w is not None:
        result["weighted"] = dict(zip(("tp", "fp", "tn", "fn"), weighted, strict=True))
    if direction == "rule_out":
        risk = ci("risk_in_green")
        result |= {"ruled_out": tn + fn, "share_ruled_out": float(point["share_ruled_out"]),
                   "share_ruled_out_ci": ci("share_ruled_out"), "cancers_ruled_out": fn,
                   "risk_in_green": risk, "referral_threshold": referral_threshold,
                   "risk_in_green_below_referral": None if referral_threshold is None
                   else bool(risk["high"] < referral_threshold)}  # fmt: skip
    else:
        result |= {"expedited": tp + fp, "share_expedited": float(point["share_expedited"]),
                   "share_expedited_ci": ci("share_expedited"),
                   "cancers_expedited": tp}  # fmt: skip
    return result
