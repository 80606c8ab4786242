"""Conversion of a value and its declared unit to the analyte's canonical unit.

Units are matched by a normalised key, so that common spellings of the same UCUM unit agree
(`g/dl` = `g/dL`; `x10^9/L` = `10^9/L` = `10*9/L` = `×10⁹/L`; `µmol/L` = `umol/L`; `IU/L` = `U/L`).
Only units the catalogue lists for the analyte are accepted: an unknown unit is an error that names
the accepted ones, and a declared unit is never replaced by a guess. When a value falls outside the
hard limits, `alternative_readings` says which other accepted unit would have made it plausible,
which is how "Hb 9.8 g/L" earns the hint "9.8 g/dL = 98 g/L?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.analytes import Analyte, UnitConversion

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_POWER_OF_TEN = re.compile(r"^(?:x|\*)?10(?:\^|\*\*|\*|e)(\d+)(?=/)")
_ANNOTATION = re.compile(r"\{([^}]*)\}")


class UnknownUnitError(ValueError):
    """The declared unit is not one the catalogue accepts for this analyte."""

    def __init__(self, analyte: Analyte, unit: str) -> None:
        self.analyte = analyte
        self.unit = unit
        accepted = ", ".join(analyte.units)
        super().__init__(f"unit {unit!r} is not accepted for {analyte.name}; accepted: {accepted}")


def unit_key(unit: str) -> str:
    """Normalise a unit spelling so that equivalent spellings compare equal."""
    key = _SUPERSCRIPT_RUN.sub(lambda m: "^" + m.group(0).translate(_SUPERSCRIPTS), unit.strip())
    key = key.replace("µ", "u").replace("μ", "u").replace("×", "x").replace("·", ".")
    key = "".join(key.split()).lower()
    key = _POWER_OF_TEN.sub(lambda m: f"10*{m.group(1)}", key)
    key = key.replace("[", "").replace("]", "")
    key = _ANNOTATION.sub(lambda m: "{" + m.group(1).replace("_", "") + "}", key)
    key = key.replace("{1.73m2}", "1.73m2").replace("1.73m^2", "1.73m2")
    if key in {"iu/l", "u/l"}:
        key = "u/l"
    return {"mm/hr": "mm/h", "mpas": "mpa.s", "cps": "cp"}.get(key, key)


@dataclass(frozen=True)
class UnitMatch:
    """A declared unit matched to one of the analyte's accepted units."""

    unit: str  # the catalogue's spelling
    conversion: UnitConversion

    @property
    def is_canonical(self) -> bool:
        return self.conversion.factor == 1.0 and self.conversion.offset == 0.0


_TABLES: dict[int, tuple[Analyte, dict[str, UnitMatch]]] = {}


def unit_table(analyte: Analyte) -> dict[str, UnitMatch]:
    """Normalised unit key -> accepted unit, for one analyte (built once, then cached)."""
    cached = _TABLES.get(id(analyte))
    if cached is not None and cached[0] is analyte:
        return cached[1]
    table: dict[str, UnitMatch] = {}
    for unit, conversion in analyte.units.items():
        key = unit_key(unit)
        if key in table and table[key].conversion != conversion:
            raise ValueError(f"{analyte.code}: units {table[key].unit!r} and {unit!r} collide")
        table.setdefault(key, UnitMatch(unit=unit, conversion=conversion))
    _TABLES[id(analyte)] = (analyte, table)
    return table


def canonical_match(analyte: Analyte) -> UnitMatch:
    """The analyte's own canonical unit (what an undeclared unit is taken to be)."""
    return unit_table(analyte)[unit_key(analyte.unit)]


def match_unit(analyte: Analyte, unit: str) -> UnitMatch:
    """The accepted unit a declared spelling stands for; raises `UnknownUnitError`."""
    match = unit_table(analyte).get(unit_key(unit))
    if match is None:
        raise UnknownUnitError(analyte, unit)
    return match


def is_accepted(analyte: Analyte, unit: str) -> bool:
    return unit_key(unit) in unit_table(analyte)


def to_canonical(analyte: Analyte, value: float, unit: str) -> float:
    """`value` in `unit` expressed in the analyte's canonical unit."""
    conversion = match_unit(analyte, unit).conversion
    return apply_conversion(value, conversion)


def from_canonical(analyte: Analyte, value: float, unit: str) -> float:
    """A canonical value expressed in another accepted unit (the inverse of `to_canonical`)."""
    return match_unit(analyte, unit).conversion.from_canonical(value)


def apply_conversion(value: float, conversion: UnitConversion) -> float:
    # The offset is added only when present so that scalar and vector paths round identically.
    scaled = value * conversion.factor
    return scaled + conversion.offset if conversion.offset else scaled


def to_canonical_array(
    values: npt.NDArray[np.float64], conversion: UnitConversion
) -> npt.NDArray[np.float64]:
    """The vectorised twin of `to_canonical`, bit-identical to it element by element."""
    scaled = values * conversion.factor
    return scaled + conversion.offset if conversion.offset else scaled


def alternative_readings(analyte: Analyte, value: float, declared: str) -> list[tuple[str, float]]:
    """Other accepted units under which `value` would be within the hard limits.

    Returned as (unit, canonical value) pairs, canonical unit first; used only to word a hint,
    never to change what was declared.
    """
    declared_key = unit_key(declared)
    readings = []
    for key, match in unit_table(analyte).items():
        if key == declared_key:
            continue
        canonical = apply_conversion(value, match.conversion)
        if analyte.limits.contains(canonical):
            readings.append((match.unit, canonical))
    return readings
