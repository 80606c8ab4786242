"""Drift of a replayed cohort against the training reference stored with the model: pure functions.

The reference (`models.reference`, `predictor.reference`) holds, for every model input and for the
score, interior decile edges, the share of training rows in each bin (value bins, then a missing
bin) and the missing rate. Drift is judged in two steps, so that a cohort can be counted chunk by
chunk (or partition by partition on Spark) and judged once:

1. `bin_counts`: per segment (period x lab), how many rows fall in each reference bin of each
   feature and of the score. Counts from several chunks add up (`combine_counts`).
2. `drift_table`: the counts rolled up to every level (all rows, by period, by lab, by lab and
   period), and for each feature:
   - PSI of the *observed* values against the reference's observed-value shares. The missing bin
     is judged on its own (below), so a lab that never measures an analyte shows as a
     missingness change rather than as a PSI dominated by the empty-bin epsilon;
   - the missing rate and its change against the reference (absolute difference);
   - for the score (the calibrated probability), PSI against the training score distribution.

Flags use the conventional thresholds: PSI > 0.1 moderate, PSI > 0.25 major, and an absolute
missingness change > 0.1, but only when the difference is also beyond sampling noise: small
segments (a tumour marker at one lab in one year) cross 0.1 by chance. Without drift,
n_eff * PSI is approximately chi-squared with (bins - 1) degrees of freedom (PSI ~ Pearson's
chi-squared / n for small differences; n_eff = 1 / (1/n + 1/n_reference)), and the missingness
change is a difference of two proportions; a flag needs p < 0.001 as well. Segments with fewer
than `min_rows` observed values get no PSI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as scipy_stats

from models.reference import psi

FloatArray = npt.NDArray[np.float64]
ALL = "all"
UNKNOWN_PERIOD = "unknown"
SCORE = "score"  # the feature name under which the score's counts are kept
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
MISSINGNESS_CHANGE = 0.1
MIN_ROWS = 100
NOISE_P_VALUE = 0.001  # a flag also needs the change to be this unlikely without drift
COUNT_COLUMNS = ["period", "lab", "feature", "bin", "count"]
DRIFT_COLUMNS = [
    "feature", "kind", "lab", "period", "n", "n_observed", "missing_rate",
    "reference_missing_rate", "missing_change", "missing_p_value", "psi", "psi_p_value", "psi_flag",
    "missingness_flag", "flagged",
]  # fmt: skip


def period_labels(dates: pd.Series) -> npt.NDArray[np.object_]:
    """The calendar year of each date as text ("2017"); `unknown` where the date is missing."""
    codes, labels = _period_codes(dates)
    return np.array(labels, dtype=object)[codes]  # code -1 (missing) picks the last label


def period_categories(dates: pd.Series) -> pd.Categorical[Any]:
    """`pd.Categorical(period_labels(dates))` (categories in text order), built from the few
    distinct years instead of hashing every row's label."""
    codes, labels = _period_codes(dates)
    used = sorted({labels[c] for c in np.unique(codes)})
    position = {label: i for i, label in enumerate(used)}
    number = np.array([position.get(label, -1) for label in labels], dtype=np.int64)
    return pd.Categorical.from_codes(number[codes], categories=pd.Index(used))


def _period_codes(dates: pd.Series) -> tuple[npt.NDArray[np.intp], list[str]]:
    """Each date's position among the distinct years found (-1: missing), and their labels
    followed by `unknown` (so that -1 picks it)."""
    years = pd.to_datetime(dates, errors="coerce").dt.year.to_numpy(np.float64)
    codes, found = pd.factorize(years)  # a few distinct years: label those, then index
    return codes, [*(str(int(y)) for y in found), UNKNOWN_PERIOD]


def segments(
    period: npt.NDArray[np.object_], lab: npt.NDArray[np.object_]
) -> tuple[npt.NDArray[np.int64], list[tuple[Any, Any]]]:
    """Each row's (period, lab) segment as a code, and the segments in code order."""
    period_codes, periods = pd.factorize(period)
    lab_codes, labs = pd.factorize(lab)
    combined = period_codes.astype(np.int64) * max(len(labs), 1) + lab_codes
    width = max(len(labs), 1)
    if len(combined) and combined.min() >= 0:
        # A few hundred possible segments at most: count them instead of sorting every row
        # (what np.unique does), then number the ones found in order.
        found = np.flatnonzero(np.bincount(combined))
        number = np.zeros(found[-1] + 1, dtype=np.int64)
        number[found] = np.arange(len(found))
        segment = number[combined]
    else:  # missing periods or labs (code -1)
        found, segment = np.unique(combined, return_inverse=True)
    uniques = [(periods[c // width], labs[c % width]) for c in found]
    return segment.astype(np.int64), uniques


def _bins(values: FloatArray, edges: Sequence[float]) -> npt.NDArray[np.integer[Any]]:
    """Reference bin of each value: 0..len(edges) for values, len(edges) + 1 for missing (as in
    `models.reference.binned_shares`)."""
    # Counting edges <= value is searchsorted(side="right"); with a handful of edges, one
    # comparison pass per edge is several times faster than a binary search per value, and
    # counting in int8 (a reference has about ten edges) moves an eighth of the bytes of int64.
    kind: type[np.integer[Any]] = np.int8 if len(edges) < 100 else np.int64
    bins: npt.NDArray[np.integer[Any]] = np.zeros(len(values), dtype=kind)
    with np.errstate(invalid="ignore"):
        for edge in edges:
            bins += values >= edge
    bins[np.isnan(values)] = len(edges) + 1
    return bins


def bin_counts(
    features: pd.DataFrame,
    reference: Mapping[str, Any],
    period: npt.ArrayLike,
    lab: npt.ArrayLike,
    score: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """Rows per reference bin of each feature (and of the score), per period and lab.

    `features` holds model inputs (one column per feature, float); `reference` is the model's
    reference statistics (`{"features": {name: stats}, "score": stats}`); `period` and `lab` give
    each row's segment. Columns of `features` without reference statistics are skipped. Returns
    a long frame (period, lab, feature, bin, count) with the non-zero counts only.
    """
    n = len(features)
    period_arr = np.asarray(period, dtype=object)
    lab_arr = np.asarray(lab, dtype=object)
    if len(period_arr) != n or len(lab_arr) != n:
        raise ValueError(f"period ({len(period_arr)}) and lab ({len(lab_arr)}) need {n} rows")
    segment, uniques = segments(period_arr, lab_arr)
    columns: dict[str, FloatArray] = {
        name: features[name].to_numpy(np.float64)
        for name in features.columns
        if name in reference.get("features", {})
    }
    stats: dict[str, Mapping[str, Any]] = {k: reference["features"][k] for k in columns}
    if score is not None and "score" in reference:
        columns[SCORE] = np.asarray(score, dtype=np.float64)
        stats[SCORE] = reference["score"]
    found: list[tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]]
    found = []
    offsets: dict[int, npt.NDArray[np.int64]] = {}  # segment * width, once per width
    for i, (name, values) in enumerate(columns.items()):
        width = len(stats[name]["edges"]) + 2
        if width not in offsets:
            offsets[width] = segment * width
        flat = np.bincount(
            offsets[width] + _bins(values, stats[name]["edges"]), minlength=len(uniques) * width
        ).reshape(len(uniques), width)
        seg, bin_ = np.nonzero(flat)
        found.append((i, seg, bin_, flat[seg, bin_]))
    if not found:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COUNT_COLUMNS})
    seg = np.concatenate([f[1] for f in found])
    periods = np.array([u[0] for u in uniques] + [None], dtype=object)
    labs = np.array([u[1] for u in uniques] + [None], dtype=object)
    names = np.array(list(columns), dtype=object)
    return pd.DataFrame(
        {
            "period": periods[seg],
            "lab": labs[seg],
            "feature": names[np.concatenate([np.full(len(f[1]), f[0]) for f in found])],
            "bin": np.concatenate([f[2] for f in found]).astype(np.int64),
            "count": np.concatenate([f[3] for f in found]).astype(np.int64),
        }
    )


def combine_counts(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Counts of several chunks summed into one frame (same layout as `bin_counts`)."""
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COUNT_COLUMNS})
    joined = pd.concat(frames, ignore_index=True)
    summed = joined.groupby(["period", "lab", "feature", "bin"], sort=True)["count"].sum()
    return summed.reset_index().astype({"bin": np.int64, "count": np.int64})


def _rollups(counts: pd.DataFrame) -> pd.DataFrame:
    """Counts at every level: (period, lab), (period, all), (all, lab) and (all, all)."""
    levels = [counts]
    for keep in (["period"], ["lab"], []):
        summed = counts.groupby([*keep, "feature", "bin"], sort=False)["count"].sum().reset_index()
        for column in ("period", "lab"):
            if column not in keep:
                summed[column] = ALL
        levels.append(summed[COUNT_COLUMNS])
    both = pd.concat(levels, ignore_index=True)
    return both.drop_duplicates(["period", "lab", "feature", "bin"])


def observed_shares(shares: Sequence[float]) -> FloatArray:
    """Reference value-bin shares renormalised over the observed values (missing bin dropped)."""
    values = np.asarray(shares[:-1], dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.full(len(values), np.nan)


def psi_flag(value: float, p_value: float = 0.0) -> str:
    """`major` above 0.25, `moderate` above 0.1, else empty; empty too when the PSI is within
    sampling noise (`p_value` >= NOISE_P_VALUE) or NaN."""
    if not np.isfinite(value) or not p_value < NOISE_P_VALUE:
        return ""
    if value > PSI_MAJOR:
        return "major"
    return "moderate" if value > PSI_MODERATE else ""


def psi_p_value(value: float, n: int, n_reference: float, bins: int) -> float:
    """How likely a PSI at least this large is without drift: n_eff * PSI ~ chi2(bins - 1)."""
    if not np.isfinite(value) or n <= 0 or bins < 2:
        return float("nan")
    n_eff = 1.0 / (1.0 / n + (1.0 / n_reference if n_reference > 0 else 0.0))
    return float(scipy_stats.chi2.sf(n_eff * value, bins - 1))


def proportion_p_value(rate: float, n: int, reference_rate: float, n_reference: float) -> float:
    """Two-sided p-value of a difference between two proportions (normal approximation)."""
    if n <= 0 or not np.isfinite(rate):
        return float("nan")
    pooled = (rate * n + reference_rate * n_reference) / (n + n_reference)
    variance = pooled * (1 - pooled) * (1.0 / n + (1.0 / n_reference if n_reference > 0 else 0))
    if variance <= 0:
        return 1.0 if rate == reference_rate else 0.0
    return float(2 * scipy_stats.norm.sf(abs(rate - reference_rate) / np.sqrt(variance)))


def _drift_row(
    feature: str, vector: npt.NDArray[np.int64], stats: Mapping[str, Any], min_rows: int
) -> dict[str, Any]:
    n = int(vector.sum())
    missing = int(vector[-1])
    observed = n - missing
    expected = observed_shares(stats["shares"])
    value = (
        psi(expected.tolist(), (vector[:-1] / observed).tolist())
        if observed >= min_rows and np.isfinite(expected).all()
        else float("nan")
    )
    reference_missing = float(stats.get("missing_rate", 0.0))
    reference_n = float(stats.get("n", 0))
    value_p = psi_p_value(value, observed, reference_n * (1 - reference_missing), len(expected))
    missing_rate = missing / n if n else float("nan")
    change = missing_rate - reference_missing
    missing_p = proportion_p_value(missing_rate, n, reference_missing, reference_n)
    missingness = bool(
        n >= min_rows and abs(change) > MISSINGNESS_CHANGE and missing_p < NOISE_P_VALUE
    )
    flag = psi_flag(value, value_p)
    return {
        "feature": feature,
        "n": n,
        "n_observed": observed,
        "missing_rate": missing_rate,
        "reference_missing_rate": reference_missing,
        "missing_change": change,
        "missing_p_value": missing_p,
        "psi": value,
        "psi_p_value": value_p,
        "psi_flag": flag,
        "missingness_flag": missingness,
        "flagged": bool(flag) or missingness,
    }


def drift_table(
    counts: pd.DataFrame,
    reference: Mapping[str, Any],
    *,
    kinds: Mapping[str, str] | None = None,
    min_rows: int = MIN_ROWS,
) -> pd.DataFrame:
    """PSI, missing rate and flags per feature (and score) at every level of period and lab.

    `counts` comes from `bin_counts`/`combine_counts`; `kinds` names each feature's kind
    (analyte, derived, demographic, context; the score is `score`). Rows are ordered by feature
    (reference order, score last), then lab and period with `all` first.
    """
    stats: dict[str, Mapping[str, Any]] = dict(reference.get("features", {}))
    if "score" in reference:
        stats[SCORE] = reference["score"]
    kinds = {**(kinds or {}), SCORE: "score"}
    rows: list[dict[str, Any]] = []
    if len(counts):
        rolled = _rollups(counts)
        for (feature, lab, period), group in rolled.groupby(
            ["feature", "lab", "period"], sort=False
        ):
            if feature not in stats:
                continue
            width = len(stats[feature]["edges"]) + 2
            vector = np.zeros(width, dtype=np.int64)
            np.add.at(vector, group["bin"].to_numpy(np.int64), group["count"].to_numpy(np.int64))
            row = _drift_row(str(feature), vector, stats[feature], min_rows)
            rows.append({**row, "kind": kinds.get(str(feature), "feature"), "lab": lab,
                         "period": period})  # fmt: skip
    table = pd.DataFrame(rows, columns=DRIFT_COLUMNS)
    order = {name: i for i, name in enumerate(stats)}
    table = table.assign(
        _feature=table["feature"].map(order),
        _lab=table["lab"] != ALL,
        _period=table["period"] != ALL,
    )
    table = table.sort_values(["_feature", "_lab", "lab", "_period", "period"], kind="stable")
    return table.drop(columns=["_feature", "_lab", "_period"]).reset_index(drop=True)


def flagged(table: pd.DataFrame) -> pd.DataFrame:
    """The flagged rows of a drift table, largest PSI first (then largest missingness change)."""
    rows = table[table["flagged"]]
    order = rows.assign(
        _psi=rows["psi"].fillna(-1.0), _missing=rows["missing_change"].abs()
    ).sort_values(["_psi", "_missing"], ascending=False, kind="stable")
    return order.drop(columns=["_psi", "_missing"]).reset_index(drop=True)


def drift_summary(table: pd.DataFrame) -> dict[str, Any]:
    """A JSON-ready digest for a manifest: thresholds, counts of flags, and the flagged rows."""
    rows = flagged(table)
    records = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows.to_dict("records")
    ]
    return {
        "thresholds": {
            "psi_moderate": PSI_MODERATE,
            "psi_major": PSI_MAJOR,
            "missingness_change": MISSINGNESS_CHANGE,
            "min_rows": MIN_ROWS,
            "noise_p_value": NOISE_P_VALUE,
        },
        "psi_values": "observed values only; missingness is judged separately",
        "flagged": len(rows),
        "major": int((rows["psi_flag"] == "major").sum()),
        "moderate": int((rows["psi_flag"] == "moderate").sum()),
        "missingness": int(rows["missingness_flag"].sum()),
        "rows": records,
    }
