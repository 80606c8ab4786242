"""Exact derivations that fill a required input the request lacks, from inputs it has.

An input the model never (or almost never) saw missing in training is required at scoring
(`TriagePredictor.required_inputs`): a tree model's answer for a value it never saw absent is
arbitrary. Some of those inputs are, by definition, arithmetic on others that the lab reports
too, so a request without them can still be scored on the value the lab would have reported:

- haematocrit (L/L) = haemoglobin (g/L) / MCHC (g/L), or red cell count (10^12/L) x MCV (fL) /
  1000, or haemoglobin x MCV / MCH / 1000 (MCHC is defined as Hb / Hct, MCV as Hct / RBC and MCH
  as Hb / RBC);
- MCHC (g/L) = haemoglobin (g/L) / haematocrit (L/L), or MCH (pg) / MCV (fL) x 1000 (MCH is Hb /
  RBC, so MCH / MCV = Hb / Hct; pg / fL = 1000 g/L);
- eGFR (mL/min/1.73 m2) from creatinine, age and sex by CKD-EPI 2021 (no race term), the equation
  the simulator reports and UK labs have used since 2021;
- globulin (g/L) = total protein - albumin, and total protein = albumin + globulin (labs calculate
  globulin this way).

Each is tried only from measured values (never a derived one: no chains, so errors cannot
compound), in the order listed, and the result is rounded to the catalogue's reporting precision, as
a lab would report it. A result outside the analyte's hard limits is not used. Nothing approximate
is derived: RBC, RDW, MPV and the differential counts have no exact identity here and stay required.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import Catalogue

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

CREATININE_UMOL_PER_MG_DL = 88.4  # umol/L per mg/dL, the factor CKD-EPI's authors use
DEMOGRAPHIC_INPUTS = ("age", "sex")


def ckd_epi_2021(creatinine: FloatArray, age: FloatArray, male: BoolArray) -> FloatArray:
    """eGFR (mL/min/1.73 m2) by CKD-EPI 2021 (Inker et al., NEJM 2021; no race term) from
    creatinine in umol/L, age in years and sex: 142 x min(Scr/k, 1)^a x max(Scr/k, 1)^-1.200 x
    0.9938^age (x 1.012 if female), Scr in mg/dL, k 0.7 (female) / 0.9 (male), a -0.241 / -0.302."""
    scr = np.asarray(creatinine, dtype=np.float64) / CREATININE_UMOL_PER_MG_DL
    kappa = np.where(male, 0.9, 0.7)
    alpha = np.where(male, -0.302, -0.241)
    ratio = scr / kappa
    egfr = 142.0 * np.minimum(ratio, 1.0) ** alpha * np.maximum(ratio, 1.0) ** -1.2
    return np.asarray(egfr * 0.9938 ** np.asarray(age) * np.where(male, 1.0, 1.012))


@dataclass(frozen=True)
class Derivation:
    """How `target` follows from `inputs` (analyte codes, or `age` / `sex`): `compute` takes
    their canonical values as arrays in that order (sex as a boolean array, True for male)."""

    target: str
    inputs: tuple[str, ...]
    formula: str
    compute: Callable[..., FloatArray]

    def to_dict(self) -> dict[str, Any]:
        return {"from": list(self.inputs), "formula": self.formula}


def _ratio(scale: float) -> Callable[[FloatArray, FloatArray], FloatArray]:
    return lambda a, b: np.asarray(a / b * scale)


DERIVATIONS: tuple[Derivation, ...] = (
    Derivation(
        "haematocrit",
        ("haemoglobin", "mchc"),
        "haematocrit (L/L) = haemoglobin (g/L) / MCHC (g/L)",
        _ratio(1.0),
    ),
    Derivation(
        "haematocrit",
        ("rbc", "mcv"),
        "haematocrit (L/L) = red cell count (10^12/L) x MCV (fL) / 1000",
        lambda rbc, mcv: np.asarray(rbc * mcv / 1000.0),
    ),
    Derivation(
        "haematocrit",
        ("haemoglobin", "mcv", "mch"),
        "haematocrit (L/L) = haemoglobin (g/L) x MCV (fL) / MCH (pg) / 1000",
        lambda hb, mcv, mch: np.asarray(hb * mcv / mch / 1000.0),
    ),
    Derivation(
        "mchc",
        ("haemoglobin", "haematocrit"),
        "MCHC (g/L) = haemoglobin (g/L) / haematocrit (L/L)",
        _ratio(1.0),
    ),
    Derivation("mchc", ("mch", "mcv"), "MCHC (g/L) = MCH (pg) / MCV (fL) x 1000", _ratio(1000.0)),
    Derivation(
        "egfr",
        ("creatinine", "age", "sex"),
        "eGFR = the CKD-EPI 2021 equation, no race term",
        ckd_epi_2021,
    ),
    Derivation(
        "globulin",
        ("total_protein", "albumin"),
        "globulin (g/L) = total protein (g/L) - albumin (g/L)",
        lambda tp, alb: np.asarray(tp - alb),
    ),
    Derivation(
        "total_protein",
        ("albumin", "globulin"),
        "total protein (g/L) = albumin (g/L) + globulin (g/L)",
        lambda alb, glob: np.asarray(alb + glob),
    ),
)


def derivations_for(code: str) -> tuple[Derivation, ...]:
    """The derivations of one analyte, in the order they are tried (none: it cannot be derived)."""
    return tuple(d for d in DERIVATIONS if d.target == code)


@dataclass(frozen=True)
class Derived:
    """One derived value of one record: what it is, and what it came from."""

    code: str
    value: float
    derivation: Derivation


def _names(derivation: Derivation, catalogue: Catalogue) -> list[str]:
    return [catalogue[c].name if c in catalogue else c for c in derivation.inputs]


def derived_message(derived: Derived, catalogue: Catalogue) -> str:
    """The `analyte_derived` warning's text: which input, its value, from what, by which formula."""
    analyte = catalogue[derived.code]
    names = _names(derived.derivation, catalogue)
    sources = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    shown = f"{round(derived.value, analyte.decimals):g} {analyte.display_unit}"
    return (
        f"{analyte.name} was not given; {shown} was derived from {sources} "
        f"({derived.derivation.formula})"
    )


def _inputs_record(
    derivation: Derivation, values: Mapping[str, float], age: float | None, sex: str | None
) -> list[FloatArray] | None:
    found: list[FloatArray] = []
    for code in derivation.inputs:
        if code == "age":
            value = math.nan if age is None else float(age)
        elif code == "sex":
            if sex not in ("male", "female"):
                return None
            found.append(np.array([sex == "male"]))
            continue
        else:
            value = values.get(code, math.nan)
        if math.isnan(value):
            return None
        found.append(np.array([value], dtype=np.float64))
    return found


def as_reported(code: str, values: FloatArray, catalogue: Catalogue) -> FloatArray:
    """Derived values rounded as the lab reports `code`, NaN where beyond its hard limits."""
    analyte = catalogue[code]
    rounded = np.round(np.asarray(values, dtype=np.float64), analyte.decimals)
    low, high = analyte.limits.low, analyte.limits.high
    with np.errstate(invalid="ignore"):
        outside = ((rounded < low) if low is not None else False) | (
            (rounded > high) if high is not None else False
        )
    return np.where(outside, np.nan, rounded)


def derive_record(
    code: str,
    values: Mapping[str, float],
    age: float | None,
    sex: str | None,
    catalogue: Catalogue,
) -> Derived | None:
    """`code` derived from one record's measured values (canonical units), or None when no
    derivation has all its inputs or the result is beyond the hard limits."""
    for derivation in derivations_for(code):
        inputs = _inputs_record(derivation, values, age, sex)
        if inputs is None:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(as_reported(code, derivation.compute(*inputs), catalogue)[0])
        if not math.isnan(value):
            return Derived(code, value, derivation)
    return None


def derive_column(
    code: str, values: Mapping[str, Any] | pd.DataFrame, catalogue: Catalogue
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """`code` for every row of a frame of canonical values (a column per analyte, `age`, and
    `sex` as male/female): the column with each missing value derived where a derivation has
    all its measured inputs, and which derivation filled each row (its position in
    `derivations_for(code)`, -1 where nothing was derived). The vectorised twin of
    `derive_record`: the first derivation that gives a value wins, as there."""
    n = len(values["age"])
    measured = values.get(code)
    column = np.full(n, np.nan) if measured is None else np.asarray(measured, dtype=np.float64)
    filled = column.copy()
    which = np.full(n, -1, dtype=np.int64)
    for position, derivation in enumerate(derivations_for(code)):
        todo = np.isnan(filled)
        if not todo.any():
            break
        arrays: list[Any] = []
        for name in derivation.inputs:
            if name == "sex":
                sex = np.asarray(values["sex"], dtype=object)
                arrays.append(sex == "male")
                todo &= (sex == "male") | (sex == "female")
            else:
                source = values.get(name)
                array = np.full(n, np.nan) if source is None else np.asarray(source, np.float64)
                arrays.append(array)
                todo &= ~np.isnan(array)
        rows = np.flatnonzero(todo)
        if not len(rows):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            result = as_reported(code, derivation.compute(*(a[rows] for a in arrays)), catalogue)
        good = ~np.isnan(result)
        filled[rows[good]] = result[good]
        which[rows[good]] = position
    return filled, which
