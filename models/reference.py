"""Reference statistics stored with a model: drift checks (PSI) and soft outliers.

For each feature: the missing rate, interior decile edges of the observed values, the share of rows
in each bin (with a last bin for missing), and the 0.01th/99.99th percentiles that bound what the
model saw (per analyte; over ~35 analytes the 0.1th/99.9th flagged 3.8% of patients on the
issue-15 world, the 0.01th/99.99th 0.5%: a warning that fires for ordinary patients warns of
nothing). The same is kept for the score distribution. They come from out-of-sample rows (the
calibration period); for a case-control sample, with row weights that put it on the population
scale (1 for cases, 1/r_s for controls), so shares and quantiles are the population's.

When the rows' labs are given, `by_lab` holds the same statistics per lab (labs with at least
`MIN_LAB_ROWS` rows; the bins are the pooled reference's, so counts stay comparable): the missing
rate and bin shares of each feature and of the score, and the rows behind them. Labs differ for
good and standing reasons (one measures plasma viscosity instead of ESR; assays and populations
differ), so drift is judged against each lab's own reference: a change over time, not a
difference between labs. A lab with fewer rows keeps no own reference (its shares would be noise)
and is compared with the pooled one.

Apart from those, `training_missing` records each input's missing rate in the training rows (the
rows the model was fitted on), stored as the reference's `training` entry: what decides which
inputs the model may see absent at scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
SOFT_QUANTILES = (0.0001, 0.9999)
PSI_EPSILON = 1e-4
MIN_LAB_ROWS = 200  # calibration rows a lab needs for its own reference (`by_lab`)
UNKNOWN_LAB = "unknown"  # the label of rows without a lab (as replay labels them)


def _quantiles(observed: FloatArray, qs: Any, weights: FloatArray | None) -> FloatArray:
    """Quantiles of the values: linear interpolation, or with weights the inverted CDF (a
    weighted quantile; integer weights give the quantile of the rows repeated)."""
    if weights is None:
        return np.asarray(np.quantile(observed, qs), dtype=np.float64)
    return np.asarray(
        np.quantile(observed, qs, method="inverted_cdf", weights=weights), dtype=np.float64
    )


def bin_edges(
    values: FloatArray, n_bins: int = 10, weights: FloatArray | None = None
) -> list[float]:
    """Unique interior quantile edges of the non-missing values (weighted with `weights`)."""
    present = ~np.isnan(values)
    observed = values[present]
    if observed.size == 0:
        return []
    qs = _quantiles(observed, np.linspace(0, 1, n_bins + 1)[1:-1], _present(weights, present))
    return [float(q) for q in np.unique(qs)]


def _present(weights: FloatArray | None, present: np.ndarray) -> FloatArray | None:
    return None if weights is None else weights[present]


def binned_shares(
    values: FloatArray, edges: Sequence[float], weights: FloatArray | None = None
) -> list[float]:
    """Share of rows (of weight) per bin: len(edges) + 1 value bins, then a missing bin."""
    missing = np.isnan(values)
    bins = np.searchsorted(np.asarray(edges), values[~missing], side="right")
    if weights is None:
        counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.float64)
        shares, total = np.append(counts, missing.sum()), float(len(values))
    else:
        w = np.asarray(weights, dtype=np.float64)
        counts = np.bincount(bins, w[~missing], len(edges) + 1).astype(np.float64)
        shares, total = np.append(counts, w[missing].sum()), float(w.sum())
    return [float(s) for s in shares / (total if total > 0 else 1.0)]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two binned distributions (shares)."""
    e = np.clip(np.asarray(expected, dtype=np.float64), PSI_EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def describe(
    values: FloatArray, n_bins: int = 10, weights: FloatArray | None = None
) -> dict[str, Any]:
    """Reference statistics of one column (population-weighted with `weights`)."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    edges = bin_edges(values, n_bins, w)
    present = ~np.isnan(values)
    observed = values[present]
    low, high = (
        (float(q) for q in _quantiles(observed, SOFT_QUANTILES, _present(w, present)))
        if observed.size
        else (float("nan"), float("nan"))
    )
    return {
        "n": len(values),
        "missing_rate": _missing_rate(present, w),
        "edges": edges,
        "shares": binned_shares(values, edges, w),
        "low": low,
        "high": high,
    }


def _missing_rate(present: npt.NDArray[np.bool_], weights: FloatArray | None) -> float:
    """Share of rows (of weight) without a value; NaN without rows."""
    if not len(present):
        return float("nan")
    if weights is None:
        return float((~present).mean())
    return float(weights[~present].sum() / weights.sum())


def describe_in_bins(
    values: FloatArray, edges: Sequence[float], weights: FloatArray | None = None
) -> dict[str, Any]:
    """Rows, missing rate and bin shares of one column in given bins (a lab's, in the pooled
    reference's bins)."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return {
        "n": len(values),
        "missing_rate": _missing_rate(~np.isnan(values), w),
        "shares": binned_shares(values, edges, w),
    }


def lab_names(labs: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """Each row's lab as text, `unknown` where missing (the labels a replay gives its rows)."""
    values = labs if isinstance(labs, pd.Series) else pd.Series(np.asarray(labs, dtype=object))
    codes, found = pd.factorize(values)  # a categorical column is factorised without a copy
    names = np.array([*(str(lab) for lab in found), UNKNOWN_LAB], dtype=object)
    return names[codes]  # code -1 (missing) picks the last name


def lab_statistics(
    features: pd.DataFrame,
    probability: FloatArray,
    labs: npt.ArrayLike,
    pooled: dict[str, Any],
    weights: FloatArray | None = None,
) -> dict[str, dict[str, Any]]:
    """Per lab with at least `MIN_LAB_ROWS` rows: its rows and, in the `pooled` reference's bins,
    each feature's and the score's missing rate and shares (`describe_in_bins`)."""
    names = lab_names(labs)
    if len(names) != len(features):
        raise ValueError(f"labs ({len(names)}) need one label per row ({len(features)})")
    score = np.asarray(probability, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for lab in sorted(set(names)):
        rows = names == lab
        if rows.sum() < MIN_LAB_ROWS:
            continue
        w = None if weights is None else weights[rows]
        out[lab] = {
            "n": int(rows.sum()),
            "features": {
                c: describe_in_bins(
                    features[c].to_numpy(np.float64)[rows], pooled["features"][c]["edges"], w
                )
                for c in features.columns
            },
            "score": describe_in_bins(score[rows], pooled["score"]["edges"], w),
        }
    return out


def reference_statistics(
    features: pd.DataFrame,
    probability: FloatArray,
    weights: FloatArray | None = None,
    labs: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """Reference statistics of every feature and of the score, from out-of-sample rows (the
    calibration period); `weights` (1 for cases, 1/r_s for controls) give a case-control sample
    the population's distribution. Records whether they are weighted. With `labs` (each row's
    lab), also the statistics per lab (`by_lab`, see `lab_statistics`)."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w is not None and (w.size != len(features) or not (np.isfinite(w).all() and (w > 0).all())):
        raise ValueError("weights must be one finite positive number per row")
    reference: dict[str, Any] = {
        "features": {
            c: describe(features[c].to_numpy(np.float64), weights=w) for c in features.columns
        },
        "score": describe(np.asarray(probability, dtype=np.float64), weights=w),
        "weighted": w is not None,
    }
    if labs is not None:
        reference["by_lab"] = lab_statistics(features, probability, labs, reference, w)
        reference["min_lab_rows"] = MIN_LAB_ROWS
    return reference


def training_missing(frames: Sequence[pd.DataFrame]) -> dict[str, Any]:
    """Each model input's missing rate over the rows the model was fitted on (the frames
    together, unweighted: what the model saw, not the population). Inputs that are (almost)
    never missing here are required at scoring (`TriagePredictor.required_inputs`)."""
    rows = sum(len(f) for f in frames)
    columns = list(frames[0].columns) if frames else []
    missing = {c: sum(int(f[c].isna().sum()) for f in frames) for c in columns}
    return {
        "rows": rows,
        "missing_rate": {c: (missing[c] / rows if rows else float("nan")) for c in columns},
    }
