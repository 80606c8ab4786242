"""Drift of a replayed cohort against the training reference stored with the model: pure functions.

The reference (`models.reference`, `predictor.reference`) holds, for every model input and for the
score, interior decile edges, the share of training rows in each bin (value bins, then a missing
bin) and the missing rate. Drift is judged in two steps, so that a cohort can be counted chunk by
chunk (or partition by partition on Spark) and judged once:

1. `bin_counts`: per segment (period x lab), how many rows fall in each reference bin of each
   feature and of the score. Counts from several chunks add up (`combine_counts`).
2. `drift_table`: the counts at every level (all rows, by period, by lab, by lab and period),
   each compared with the reference that makes drift mean change over time
   (`drift_reference`): a lab with that lab's own training-period reference, all labs with the
   labs' references mixed by the segment's own lab composition (so a change in lab mix is not
   drift), the pooled reference where a lab has none (the `reference` column says which). For
   each feature:
   - PSI of the *observed* values against the reference's observed-value shares. The missing bin
     is judged on its own (below), so a lab that stops measuring an analyte shows as a
     missingness change rather than as a PSI dominated by the empty-bin epsilon;
   - the missing rate and its change against the reference (absolute difference);
   - for the score (the calibrated probability), PSI against the training score distribution.

Flags use the conventional thresholds: PSI > 0.1 moderate, PSI > 0.25 major, and an absolute
missingness change > 0.1, but only when the difference is also beyond sampling noise: small
segments (a tumour marker at one lab in one year) cross 0.1 by chance. Without drift,
n_eff * PSI is approximately chi-squared with (bins - 1) degrees of freedom (PSI ~ Pearson's
chi-squared / n for small differences; n_eff = 1 / (1/n + 1/n_reference)), and the missingness
change is a difference of two proportions; a flag needs p < 0.001 / (tests in the table) as well
(Bonferroni: a table holds thousands of tests, features x labs x years, and at p < 0.001 each a
few would cross by chance in every replay). Segments with fewer than `min_rows` observed values
get no PSI, with fewer than `min_rows` rows no missingness test.

3. `flagged`, `flag_groups`, `drift_summary` and `console_summary` read a drift table: the flags,
   grouped by feature and lab for the manifest and the console. Differences between labs that
   stand since training are not drift; `standing_differences` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.reference import psi
from training.evaluation.drift_reference import (
    MIN_ROWS,
    MISSINGNESS_CHANGE,
    NOISE_P_VALUE,
    POOLED,
    PSI_MAJOR,
    PSI_MODERATE,
    SCORE,
    Expected,
    feature_stats,
    lab_expected,
    lab_mix,
    noise_threshold,
    proportion_p_value,
    psi_flag,
    psi_p_value,
)
from training.evaluation.drift_reference import STANDING_COLUMNS as STANDING_COLUMNS
from training.evaluation.drift_reference import standing_differences as standing_differences

FloatArray = npt.NDArray[np.float64]
ALL = "all"
UNKNOWN_PERIOD = "unknown"
COUNT_COLUMNS = ["period", "lab", "feature", "bin", "count"]
DRIFT_COLUMNS = [
    "feature", "kind", "lab", "period", "n", "n_observed", "missing_rate",
    "reference_missing_rate", "missing_change", "missing_p_value", "psi", "psi_p_value", "psi_flag",
    "missingness_flag", "flagged", "reference",
]  # fmt: skip
COLUMN_TYPES = {
    "n": np.int64, "n_observed": np.int64, "missing_rate": float, "reference_missing_rate": float,
    "missing_change": float, "missing_p_value": float, "psi": float, "psi_p_value": float,
    "missingness_flag": bool, "flagged": bool,
}  # fmt: skip


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


def _vectors(
    counts: pd.DataFrame, stats: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[tuple[str, str], npt.NDArray[np.int64]]]:
    """Per feature with reference statistics: the bin counts of each (lab, period) found, and of
    each lab over all periods (period `all`)."""
    summed = counts.groupby(["feature", "lab", "period", "bin"], sort=False)["count"].sum()
    out: dict[str, dict[tuple[str, str], npt.NDArray[np.int64]]] = {}
    for (feature, lab, period), group in summed.reset_index().groupby(
        ["feature", "lab", "period"], sort=False
    ):
        if str(feature) not in stats:
            continue
        width = len(stats[str(feature)]["edges"]) + 2
        vector = np.zeros(width, dtype=np.int64)
        np.add.at(vector, group["bin"].to_numpy(np.int64), group["count"].to_numpy(np.int64))
        segments_found = out.setdefault(str(feature), {})
        segments_found[(str(lab), str(period))] = vector
        segments_found.setdefault((str(lab), ALL), np.zeros(width, dtype=np.int64))
        segments_found[(str(lab), ALL)] += vector
    return out


def _drift_row(
    feature: str, vector: npt.NDArray[np.int64], expected: Expected, min_rows: int
) -> dict[str, Any]:
    n = int(vector.sum())
    missing = int(vector[-1])
    observed = n - missing
    value = (
        psi(expected.shares.tolist(), (vector[:-1] / observed).tolist())
        if observed >= min_rows and np.isfinite(expected.shares).all()
        else float("nan")
    )
    value_p = psi_p_value(value, observed, expected.n_observed, len(expected.shares))
    missing_rate = missing / n if n else float("nan")
    missing_p = (
        proportion_p_value(missing_rate, n, expected.missing_rate, expected.n)
        if n >= min_rows
        else float("nan")
    )
    return {
        "feature": feature,
        "n": n,
        "n_observed": observed,
        "missing_rate": missing_rate,
        "reference_missing_rate": expected.missing_rate,
        "missing_change": missing_rate - expected.missing_rate,
        "missing_p_value": missing_p,
        "psi": value,
        "psi_p_value": value_p,
        "reference": expected.source,
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
    (analyte, derived, demographic, context; the score is `score`). A lab's rows are compared
    with its own reference, all labs' with the lab mix, and `reference` says which (module
    docstring). Rows are ordered by feature (reference order, score last), then lab and period
    with `all` first. Empty counts give an empty table with the same columns.
    """
    stats = feature_stats(reference)
    kinds = {**(kinds or {}), SCORE: "score"}
    rows: list[dict[str, Any]] = []
    for feature, found in (_vectors(counts, stats) if len(counts) else {}).items():
        kind = kinds.get(feature, "feature")
        for period in dict.fromkeys(period for _, period in found):
            here = {lab: vector for (lab, p), vector in found.items() if p == period}
            for lab, vector in here.items():
                if lab != ALL:
                    row = _drift_row(
                        feature, vector, lab_expected(reference, feature, lab), min_rows
                    )
                    rows.append({**row, "kind": kind, "lab": lab, "period": period})
            composition = {lab: (int(v.sum()), int(v.sum() - v[-1])) for lab, v in here.items()}
            expected = lab_mix(reference, feature, composition)
            total = np.sum(list(here.values()), axis=0)
            rows.append({**_drift_row(feature, total, expected, min_rows), "kind": kind, "lab": ALL,
                         "period": period})  # fmt: skip
    table = _flags(pd.DataFrame(rows, columns=DRIFT_COLUMNS)).astype(COLUMN_TYPES)
    order = {name: i for i, name in enumerate(stats)}
    table = table.assign(
        _feature=table["feature"].map(order),
        _lab=table["lab"] != ALL,
        _period=table["period"] != ALL,
    )
    table = table.sort_values(["_feature", "_lab", "lab", "_period", "period"], kind="stable")
    return table.drop(columns=["_feature", "_lab", "_period"]).reset_index(drop=True)


def table_noise_threshold(table: pd.DataFrame) -> float:
    """The p-value a flag in this table needs (`noise_threshold` over its PSI and missingness
    tests)."""
    tests = [*table["psi_p_value"].astype(float), *table["missing_p_value"].astype(float)]
    return noise_threshold(tests)


def _flags(table: pd.DataFrame) -> pd.DataFrame:
    """The PSI and missingness flags of a table whose p-values are filled in."""
    alpha = table_noise_threshold(table)
    psi_flags = [
        psi_flag(v, p, alpha)
        for v, p in zip(table["psi"].astype(float), table["psi_p_value"].astype(float), strict=True)
    ]
    missingness = (table["missing_change"].astype(float).abs() > MISSINGNESS_CHANGE) & (
        table["missing_p_value"].astype(float) < alpha
    )
    return table.assign(
        psi_flag=pd.Series(psi_flags, index=table.index, dtype=object),
        missingness_flag=missingness,
        flagged=missingness | (pd.Series(psi_flags, index=table.index, dtype=object) != ""),
    )


def flagged(table: pd.DataFrame) -> pd.DataFrame:
    """The flagged rows of a drift table, largest PSI first (then largest missingness change)."""
    rows = table.loc[table["flagged"].astype(bool)]
    order = rows.assign(
        _psi=rows["psi"].astype(float).fillna(-1.0), _missing=rows["missing_change"].abs()
    ).sort_values(["_psi", "_missing"], ascending=False, kind="stable")
    return order.drop(columns=["_psi", "_missing"]).reset_index(drop=True)


def _period_order(periods: Iterable[str]) -> list[str]:
    """Distinct periods in order, `all` last."""
    return sorted(set(periods), key=lambda p: (p == ALL, p))


def flag_groups(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The flags grouped by feature and lab, biggest first (largest PSI, then largest
    missingness change): the periods flagged, the largest PSI and the largest missingness change
    (signed; None without such a flag), the periods of each kind of flag, and the rows."""
    groups: list[dict[str, Any]] = []
    for (feature, lab), group in flagged(table).groupby(["feature", "lab"], sort=False):
        major = group[group["psi_flag"] == "major"]
        moderate = group[group["psi_flag"] == "moderate"]
        missing = group[group["missingness_flag"]]
        psi_rows = group[group["psi_flag"] != ""]
        change = missing["missing_change"].to_numpy(np.float64)
        groups.append(
            {
                "feature": str(feature),
                "lab": str(lab),
                "periods": _period_order(group["period"]),
                "max_psi": float(psi_rows["psi"].max()) if len(psi_rows) else None,
                "missing_change": float(change[np.abs(change).argmax()]) if len(change) else None,
                "flags": len(group),
                "psi_major": _period_order(major["period"]),
                "psi_moderate": _period_order(moderate["period"]),
                "missingness": _period_order(missing["period"]),
            }
        )
    return sorted(
        groups,
        key=lambda g: (
            -1.0 if g["max_psi"] is None else g["max_psi"],
            0.0 if g["missing_change"] is None else abs(g["missing_change"]),
        ),
        reverse=True,
    )


def drift_summary(table: pd.DataFrame) -> dict[str, Any]:
    """A JSON-ready digest for a manifest: thresholds, what each row was compared with, counts
    of flags, the flags grouped by feature and lab (`flag_groups`), and the flagged rows."""
    rows = flagged(table)
    records = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows.to_dict("records")
    ]
    compared = table["reference"].value_counts() if "reference" in table else pd.Series()
    return {
        "thresholds": {
            "psi_moderate": PSI_MODERATE,
            "psi_major": PSI_MAJOR,
            "missingness_change": MISSINGNESS_CHANGE,
            "min_rows": MIN_ROWS,
            "noise_p_value": NOISE_P_VALUE,
            "tests": int(
                np.isfinite(table["psi_p_value"].astype(float)).sum()
                + np.isfinite(table["missing_p_value"].astype(float)).sum()
            ),
            "p_value_threshold": table_noise_threshold(table),
        },
        "psi_values": "observed values only; missingness is judged separately",
        "compared_with": {str(k): int(v) for k, v in compared.items()},
        "flagged": len(rows),
        "major": int((rows["psi_flag"] == "major").sum()),
        "moderate": int((rows["psi_flag"] == "moderate").sum()),
        "missingness": int(rows["missingness_flag"].sum()),
        "by_group": flag_groups(table),
        "rows": records,
    }


def _periods_text(periods: Sequence[str]) -> str:
    """Flagged periods in words: years, runs of three or more as a range ("2011-2019"); `all`
    alone (a change seen only over the whole replay) as "over all years"."""
    years = sorted(int(p) for p in periods if p.isdigit())
    others = [p for p in periods if not p.isdigit() and p != ALL]
    if not years and not others:
        return "over all years"
    runs: list[list[int]] = []
    for year in years:
        if runs and year == runs[-1][-1] + 1:
            runs[-1].append(year)
        else:
            runs.append([year])
    words = [
        f"{run[0]}\u2013{run[-1]}" if len(run) >= 3 else ", ".join(map(str, run)) for run in runs
    ]
    return "in " + ", ".join([*words, *others])


def _group_line(group: Mapping[str, Any]) -> str:
    """One line of `console_summary`."""
    where = "all labs" if group["lab"] == ALL else group["lab"]
    severities = [
        f"{severity} {_periods_text(group[f'psi_{severity}'])}"
        for severity in ("major", "moderate")
        if group[f"psi_{severity}"]
    ]
    parts = [f"PSI {'; '.join(severities)} (max {group['max_psi']:.2f})"] if severities else []
    if group["missingness"]:
        change, periods = group["missing_change"], _periods_text(group["missingness"])
        parts.append(f"missingness {change:+.2f} {periods}")
    return f"{group['feature']} at {where}: {'; '.join(parts)}"


def console_summary(table: pd.DataFrame, limit: int = 8) -> list[str]:
    """The flags in a few lines: one per feature and lab, biggest first (`flag_groups`), e.g.
    "albumin at lab_c: PSI major in 2017-2019 (max 4.50)"; past `limit` groups, a last line
    "... and N more groups"; ["no drift flags"] without flags. A last line says so when every lab
    was compared with the pooled reference (a model saved before per-lab references)."""
    groups = flag_groups(table)
    lines = [_group_line(g) for g in groups[:limit]] or ["no drift flags"]
    if len(groups) > limit:
        lines.append(f"\u2026 and {len(groups) - limit} more groups")
    if _pooled_only(table):
        lines.append(
            "every lab compared with the pooled training reference: this model has no per-lab "
            "reference (retrain to judge each lab against its own)"
        )
    return lines


def _pooled_only(table: pd.DataFrame) -> bool:
    """Whether the table has labs but none was compared with its own reference."""
    labs = table[table["lab"] != ALL]
    return "reference" in table and len(labs) > 0 and bool((labs["reference"] == POOLED).all())
