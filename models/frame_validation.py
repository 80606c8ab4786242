"""Validation of a whole frame against the analyte catalogue: the vectorised twin of
`models.validation.validate_record` (same codes, rules and messages; a property test holds the two
equal), a million rows in seconds.

Conventions: analyte columns are named by catalogue code. Units come, per column, from an optional
`{code}_unit` column (one unit per row, as lab extracts report them), else from the `units`
argument (one unit per column, e.g. from a spec's column mapping), else the column is declared to
be in the canonical unit. A declared unit is converted, never replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import CATALOGUE, PANEL_CORE, Analyte, Catalogue
from models.units import canonical_match, to_canonical_array, unit_key, unit_table
from models.validation import (
    ISSUE_CODES,
    RULES,
    Eligibility,
    age_ok,
    message_age,
    message_ambiguous,
    message_assumed,
    message_converted,
    message_not_a_number,
    message_out_of_limits,
    message_panel,
    message_sex,
    message_unknown_unit,
    parse_sex,
)

FloatArray = npt.NDArray[np.float64]

ISSUE_COLUMNS = ["row", "severity", "code", "field", "message"]


@dataclass(frozen=True)
class FrameValidation:
    values: pd.DataFrame  # age, sex and canonical analyte values; NaN where absent or in error
    issues: pd.DataFrame  # one row per issue: row (position), severity, code, field, message
    eligible: npt.NDArray[np.bool_]

    def summary(self) -> pd.DataFrame:
        """Issue counts by severity, code and field, most frequent first, each with its first
        row (a position in the frame) and that row's message as an example."""
        if self.issues.empty:
            return pd.DataFrame(columns=["severity", "code", "field", "count", "row", "example"])
        grouped = self.issues.groupby(["severity", "code", "field"])
        counts = grouped.agg(
            count=("row", "size"), row=("row", "first"), example=("message", "first")
        )
        return counts.reset_index().sort_values(
            ["count", "code", "field"], ascending=[False, True, True], ignore_index=True
        )


class _Collector:
    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []

    def add(self, code: str, field_: str, rows: npt.NDArray[np.intp], messages: Any) -> None:
        if len(rows) == 0:
            return
        self.parts.append(
            pd.DataFrame(
                {
                    "row": rows,
                    "severity": ISSUE_CODES[code][0],
                    "code": code,
                    "field": field_,
                    "message": messages,
                }
            )
        )

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in ISSUE_COLUMNS}).astype(
                {"row": "int64"}
            )
        out = pd.concat(self.parts, ignore_index=True)
        return out.sort_values("row", kind="stable", ignore_index=True)


def validate_frame(
    frame: pd.DataFrame,
    *,
    catalogue: Catalogue = CATALOGUE,
    eligibility: Eligibility | None = None,
    units: Mapping[str, str] | None = None,
) -> FrameValidation:
    """Validate every row of a wide frame (see the module docstring for the unit conventions)."""
    n = len(frame)
    out = _Collector()
    values: dict[str, FloatArray] = {}
    provided: dict[str, npt.NDArray[np.bool_]] = {}
    for code in (c for c in frame.columns if c in catalogue):
        analyte = catalogue[code]
        unit_source: pd.Series | str = (
            frame[f"{code}_unit"]
            if f"{code}_unit" in frame.columns
            else (units or {}).get(code, analyte.unit)
        )
        values[code], provided[code] = _check_column(analyte, frame[code], unit_source, out)

    age = (
        pd.to_numeric(frame["age"], errors="coerce").to_numpy(np.float64)
        if "age" in frame
        else (np.full(n, np.nan))
    )
    bad_age = ~(age_ok(age, eligibility) & age_ok(age, None))
    rows = np.flatnonzero(bad_age)
    out.add("age_out_of_range", "age", rows, [message_age(age[i], eligibility) for i in rows])

    raw_sex = frame["sex"] if "sex" in frame else pd.Series([None] * n, index=frame.index)
    sex = raw_sex.map(parse_sex, na_action=None)  # a categorical maps its categories only
    rows = np.flatnonzero(sex.isna().to_numpy())
    if len(rows):
        raw_sex_values = raw_sex.to_numpy(dtype=object)
        out.add("invalid_sex", "sex", rows, [message_sex(raw_sex_values[i]) for i in rows])

    _eligibility_issues_frame(provided, eligibility, n, out)
    like = np.full(n, np.nan)
    for rule in RULES:
        rows = np.flatnonzero(rule.flags(values, like))
        out.add(rule.code, rule.field, rows, [rule.message(values, int(i)) for i in rows])

    issues = out.frame()
    error_rows = issues.loc[issues["severity"] == "error", "row"].to_numpy(np.intp)
    eligible = np.ones(n, dtype=bool)
    eligible[error_rows] = False
    # Every array is this function's own, so the frame takes them as they are (copy=False: no
    # consolidation into one block, which would copy every column once more).
    columns = {"age": np.array(age, dtype=np.float64), "sex": as_objects(sex), **values}
    canonical = pd.DataFrame(columns, index=frame.index, copy=False)
    return FrameValidation(values=canonical, issues=issues, eligible=eligible)


def as_objects(column: pd.Series) -> npt.NDArray[np.object_]:
    """`column.to_numpy(dtype=object)`, element for element; a categorical of text converts its
    few categories, then picks one per row, instead of converting every row."""
    if isinstance(column.dtype, pd.CategoricalDtype) and _is_text(column.cat.categories):
        names = np.asarray(column.cat.categories, dtype=object)
        lookup = np.append(names, np.array([np.nan], dtype=object))
        picked: npt.NDArray[np.object_] = lookup[column.cat.codes.to_numpy()]  # -1 picks NaN
        return picked
    return column.to_numpy(dtype=object)


def _is_text(index: pd.Index) -> bool:
    return index.dtype == object or isinstance(index.dtype, pd.StringDtype)


def _check_column(
    analyte: Analyte, column: pd.Series, unit_source: pd.Series | str, out: _Collector
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Convert one analyte column to canonical; invalid cells become NaN and raise issues.

    Returns the canonical values and which cells were given at all (valid or not).
    """
    fast = _canonical_column(analyte, column, unit_source)
    if fast is not None:
        return fast
    code = analyte.code
    numeric = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, copy=True)
    numeric[_booleans(column, numeric)] = np.nan  # True is not 1.0: refused, as in a record
    given = column.notna().to_numpy()
    finite = np.isfinite(numeric)
    rows = np.flatnonzero(given & ~finite)
    if len(rows):
        raw_objects = column.to_numpy(dtype=object)
        messages = [message_not_a_number(analyte, raw_objects[i]) for i in rows]
        out.add("not_a_number", code, rows, messages)
    present = given & finite
    result = np.full(len(column), np.nan)

    groups = (
        [(unit_source, present)]
        if isinstance(unit_source, str)
        else _unit_groups(unit_source, present)
    )
    for unit, mask in groups:
        if not mask.any():
            continue
        rows = np.flatnonzero(mask)
        if unit is None:
            match = canonical_match(analyte)
            out.add("unit_assumed", code, rows, message_assumed(analyte))
            declared = analyte.unit
        else:
            declared = str(unit)
            found = unit_table(analyte).get(unit_key(declared))
            if found is None:
                out.add("unknown_unit", code, rows, message_unknown_unit(analyte, declared))
                continue
            match = found
        canonical = to_canonical_array(numeric[rows], match.conversion)
        inside = _inside(canonical, analyte)
        bad = rows[~inside]
        out.add(
            "out_of_limits",
            code,
            bad,
            [
                message_out_of_limits(analyte, numeric[i], declared, c)
                for i, c in zip(bad, canonical[~inside], strict=True)
            ],
        )
        good = rows[inside]
        result[good] = canonical[inside]
        if not match.is_canonical:
            out.add("unit_converted", code, good, message_converted(analyte, match))
        if match.unit in analyte.ambiguous_units:
            out.add("ambiguous_unit", code, good, message_ambiguous(analyte, match))
    return result, given


def _booleans(column: pd.Series, numeric: FloatArray) -> npt.NDArray[np.bool_]:
    """Which cells hold a boolean (a bool column, or bools among objects). `numeric` is the
    column as numbers: among objects only a cell read as 0 or 1 can be a boolean."""
    if column.dtype.kind == "b" or isinstance(column.dtype, pd.BooleanDtype):
        return column.notna().to_numpy()
    found = np.zeros(len(column), dtype=bool)
    if column.dtype == object:
        candidates = np.flatnonzero((numeric == 0) | (numeric == 1))
        cells = column.to_numpy()[candidates]
        found[candidates] = [isinstance(v, (bool, np.bool_)) for v in cells]
    return found


def _canonical_column(
    analyte: Analyte, column: pd.Series, unit_source: pd.Series | str
) -> tuple[FloatArray, npt.NDArray[np.bool_]] | None:
    """The fast path of `_check_column`, for the common case of a column with nothing to report:
    numbers (a numpy dtype, not bool) declared as a whole in the canonical unit (not an
    ambiguous one), every given value finite and within the hard limits. Then no cell raises an
    issue and the canonical values are the values themselves (a factor of 1 changes no bit),
    so a few whole-column comparisons suffice. None when any of that does not hold: the general
    path then converts, checks and words the issues."""
    if not isinstance(unit_source, str) or not isinstance(column.dtype, np.dtype):
        return None
    if column.dtype.kind not in "fiu":
        return None
    match = unit_table(analyte).get(unit_key(unit_source))
    if match is None or not match.is_canonical or match.unit in analyte.ambiguous_units:
        return None
    numeric = column.to_numpy(np.float64)
    # fmin/fmax skip NaN (absent cells); they are NaN only when every cell is absent.
    lowest, highest = (
        np.fmin.reduce(numeric, initial=np.inf),
        np.fmax.reduce(numeric, initial=-np.inf),
    )
    low, high = analyte.limits.low, analyte.limits.high
    if lowest != np.inf or highest != -np.inf:  # some value is given
        if not (np.isfinite(lowest) and np.isfinite(highest)):
            return None
        if (low is not None and lowest < low) or (high is not None and highest > high):
            return None
    given = ~np.isnan(numeric)
    return np.where(given, numeric, np.nan), given


def _unit_groups(
    units: pd.Series, present: npt.NDArray[np.bool_]
) -> list[tuple[object, npt.NDArray[np.bool_]]]:
    """The present cells of each declared unit: first those with a blank or missing unit (None:
    the canonical unit is assumed), then one group per distinct unit. A categorical of text is
    grouped by its codes, without looking at every row's string."""
    if isinstance(units.dtype, pd.CategoricalDtype) and _is_text(units.cat.categories):
        names = list(units.cat.categories)
        codes = units.cat.codes.to_numpy()
        blank_name = np.array([isinstance(u, str) and not u.strip() for u in names] + [True])
        blank = blank_name[codes]  # code -1 (missing) is blank too
        groups: list[tuple[object, npt.NDArray[np.bool_]]] = [(None, present & blank)]
        for i in np.unique(codes[present & ~blank]):
            groups.append((names[i], present & (codes == i)))
        return groups
    unit_values = units.to_numpy(dtype=object)
    blank = pd.isna(units).to_numpy() | np.array(
        [isinstance(u, str) and not u.strip() for u in unit_values], dtype=bool
    )
    groups = [(None, present & blank)]
    for unit in pd.unique(unit_values[present & ~blank]):
        groups.append((unit, present & ~blank & (unit_values == unit)))
    return groups


def _inside(values: FloatArray, analyte: Analyte) -> npt.NDArray[np.bool_]:
    low, high = analyte.limits.low, analyte.limits.high
    ok = np.ones(len(values), dtype=bool)
    if low is not None:
        ok &= values >= low
    if high is not None:
        ok &= values <= high
    return ok


def _eligibility_issues_frame(
    provided: Mapping[str, npt.NDArray[np.bool_]],
    eligibility: Eligibility | None,
    n: int,
    out: _Collector,
) -> None:
    if eligibility is None:
        return
    absent = {code: ~mask for code, mask in provided.items()}
    everywhere = np.ones(n, dtype=bool)
    for panel in eligibility.required_panels:
        core = PANEL_CORE[panel]
        # Each row's missing core analytes as bits: one message per pattern, not per row.
        pattern = np.zeros(n, dtype=np.int64)
        for bit, code in enumerate(core):
            pattern |= absent.get(code, everywhere).astype(np.int64) << bit
        rows = np.flatnonzero(pattern)
        found, which = np.unique(pattern[rows], return_inverse=True)
        texts = [message_panel(panel, [c for b, c in enumerate(core) if p >> b & 1]) for p in found]
        out.add("missing_required_panel", panel, rows, np.array(texts, dtype=object)[which])
    for code in eligibility.required_analytes:
        rows = np.flatnonzero(absent.get(code, everywhere))
        out.add("missing_required_analyte", code, rows, f"{code} is required")
