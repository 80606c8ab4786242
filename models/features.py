"""Derived features: pure functions of canonical analyte values (no I/O, no fitted state).

Each derived feature is computed from catalogue analytes in their canonical units; a missing input
gives a missing (NaN) feature, never a guess. `feature_columns` assembles exactly the columns a
model expects, in its order, from a frame of canonical values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Payne-type adjustment: adjusted Ca = total Ca + k (40 - albumin), k in mmol/L per g/L.
CALCIUM_ALBUMIN_COEFFICIENT = 0.02
CALCIUM_ALBUMIN_REFERENCE_G_PER_L = 40.0


@dataclass(frozen=True)
class DerivedFeature:
    name: str
    title: str
    unit: str
    panel: str
    inputs: tuple[str, ...]
    compute: Callable[[Mapping[str, Any]], Any]  # columns (Series or float) -> same shape


def _ratio(numerator: Any, denominator: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.divide(numerator, denominator)
    return np.where(np.asarray(denominator) > 0, result, np.nan)


def globulin_from_protein(total_protein: Any, albumin: Any) -> Any:
    """Globulin (g/L) = total protein - albumin."""
    return total_protein - albumin


def adjusted_calcium(calcium: Any, albumin: Any) -> Any:
    """Albumin-adjusted calcium (mmol/L) from total calcium (mmol/L) and albumin (g/L)."""
    return calcium + CALCIUM_ALBUMIN_COEFFICIENT * (CALCIUM_ALBUMIN_REFERENCE_G_PER_L - albumin)


DERIVED: dict[str, DerivedFeature] = {
    f.name: f
    for f in (
        DerivedFeature(
            "nlr", "Neutrophil-to-lymphocyte ratio", "1", "fbc", ("neutrophils", "lymphocytes"),
            lambda v: _ratio(v["neutrophils"], v["lymphocytes"]),
        ),
        DerivedFeature(
            "plr", "Platelet-to-lymphocyte ratio", "1", "fbc", ("platelets", "lymphocytes"),
            lambda v: _ratio(v["platelets"], v["lymphocytes"]),
        ),
        DerivedFeature(
            "globulin_calc", "Globulin (total protein - albumin)", "g/L", "protein",
            ("total_protein", "albumin"),
            lambda v: globulin_from_protein(v["total_protein"], v["albumin"]),
        ),
        DerivedFeature(
            "ag_ratio", "Albumin-to-globulin ratio", "1", "protein", ("albumin", "total_protein"),
            lambda v: _ratio(v["albumin"], globulin_from_protein(v["total_protein"], v["albumin"])),
        ),
        DerivedFeature(
            "calcium_adjusted_calc", "Adjusted calcium (from total calcium and albumin)",
            "mmol/L", "bone", ("calcium", "albumin"),
            lambda v: adjusted_calcium(v["calcium"], v["albumin"]),
        ),
        DerivedFeature(
            "urea_creatinine_ratio", "Urea-to-creatinine ratio", "1", "renal",
            ("urea", "creatinine"),
            lambda v: _ratio(v["urea"] * 1000.0, v["creatinine"]),
        ),
    )
}  # fmt: skip

DEMOGRAPHICS = ("age", "sex")
SEX_CODES = {"female": 0.0, "male": 1.0}


def take_rows(column: FloatArray, rows: IntArray | None) -> FloatArray:
    """`column` at positions `rows` (the whole column when None)."""
    return column if rows is None else column[rows]


def _analyte(values: pd.DataFrame, code: str, rows: IntArray | None) -> FloatArray:
    """One canonical column as float64 (NaN when the frame lacks it), at `rows`."""
    if code not in values:
        return np.full(len(values) if rows is None else len(rows), np.nan)
    return take_rows(values[code].to_numpy(np.float64), rows)


def compute_derived(values: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The named derived features from a frame of canonical values (NaN where inputs are)."""
    return pd.DataFrame(_derived_columns(values, names, None), index=values.index)


def _derived_columns(
    values: pd.DataFrame, names: Sequence[str], rows: IntArray | None
) -> dict[str, FloatArray]:
    out = {}
    for name in names:
        feature = DERIVED[name]
        inputs = {c: _analyte(values, c, rows) for c in feature.inputs}
        out[name] = np.asarray(feature.compute(inputs), dtype=np.float64)
    return out


def map_codes(column: pd.Series, codes: Mapping[Any, float]) -> FloatArray:
    """`column.map(codes)` as float64 (NaN for anything not in `codes`), looking up each distinct
    value once (a categorical's categories, or the distinct values found by hashing) instead of
    every row."""
    positions, uniques = pd.factorize(column)
    lookup = np.array([*(codes.get(u, np.nan) for u in uniques), np.nan], dtype=np.float64)
    mapped: FloatArray = lookup[positions]  # -1 (missing) picks the last, NaN
    return mapped


def encode_sex(sex: pd.Series) -> FloatArray:
    """female -> 0, male -> 1, anything else -> NaN."""
    return map_codes(sex, SEX_CODES)


def feature_columns(
    values: pd.DataFrame,
    analytes: Sequence[str],
    derived: Sequence[str] = (),
    demographics: Sequence[str] = DEMOGRAPHICS,
    rows: IntArray | None = None,
) -> dict[str, FloatArray]:
    """Model input columns, all float64, in the order analytes + derived + demographics, for the
    rows at positions `rows` of `values` (every row when None)."""
    columns = {code: _analyte(values, code, rows) for code in analytes}
    columns |= _derived_columns(values, derived, rows)
    for name in demographics:
        if name == "sex":
            columns["sex"] = take_rows(encode_sex(values["sex"]), rows)
        else:
            age = pd.to_numeric(values[name], errors="coerce").to_numpy(np.float64)
            columns[name] = take_rows(age, rows)
    return columns


def build_feature_frame(
    values: pd.DataFrame,
    analytes: Sequence[str],
    derived: Sequence[str] = (),
    demographics: Sequence[str] = DEMOGRAPHICS,
) -> pd.DataFrame:
    """Model input columns, all float64, in the order analytes + derived + demographics."""
    columns = feature_columns(values, analytes, derived, demographics)
    return pd.DataFrame(columns, index=values.index)


STACK_BLOCK_ROWS = 2048  # x ~40 features x 8 bytes: a block of the matrix that stays in cache


def stack_columns(
    columns: Mapping[str, FloatArray], n_rows: int, scratch: FloatArray | None = None
) -> FloatArray:
    """Columns as one C-contiguous (rows, columns) float64 matrix: the booster reads it as it
    is, and a little faster than column-major. Filled by blocks of rows, since writing whole
    columns one after the other would sweep the whole matrix (tens of MB) once per column.

    `scratch`, a flat float64 array, is filled instead of a new allocation when it is large
    enough; the matrix is then a view of it, valid until `scratch` is filled again."""
    size = len(columns) * n_rows
    fits = scratch is not None and len(scratch) >= size
    flat = scratch[:size] if scratch is not None and fits else np.empty(size, dtype=np.float64)
    matrix = flat.reshape(n_rows, len(columns))
    values = list(columns.values())
    for start in range(0, n_rows, STACK_BLOCK_ROWS):
        block = matrix[start : start + STACK_BLOCK_ROWS]
        for j, column in enumerate(values):
            block[:, j] = column[start : start + STACK_BLOCK_ROWS]
    return matrix
