"""Training reference statistics stored with a model: drift checks (PSI) and soft outliers.

For each feature: the missing rate, interior decile edges of the observed values, the share of rows
in each bin (with a last bin for missing), and the 0.1th/99.9th percentiles that bound what the
model saw in training. The same is kept for the score distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
SOFT_QUANTILES = (0.001, 0.999)
PSI_EPSILON = 1e-4


def bin_edges(values: FloatArray, n_bins: int = 10) -> list[float]:
    """Unique interior quantile edges of the non-missing values."""
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        return []
    qs = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [float(q) for q in np.unique(qs)]


def binned_shares(values: FloatArray, edges: Sequence[float]) -> list[float]:
    """Share of rows per bin: len(edges) + 1 value bins, then a missing bin."""
    missing = np.isnan(values)
    counts = np.bincount(
        np.searchsorted(np.asarray(edges), values[~missing], side="right"),
        minlength=len(edges) + 1,
    ).astype(np.float64)
    shares = np.append(counts, missing.sum())
    return [float(s) for s in shares / max(len(values), 1)]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two binned distributions (shares)."""
    e = np.clip(np.asarray(expected, dtype=np.float64), PSI_EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def describe(values: FloatArray, n_bins: int = 10) -> dict[str, Any]:
    """Reference statistics of one column."""
    edges = bin_edges(values, n_bins)
    observed = values[~np.isnan(values)]
    low, high = (
        (float(np.quantile(observed, q)) for q in SOFT_QUANTILES)
        if observed.size
        else (float("nan"), float("nan"))
    )
    return {
        "n": len(values),
        "missing_rate": float(np.isnan(values).mean()) if len(values) else float("nan"),
        "edges": edges,
        "shares": binned_shares(values, edges),
        "low": low,
        "high": high,
    }


def reference_statistics(features: pd.DataFrame, probability: FloatArray) -> dict[str, Any]:
    """Reference statistics of every feature and of the score, from the training period."""
    return {
        "features": {c: describe(features[c].to_numpy(np.float64)) for c in features.columns},
        "score": describe(np.asarray(probability, dtype=np.float64)),
    }
