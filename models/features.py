"""Derived features: pure functions of canonical analyte values (no I/O, no fitted state).

Each derived feature is computed from catalogue analytes in their canonical units; a missing input
gives a missing (NaN) feature, never a guess. `feature_columns` assembles exactly the columns a
model expects, in its order, from a frame of canonical values.

A spec lists built-in features by name (`DERIVED`) or defines its own with one operation over
analytes of its catalogue or earlier derived features (`DerivedExpression`):

    ratio: [a, b]       a / b; NaN where b is not positive. Unit "1" when a and b share a unit,
                        else "a/b" (e.g. "(g/L)/(mmol/L)")
    difference: [a, b]  a - b; a and b must share a unit, which the result keeps
    product: [a, b]     a * b; unit "a.b" ("1" factors dropped)
    log: a              natural log; NaN where a <= 0. a must not be able to go negative (no
                        difference, no log, no analyte with a negative lower limit); unit "log(a)"
                        ("1" for a dimensionless a)

`resolve_derived` checks a spec's list against its catalogue (errors name `features.derived[i]`)
and returns one `DerivedFeature` per entry, which training, the frame scorer, the record path and
the explanations all compute and describe the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Discriminator, Tag

from models.analytes import Catalogue

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
    nonnegative: bool = True  # never below 0 by construction (a log of it is defined)


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
            nonnegative=False,
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
CONTEXT = ("pathway",)
OPERATIONS = ("ratio", "difference", "product", "log")
DIMENSIONLESS = "1"
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


class DerivedExpression(BaseModel):
    """A spec's own derived feature: exactly one operation (see the module docstring) over
    analytes of the spec's catalogue or derived features listed before it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str | None = None
    ratio: tuple[str, str] | None = None
    difference: tuple[str, str] | None = None
    product: tuple[str, str] | None = None
    log: str | None = None

    @property
    def operations(self) -> list[str]:
        """The operations given (a valid expression has exactly one)."""
        return [op for op in OPERATIONS if getattr(self, op) is not None]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The operands of the first operation given."""
        operand = getattr(self, self.operations[0]) if self.operations else ()
        return (operand,) if isinstance(operand, str) else tuple(operand)


# A `features.derived` entry: a built-in by name, or a spec's own expression.
DerivedEntry = Annotated[
    Annotated[str, Tag("builtin")] | Annotated[DerivedExpression, Tag("expression")],
    Discriminator(lambda entry: "builtin" if isinstance(entry, str) else "expression"),
]


def entry_name(entry: str | DerivedExpression) -> str:
    """The feature name of a `features.derived` entry."""
    return entry if isinstance(entry, str) else entry.name


def _log(value: Any) -> Any:
    positive = np.where(np.asarray(value) > 0, value, np.nan)
    return np.log(positive)


def apply_operation(operation: str, operands: Sequence[Any]) -> Any:
    """One expression operation on its operands (columns or floats) -> same shape."""
    if operation == "ratio":
        return _ratio(operands[0], operands[1])
    if operation == "difference":
        return operands[0] - operands[1]
    if operation == "product":
        return operands[0] * operands[1]
    return _log(operands[0])


def _compute_expression(operation: str, inputs: tuple[str, ...], values: Mapping[str, Any]) -> Any:
    return apply_operation(operation, [values[name] for name in inputs])


def _parenthesised(unit: str) -> str:
    return f"({unit})" if re.search(r"[/.]", unit) else unit


def expression_unit(operation: str, units: Sequence[str]) -> str | None:
    """The result's canonical unit, or None when the operation refuses these units
    (a difference of two units)."""
    if operation == "difference":
        return units[0] if units[0] == units[1] else None
    if operation == "ratio":
        if units[0] == units[1]:
            return DIMENSIONLESS
        return f"{_parenthesised(units[0])}/{_parenthesised(units[1])}"
    if operation == "product":
        factors = [u for u in units if u != DIMENSIONLESS]
        if len(factors) < 2:
            return factors[0] if factors else DIMENSIONLESS
        return ".".join(_parenthesised(u) for u in factors)
    return DIMENSIONLESS if units[0] == DIMENSIONLESS else f"log({units[0]})"


def resolve_derived(
    entries: Sequence[str | DerivedExpression], catalogue: Catalogue
) -> tuple[DerivedFeature, ...]:
    """One DerivedFeature per `features.derived` entry, in order: built-ins from `DERIVED`,
    expressions checked against `catalogue` (names, inputs, units). Raises ValueError naming
    `features.derived[i] (name)`."""
    resolved: dict[str, DerivedFeature] = {}
    for i, entry in enumerate(entries):
        where = f"features.derived[{i}] ({entry_name(entry)})"
        if isinstance(entry, str):
            feature = DERIVED.get(entry)
            if feature is None:
                raise ValueError(f"{where}: unknown built-in; known: {sorted(DERIVED)}")
            missing = [c for c in feature.inputs if c not in catalogue]
            if missing:
                raise ValueError(f"{where}: needs analytes {missing}, not in the catalogue")
        else:
            feature = _resolve_expression(entry, catalogue, resolved, where)
        resolved[feature.name] = feature
    return tuple(resolved.values())


@dataclass(frozen=True)
class _Operand:
    unit: str
    title: str
    panel: str
    nonnegative: bool


def _operand(
    name: str, catalogue: Catalogue, earlier: Mapping[str, DerivedFeature], where: str
) -> _Operand:
    """What an expression needs to know of one input: an analyte or an earlier feature."""
    if name in catalogue:
        analyte = catalogue[name]
        low = analyte.limits.low
        return _Operand(analyte.unit, analyte.name, analyte.panel, low is not None and low >= 0)
    if name in earlier:
        feature = earlier[name]
        return _Operand(feature.unit, feature.title, feature.panel, feature.nonnegative)
    raise ValueError(
        f"{where}: {name!r} is neither an analyte of the catalogue (declare it in "
        "extra_analytes) nor a derived feature listed before this one"
    )


def _resolve_expression(
    entry: DerivedExpression,
    catalogue: Catalogue,
    earlier: Mapping[str, DerivedFeature],
    where: str,
) -> DerivedFeature:
    _check_name(entry.name, catalogue, earlier, where)
    if len(entry.operations) != 1:
        given = ", ".join(entry.operations) or "none"
        raise ValueError(f"{where}: give exactly one of {', '.join(OPERATIONS)} (given: {given})")
    operation, names = entry.operations[0], entry.inputs
    operands = [_operand(name, catalogue, earlier, where) for name in names]
    unit = expression_unit(operation, [o.unit for o in operands])
    if unit is None:
        raise ValueError(
            f"{where}: difference needs inputs in the same unit; "
            f"{names[0]} is {operands[0].unit}, {names[1]} is {operands[1].unit}"
        )
    if operation == "log" and not operands[0].nonnegative:
        raise ValueError(
            f"{where}: log needs a positive quantity; {names[0]} can be negative "
            "(a difference, a log, or an analyte whose plausibility limits go below 0)"
        )
    symbol = {"ratio": " / ", "difference": " - ", "product": " x "}
    titles = [o.title for o in operands]
    default_title = f"log {titles[0]}" if operation == "log" else symbol[operation].join(titles)
    return DerivedFeature(
        entry.name,
        entry.title or default_title,
        unit,
        operands[0].panel,
        names,
        partial(_compute_expression, operation, names),
        nonnegative=operation in {"ratio", "product"} and all(o.nonnegative for o in operands),
    )


def _check_name(
    name: str, catalogue: Catalogue, earlier: Mapping[str, DerivedFeature], where: str
) -> None:
    if not _IDENTIFIER.match(name):
        raise ValueError(
            f"{where}: a name must be lower case letters, digits and _, starting with a letter"
        )
    if name in catalogue:
        raise ValueError(f"{where}: the name is an analyte's code; choose another")
    if name in DERIVED:
        raise ValueError(f"{where}: the name is a built-in derived feature; choose another")
    if name in {*DEMOGRAPHICS, *CONTEXT}:
        raise ValueError(f"{where}: the name is a demographic or context feature")
    if name in earlier:
        raise ValueError(f"{where}: the name is listed twice")


def take_rows(column: FloatArray, rows: IntArray | None) -> FloatArray:
    """`column` at positions `rows` (the whole column when None)."""
    return column if rows is None else column[rows]


def _analyte(values: pd.DataFrame, code: str, rows: IntArray | None) -> FloatArray:
    """One canonical column as float64 (NaN when the frame lacks it), at `rows`."""
    if code not in values:
        return np.full(len(values) if rows is None else len(rows), np.nan)
    return take_rows(values[code].to_numpy(np.float64), rows)


def compute_derived(values: pd.DataFrame, features: Sequence[str | DerivedFeature]) -> pd.DataFrame:
    """Derived features (built-ins by name, or resolved) from a frame of canonical values (NaN
    where inputs are)."""
    columns = derived_columns(features, lambda code: _analyte(values, code, None))
    return pd.DataFrame(columns, index=values.index)


def derived_columns(
    features: Sequence[str | DerivedFeature], column: Callable[[str], FloatArray]
) -> dict[str, FloatArray]:
    """Derived features in order, as float64 columns; an input is a derived feature computed
    before it or else `column(code)`. The frame and the record paths both compute here."""
    out: dict[str, FloatArray] = {}
    for feature in features:
        if isinstance(feature, str):
            feature = DERIVED[feature]
        inputs = {c: out[c] if c in out else column(c) for c in feature.inputs}
        out[feature.name] = np.asarray(feature.compute(inputs), dtype=np.float64)
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
    derived: Sequence[str | DerivedFeature] = (),
    demographics: Sequence[str] = DEMOGRAPHICS,
    rows: IntArray | None = None,
) -> dict[str, FloatArray]:
    """Model input columns, all float64, in the order analytes + derived + demographics, for the
    rows at positions `rows` of `values` (every row when None)."""
    columns = {code: _analyte(values, code, rows) for code in analytes}
    columns |= derived_columns(derived, lambda code: _analyte(values, code, rows))
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
    derived: Sequence[str | DerivedFeature] = (),
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
