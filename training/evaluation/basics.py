"""The building blocks of the evaluation metrics: input checks, Wilson and percentile intervals,
the patient-level bootstrap and the tied-score counts every bootstrap statistic comes from.

`training.evaluation.metrics` re-exports all of it (its docstring states the conventions): `y` is
0/1, `p` a probability, optional row `weights` put a case-control sample on the population scale
(1 for cases, 1/r_s for controls), and every interval is `{"estimate", "low", "high"}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Interval = dict[str, float]
Direction = Literal["rule_out", "rule_in"]

Z95 = float(stats.norm.ppf(0.975))
NAN = float("nan")


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


def as_weights(weights: Any, n: int) -> FloatArray | None:
    """Row weights as a flat array of `n` finite positive numbers; None stays None."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size != n:
        raise ValueError(f"weights has {w.size} values but there are {n} rows")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be finite and positive")
    return w


def sum_by(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """The sum of `weights` at each value 0..size-1 of `index` (a weighted bincount)."""
    out: FloatArray = np.bincount(index, weights=weights, minlength=size).astype(
        np.float64, copy=False
    )
    return out


def dot(a: FloatArray, b: FloatArray) -> float:
    """The dot product of two 1-D arrays."""
    # einsum, not np.dot: BLAS threads on 1-D dot products slow the bootstrap down (measured).
    return float(np.einsum("i,i->", a, b))


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is not positive."""
    return float(numerator / denominator) if denominator > 0 else NAN


def wilson_bounds(successes: Any, total: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised Wilson score interval (95%, no continuity correction); NaN where total == 0.

    Returns (proportion, low, high), elementwise over the inputs."""
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
    estimate, low, high = wilson_bounds(successes, total)
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def interval(estimate: float, samples: FloatArray) -> Interval:
    """Percentile 95% interval of bootstrap samples, ignoring resamples where it is undefined."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return {"estimate": float(estimate), "low": NAN, "high": NAN}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


NO_INTERVAL: Interval = {"estimate": NAN, "low": NAN, "high": NAN}


# --------------------------------------------------------------------------- bootstrap


def patient_codes(groups: Any) -> tuple[IntArray, int]:
    """Each row's patient (or matched set) as 0..n_patients-1 (first-appearance order)."""
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
    draw, so repeated tests of one patient never end up split between resamples. For a
    case-control sample, pass the matched sets as groups: a set is drawn whole.
    """
    codes, n_patients = patient_codes(groups)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_patients)
    starts = np.cumsum(counts) - counts
    for draw in _patient_draws(n_patients, n_boot, seed):
        sizes = counts[draw]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        yield order[np.repeat(starts[draw], sizes) + within]


def bootstrap_weights(
    groups: Any, n_boot: int, seed: int, rows: IntArray | None = None
) -> Iterator[FloatArray]:
    """How often each row appears in each resample of `bootstrap_indices` (same draws); only
    for `rows` (indices) when given."""
    codes, n_patients = patient_codes(groups)
    if rows is not None:
        codes = codes[rows]
    for draw in _patient_draws(n_patients, n_boot, seed):
        yield np.bincount(draw, minlength=n_patients)[codes].astype(np.float64)


@dataclass(frozen=True)
class TiedScores:
    """Predictions grouped by distinct value: a weighted resample is one bincount, and its AUC
    one pass over the controls plus work on the distinct case values only."""

    values: FloatArray  # distinct predicted values, ascending
    cell: IntArray  # 2 * (distinct-value index) + y of each row
    case_at: IntArray  # distinct-value indices holding a case, ascending
    starts: IntArray  # reduceat starts: [0, c0, c0 + 1, c1, c1 + 1, ...] (c_i = case_at[i])
    nonempty: FloatArray  # 1 where the reduceat segment is not empty

    @classmethod
    def of(cls, y: IntArray, p: FloatArray) -> TiedScores:
        values, index = np.unique(p, return_inverse=True)
        index = index.astype(np.intp).ravel()
        case_at = np.unique(index[y == 1])
        starts = np.concatenate([[0], np.column_stack([case_at, case_at + 1]).ravel()])
        ends = np.append(starts[1:], values.size)
        keep = starts < values.size
        nonempty = (ends > starts)[keep].astype(np.float64)
        return cls(values, 2 * index + y, case_at, starts[keep].astype(np.intp), nonempty)

    def counts(self, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Weighted number of cases and of controls at each distinct value."""
        pairs = sum_by(self.cell, weights, 2 * self.values.size).reshape(-1, 2)
        return pairs[:, 1], pairs[:, 0]

    def auc(self, cases: FloatArray, controls: FloatArray) -> float:
        """`auc_from_counts(cases, controls)` for counts from `counts`, without a pass-long
        cumulative sum: controls are summed between consecutive case values (reduceat)."""
        if self.case_at.size == 0 or self.values.size == 0:
            return NAN
        segments = np.add.reduceat(controls, self.starts) * self.nonempty
        m = self.case_at.size
        padded = np.zeros(2 * m + 1)
        padded[: segments.size] = segments
        ties, between = padded[1::2], padded[2::2]
        below = padded[0] + np.cumsum(ties + between) - ties - between
        at_cases = cases[self.case_at]
        n_cases, n_controls = float(at_cases.sum()), float(segments.sum())
        if n_cases <= 0 or n_controls <= 0:
            return NAN
        return float(dot(at_cases, below + 0.5 * ties) / (n_cases * n_controls))


def auc_from_counts(cases: FloatArray, controls: FloatArray) -> float:
    """Mann-Whitney AUC from (weighted) counts per ascending distinct value; ties count 1/2."""
    n_cases, n_controls = cases.sum(), controls.sum()
    if n_cases <= 0 or n_controls <= 0:
        return NAN
    controls_below = np.cumsum(controls) - controls
    return float(dot(cases, controls_below + 0.5 * controls) / (n_cases * n_controls))


def weighted_auc(y: IntArray, p: FloatArray, weights: FloatArray) -> float:
    """AUC with each row counted `weight` times (a weighted Mann-Whitney statistic)."""
    tied = TiedScores.of(y, p)
    return tied.auc(*tied.counts(weights))
