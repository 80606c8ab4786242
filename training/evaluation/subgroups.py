"""Subgroups and periods of an evaluation: per level of each subgroup column its AUC and
observed/expected with patient-level bootstrap CIs (the same resamples as the headline figures),
its rule-out sensitivity with a Wilson CI and flags; per calendar period its AUC and O/E.

A level is flagged when it has at least `min_events` events and either the upper 95% bound of
its rule-out sensitivity is below the target or its O/E interval lies wholly outside the allowed
range. With row weights (case-control data on the population scale) every figure but the counts
and the sensitivity (cases weigh 1) is weighted.

The bootstrap is vectorised: each column's rows are put in slots once (per level: each distinct
case value, the controls tied with it, and the controls between consecutive case values), so a
resample costs one bincount per column plus one for the expected counts of every column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation.basics import (
    NAN,
    FloatArray,
    IntArray,
    as_arrays,
    as_weights,
    bootstrap_weights,
    interval,
    ratio,
    sum_by,
    weighted_auc,
    wilson_interval,
)

AgeBands = Sequence[tuple[str, float, float]]
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("18-49", 18, 50),
    ("50-59", 50, 60),
    ("60-69", 60, 70),
    ("70-79", 70, 80),
    ("80+", 80, math.inf),
)
# Ten-year bands for populations aged 40 and over (e.g. myeloma in primary care).
DECADE_AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("40-49", 40, 50),
    ("50-59", 50, 60),
    ("60-69", 60, 70),
    ("70-79", 70, 80),
    ("80+", 80, math.inf),
)
MISSING_LEVEL = "(missing)"
MIN_EVENTS_FOR_AUC = 5
FLAG_MIN_EVENTS = 20  # models.spec_policy.PromotionGates.subgroup_min_events
OE_RANGE = (0.8, 1.25)  # models.spec_policy.PromotionGates.observed_expected


def require(frame: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns missing from the frame: {missing}")


def age_band(age: pd.Series, bands: AgeBands = AGE_BANDS) -> pd.Series:
    """Age bands (contiguous, e.g. 18-49, 50-59, 60-69, 70-79, 80+); outside or missing: NaN."""
    edges = [band[1] for band in bands] + [bands[-1][2]]
    labels = [band[0] for band in bands]
    return pd.cut(pd.to_numeric(age, errors="coerce"), edges, right=False, labels=labels)


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


def level_codes(values: pd.Series) -> tuple[IntArray, list[str]]:
    """Each row's level (0-based; missing values form the last level) and the level labels."""
    levels = _levels(values)
    codes = np.full(len(values), -1, dtype=np.intp)
    for number, level in enumerate(levels):
        codes[(values == level).fillna(False).to_numpy(dtype=bool)] = number
    labels = [_level_label(level) for level in levels]
    if values.isna().any():
        codes[values.isna().to_numpy()] = len(labels)
        labels.append(MISSING_LEVEL)
    return codes, labels


@dataclass(frozen=True)
class _ColumnSlots:
    """One column's rows in slots: per level L (m_L distinct case values), m_L case slots, m_L
    slots of controls tied with a case value and m_L + 1 slots of controls strictly between
    consecutive case values. Weighted Mann-Whitney per level follows from the slot totals."""

    n_levels: int
    slot: IntArray  # each row's slot
    n_slots: int
    case_slot: IntArray  # per case cell (levels concatenated): its case slot
    tie_slot: IntArray  # ... the slot of controls tied with it
    below_slot: IntArray  # ... the slot of controls between it and the case value below
    above_slot: IntArray  # per level: controls above its highest case value
    cell_level: IntArray  # per case cell: its level
    level_first: IntArray  # per case cell: index of its level's first case cell

    @classmethod
    def of(cls, y: IntArray, p: FloatArray, codes: IntArray, n_levels: int) -> _ColumnSlots:
        slot = np.full(y.size, -1, dtype=np.intp)
        parts: dict[str, list[IntArray]] = {k: [] for k in ("case", "tie", "below", "level")}
        above, firsts, offset, cells = [], [], 0, 0
        for level in range(n_levels):
            rows = np.flatnonzero(codes == level)
            is_case = y[rows] == 1
            values = np.unique(p[rows[is_case]])
            m = values.size
            slot[rows[is_case]] = offset + np.searchsorted(values, p[rows[is_case]])
            controls = rows[~is_case]
            pos = np.searchsorted(values, p[controls], side="left")
            tied = np.zeros(controls.size, dtype=bool)
            tied[pos < m] = values[pos[pos < m]] == p[controls][pos < m]
            slot[controls] = np.where(tied, offset + m + pos, offset + 2 * m + pos)
            cell = np.arange(m)
            parts["case"].append(offset + cell)
            parts["tie"].append(offset + m + cell)
            parts["below"].append(offset + 2 * m + cell)
            parts["level"].append(np.full(m, level, dtype=np.intp))
            firsts.append(np.full(m, cells, dtype=np.intp))
            above.append(offset + 3 * m)
            offset, cells = offset + 3 * m + 1, cells + m
        slot[slot < 0] = offset  # a row in no level (none expected) goes to a spare slot
        joined = {k: np.concatenate(v) if v else np.zeros(0, np.intp) for k, v in parts.items()}
        first = np.concatenate(firsts) if firsts else np.zeros(0, np.intp)
        return cls(n_levels, slot, offset + 1, joined["case"], joined["tie"], joined["below"],
                   np.asarray(above, dtype=np.intp), joined["level"], first)  # fmt: skip


class SubgroupStatistics:
    """AUC and observed/expected of every level of every subgroup column, for any row weights
    (the population weights for the estimates, times bootstrap counts for a resample). The
    columns' slots are laid end to end, so a resample is one bincount per column and then one
    pass of array work for every level of every column."""

    def __init__(self, y: IntArray, p: FloatArray, columns: dict[str, pd.Series]) -> None:
        self.p = p
        self.labels: list[tuple[str, str]] = []
        self.codes: list[IntArray] = []
        self.slots: list[_ColumnSlots] = []
        for name, values in columns.items():
            codes, labels = level_codes(values)
            self.labels += [(name, label) for label in labels]
            self.codes.append(codes)
            self.slots.append(_ColumnSlots.of(y, p, codes, len(labels)))
        sizes = [c.n_levels for c in self.slots]
        slot_at = np.cumsum([0, *(c.n_slots for c in self.slots)])
        level_at = np.cumsum([0, *sizes])
        cell_at = np.cumsum([0, *(c.case_slot.size for c in self.slots)])

        def joined(name: str, offsets: IntArray) -> IntArray:
            parts = [getattr(c, name) + o for c, o in zip(self.slots, offsets, strict=False)]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)

        self.n_levels = int(level_at[-1])
        self.case_slot, self.tie_slot = joined("case_slot", slot_at), joined("tie_slot", slot_at)
        self.below_slot = joined("below_slot", slot_at)
        self.above_slot = joined("above_slot", slot_at)
        self.cell_level = joined("cell_level", level_at)
        self.level_first = joined("level_first", cell_at)
        # One bincount over the observed combinations of levels (mixed-radix keys) gives every
        # level's expected count.
        radices = np.cumprod([1, *sizes[:-1]]).astype(np.int64)[: len(sizes)]
        key = np.zeros(y.size, dtype=np.int64)
        for codes, radix in zip(self.codes, radices, strict=True):
            key += codes.astype(np.int64) * radix
        combos, combo = np.unique(key, return_inverse=True)
        self.combo, self.n_combos = combo.astype(np.intp).ravel(), combos.size
        per_column = [
            (combos // r) % n + o for r, n, o in zip(radices, sizes, level_at, strict=False)
        ]
        self.combo_level = np.concatenate(per_column) if per_column else np.zeros(0, np.intp)
        self.samples: list[tuple[FloatArray, FloatArray]] = []

    def statistics(self, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Per level (columns concatenated): AUC and observed / expected."""
        if not self.slots:
            return np.zeros(0), np.zeros(0)
        s = np.concatenate([sum_by(c.slot, weights, c.n_slots) for c in self.slots])
        cases, ties, between = s[self.case_slot], s[self.tie_slot], s[self.below_slot]
        controls = ties + between
        running = np.concatenate([[0.0], np.cumsum(controls)])
        below = running[1:] - ties - running[self.level_first]
        levels = self.n_levels
        numerator = sum_by(self.cell_level, cases * (below + 0.5 * ties), levels)
        n_cases = sum_by(self.cell_level, cases, levels)
        n_controls = sum_by(self.cell_level, controls, levels) + s[self.above_slot]
        by_combo = sum_by(self.combo, weights * self.p, self.n_combos)
        expected = sum_by(self.combo_level, np.tile(by_combo, len(self.slots)), levels)
        with np.errstate(divide="ignore", invalid="ignore"):
            area = np.where((n_cases > 0) & (n_controls > 0),
                            numerator / (n_cases * n_controls), np.nan)  # fmt: skip
            oe = np.where(expected > 0, n_cases / expected, np.nan)
        return area, oe

    def add(self, weights: FloatArray) -> None:
        """Record one resample."""
        self.samples.append(self.statistics(weights))

    def sample_matrices(self) -> tuple[FloatArray, FloatArray]:
        """Resamples x levels of the AUC and of the O/E."""
        width = len(self.labels)
        if not self.samples:
            return np.zeros((0, width)), np.zeros((0, width))
        return (np.vstack([s[0] for s in self.samples]),
                np.vstack([s[1] for s in self.samples]))  # fmt: skip


def subgroup_rows(
    y: IntArray, p: FloatArray, w: FloatArray | None, stats: SubgroupStatistics,
    rule_out: float | None, *, min_events_for_auc: int = MIN_EVENTS_FOR_AUC,
    sensitivity_target: float | None = None, min_events: int = FLAG_MIN_EVENTS,
    oe_range: tuple[float, float] = OE_RANGE,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per column and level from the recorded resamples (see the module docstring)."""
    weights = np.ones(y.size) if w is None else w
    auc_point, oe_point = stats.statistics(weights)
    auc_samples, oe_samples = stats.sample_matrices()
    rows: list[dict[str, Any]] = []
    index = 0
    for codes, slots in zip(stats.codes, stats.slots, strict=True):
        for level in range(slots.n_levels):
            column, label = stats.labels[index]
            mask = codes == level
            y_sub, p_sub, w_sub = y[mask], p[mask], weights[mask]
            events, n = int(y_sub.sum()), int(y_sub.size)
            enough = events >= min_events_for_auc and n - events > 0
            area = (interval(auc_point[index], auc_samples[:, index]) if enough
                    else {"estimate": NAN, "low": NAN, "high": NAN})  # fmt: skip
            oe = interval(oe_point[index], oe_samples[:, index])
            if rule_out is None:
                sensitivity = {"estimate": NAN, "low": NAN, "high": NAN}
            else:
                detected = int(np.count_nonzero(p_sub[y_sub == 1] >= rule_out))
                sensitivity = wilson_interval(detected, events)
            flags = []
            if events >= min_events:
                if sensitivity_target is not None and sensitivity["high"] < sensitivity_target:
                    flags.append("rule_out_sensitivity")
                if oe["low"] > oe_range[1] or oe["high"] < oe_range[0]:
                    flags.append("observed_expected")
            rows.append(
                {
                    "column": column,
                    "level": label,
                    "n": n,
                    "events": events,
                    "prevalence": ratio(float(w_sub[y_sub == 1].sum()), float(w_sub.sum())),
                    "auc": area["estimate"],
                    "auc_low": area["low"],
                    "auc_high": area["high"],
                    "observed_expected": float(oe_point[index]),
                    "observed_expected_ci": oe,
                    "rule_out_sensitivity": sensitivity,
                    "checked": events >= min_events,
                    "flags": flags,
                }
            )
            index += 1
    return rows


def subgroup_table(
    frame: pd.DataFrame, y_col: str, p_col: str, group_cols: Sequence[str],
    rule_out_threshold: float | None, min_events: int = MIN_EVENTS_FOR_AUC, *,
    patient_col: str | None = None, weight_col: str | None = None, n_boot: int = 200,
    seed: int = 0, sensitivity_target: float | None = None,
    flag_min_events: int = FLAG_MIN_EVENTS, oe_range: tuple[float, float] = OE_RANGE,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per column and level (missing values form their own level): n, events, AUC (NaN with fewer
    than `min_events` events or no non-events) and observed/expected, each with a bootstrap 95%
    CI over `patient_col` resamples (rows when None), the rule-out sensitivity (share of events
    with p >= threshold) with its Wilson CI, and flags (see the module docstring)."""
    require(frame, y_col, p_col, *group_cols, *(c for c in (patient_col, weight_col) if c))
    y, p = as_arrays(frame[y_col], frame[p_col])
    w = None if weight_col is None else as_weights(frame[weight_col], y.size)
    stats = SubgroupStatistics(y, p, {c: frame[c] for c in group_cols})
    groups = np.arange(y.size) if patient_col is None else frame[patient_col].to_numpy()
    for boot in bootstrap_weights(groups, n_boot, seed):
        stats.add(boot if w is None else boot * w)
    return subgroup_rows(y, p, w, stats, rule_out_threshold, min_events_for_auc=min_events,
                         sensitivity_target=sensitivity_target, min_events=flag_min_events,
                         oe_range=oe_range)  # fmt: skip


def flagged(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flagged levels: column, level, events, flags and the figures behind them."""
    keys = ("column", "level", "events", "flags", "rule_out_sensitivity", "observed_expected_ci")
    return [{k: r[k] for k in keys} for r in rows if r["flags"]]


def by_period(
    frame: pd.DataFrame, y_col: str, p_col: str, date_col: str, freq: str = "year",
    weight_col: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per calendar year (or `freq="quarter"`): n, events, AUC, observed/expected (weighted with
    `weight_col`). Rows with a missing date are left out."""
    require(frame, y_col, p_col, date_col, *((weight_col,) if weight_col else ()))
    dates = pd.to_datetime(frame[date_col], errors="coerce")
    if freq == "year":
        period = dates.dt.year.astype("Int64").astype("string")
    elif freq == "quarter":
        period = dates.dt.to_period("Q").astype("string")
    else:
        raise ValueError(f"freq must be 'year' or 'quarter', not {freq!r}")
    y_all, p_all = as_arrays(frame[y_col], frame[p_col])
    w_all = np.ones(y_all.size) if weight_col is None else frame[weight_col].to_numpy(np.float64)
    rows = []
    for label in sorted(period.dropna().unique()):
        mask = (period == label).fillna(False).to_numpy(dtype=bool)
        y_sub, p_sub, w_sub = y_all[mask], p_all[mask], w_all[mask]
        two_classes = 0 < y_sub.sum() < y_sub.size
        rows.append(
            {
                "period": str(label),
                "n": int(y_sub.size),
                "events": int(y_sub.sum()),
                "auc": weighted_auc(y_sub, p_sub, w_sub) if two_classes else NAN,
                "observed_expected": ratio(
                    float(w_sub[y_sub == 1].sum()), float(np.dot(w_sub, p_sub))
                ),
            }
        )
    return rows
