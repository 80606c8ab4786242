"""Derived features: pure functions of canonical analyte values (no I/O, no fitted state).

Each derived feature is computed from catalogue analytes in their canonical units; a missing input
gives a missing (NaN) feature, never a guess. `build_feature_frame` assembles exactly the columns a
model expects, in its order, from a frame of canonical values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

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


def compute_derived(values: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The named derived features from a frame of canonical values (NaN where inputs are)."""
    out = {}
    for name in names:
        feature = DERIVED[name]
        inputs = {
            c: values[c] if c in values else pd.Series(np.nan, index=values.index)
            for c in feature.inputs
        }
        out[name] = np.asarray(feature.compute(inputs), dtype=np.float64)
    return pd.DataFrame(out, index=values.index)


def encode_sex(sex: pd.Series) -> np.ndarray:
    """female -> 0, male -> 1, anything else -> NaN."""
    return sex.map(SEX_CODES).to_numpy(dtype=np.float64)


def build_feature_frame(
    values: pd.DataFrame,
    analytes: Sequence[str],
    derived: Sequence[str] = (),
    demographics: Sequence[str] = DEMOGRAPHICS,
) -> pd.DataFrame:
    """Model input columns, all float64, in the order analytes + derived + demographics."""
    columns: dict[str, np.ndarray] = {}
    for code in analytes:
        columns[code] = (
            values[code].to_numpy(np.float64) if code in values else np.full(len(values), np.nan)
        )
    derived_frame = compute_derived(values, derived)
    for name in derived:
        columns[name] = derived_frame[name].to_numpy(np.float64)
    for name in demographics:
        if name == "sex":
            columns["sex"] = encode_sex(values["sex"])
        else:
            columns[name] = pd.to_numeric(values[name], errors="coerce").to_numpy(np.float64)
    return pd.DataFrame(columns, index=values.index)
