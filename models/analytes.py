"""The analyte catalogue: the single source of truth for every routine blood analyte.

Each entry carries its code (snake_case, used as the column name everywhere), display name,
LOINC codes, canonical UCUM unit, accepted alternative units with exact conversion factors,
adult reference intervals (sex- and age-specific where they differ), hard plausibility limits,
panel, the direction usually associated with cancer (used only for wording), and whether the
analyte is right-skewed in routine data (`skewed`: the spline model takes its logarithm).

Skewed: the markers whose raised values run to many times the upper reference limit (CRP, ESR,
ALP, ALT, AST, GGT, bilirubin, LDH, ferritin, PSA, CA125, CEA), creatinine and urea (renal
failure), and the white cell, neutrophil, lymphocyte and monocyte counts (infection, leukaemia).
Not the eosinophil and basophil counts: skewed too, but mostly a few reporting steps above zero,
where a logarithm would stretch the rounding into a spread.

Figures come from `shared/reference/analytes.md`. Limits tagged [J] there have no published source;
they are generous on purpose (a cancer cohort has extreme values) and a spec may override an entry.
Conversion factors for mass units come from molar masses: glucose 180.16, creatinine 113.12,
urea 60.06, urea nitrogen 28.014, bilirubin 584.66, calcium 40.078, phosphorus 30.974 g/mol.

A unit means what the code beside it measures: "mg/dL" under urea (22664-7, 3091-6) is mg of urea
(x10/60.06), under LOINC 3094-0 (urea NITROGEN, BUN) it is mg of nitrogen (x10/28.014; one urea
molecule carries two N atoms, 28.014 g/mol), so BUN 14 mg/dL is 5.0 mmol/L of urea, not 2.3. Such a
code lists its own units in `loinc_units`, each pointing at the analyte unit that carries the right
factor; `Catalogue.as_measured(code)` gives the analyte with the units that code accepts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Sex = Literal["male", "female"]
Direction = Literal["high", "low", "both", "none"]
Panel = Literal[
    "fbc",
    "renal",
    "liver",
    "bone",
    "protein",
    "inflammatory",
    "iron",
    "metabolic",
    "tumour_markers",
    "other",
]

CATALOGUE_VERSION = "2026.12.1"

# Molar masses (g/mol) behind the mass-unit factors.
GLUCOSE_G_PER_MOL = 180.16
CREATININE_G_PER_MOL = 113.12
UREA_G_PER_MOL = 60.06
UREA_NITROGEN_G_PER_MOL = 28.014
BILIRUBIN_G_PER_MOL = 584.66
CALCIUM_G_PER_MOL = 40.078
PHOSPHORUS_G_PER_MOL = 30.974

# Age and sex are validated like analytes (hard limits), but are not lab results.
AGE_LIMITS: tuple[float, float] = (0.0, 120.0)
SEXES: tuple[Sex, ...] = ("male", "female")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UnitConversion(_Frozen):
    """`canonical = value * factor + offset` (the offset is non-zero only for HbA1c %)."""

    factor: float = Field(gt=0)
    offset: float = 0.0

    def to_canonical(self, value: float) -> float:
        return value * self.factor + self.offset

    def from_canonical(self, value: float) -> float:
        return (value - self.offset) / self.factor


class Interval(_Frozen):
    """A closed interval; either end may be open (None)."""

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{_fmt(self.low)}-{_fmt(self.high)}"
        if self.high is not None:
            return f"<= {_fmt(self.high)}"
        if self.low is not None:
            return f">= {_fmt(self.low)}"
        return "any"


class AgeBandUpper(_Frozen):
    """An age-dependent upper reference limit, from `from_age` upwards (e.g. ESR, PSA)."""

    from_age: float = Field(ge=0)
    male: float | None = None
    female: float | None = None


class Analyte(_Frozen):
    """One routine blood analyte. Values are always held in `unit` (the canonical UCUM unit)."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    loinc: str = Field(pattern=r"^\d{1,7}-\d$")
    alt_loinc: tuple[str, ...] = ()
    loinc_units: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="for a LOINC whose units differ from the analyte's: {accepted unit: the "
        "analyte unit (and so factor) it stands for}; the canonical unit is always accepted",
    )
    unit: str
    display_unit: str
    alt_units: dict[str, UnitConversion] = Field(default_factory=dict)
    ambiguous_units: tuple[str, ...] = Field(
        default=(), description="accepted units often mislabelled (converted, but flagged)"
    )
    reference: Interval
    reference_male: Interval | None = None
    reference_female: Interval | None = None
    reference_age_upper: tuple[AgeBandUpper, ...] = ()
    limits: Interval
    panel: Panel
    cancer_direction: Direction
    decimals: int = Field(ge=0, le=4, description="reporting precision in the canonical unit")
    skewed: bool = Field(
        default=False,
        description="right-skewed in routine data (a long tail of many-fold raised values): "
        "the spline model takes its logarithm",
    )

    @field_validator("alt_units", mode="before")
    @classmethod
    def _factor_shorthand(cls, value: Any) -> Any:
        """Accept `{"g/dL": 10}` as shorthand for `{"g/dL": {"factor": 10}}` (spec YAML)."""
        if isinstance(value, Mapping):
            return {
                unit: {"factor": conv} if isinstance(conv, int | float) else conv
                for unit, conv in value.items()
            }
        return value

    @field_validator("alt_loinc")
    @classmethod
    def _loinc_form(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not code.replace("-", "").isdigit():
                raise ValueError(f"alternative LOINC {code!r} is not of the form NNNN-N")
        return value

    @model_validator(mode="after")
    def _ambiguous_are_accepted(self) -> Analyte:
        unknown = set(self.ambiguous_units) - set(self.units)
        if unknown:
            raise ValueError(
                f"{self.code}: ambiguous units {sorted(unknown)} are not accepted units"
            )
        return self

    @model_validator(mode="after")
    def _loinc_units_known(self) -> Analyte:
        for loinc, units in self.loinc_units.items():
            if loinc not in (self.loinc, *self.alt_loinc):
                raise ValueError(f"{self.code}: loinc_units names {loinc}, not one of its codes")
            unknown = set(units.values()) - set(self.units)
            if unknown:
                raise ValueError(f"{self.code}: {loinc} maps to unknown units {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _limits_hold_reference(self) -> Analyte:
        for interval in (self.reference, self.reference_male, self.reference_female):
            if interval is None:
                continue
            for end in (interval.low, interval.high):
                if end is not None and not self.limits.contains(end):
                    raise ValueError(
                        f"{self.code}: reference limit {end} lies outside hard limits "
                        f"{self.limits.describe()}"
                    )
        return self

    @property
    def units(self) -> dict[str, UnitConversion]:
        """Every accepted unit (canonical included) with its conversion to canonical."""
        return {self.unit: UnitConversion(factor=1.0), **self.alt_units}

    def measured_by(self, loinc: str) -> Analyte:
        """This analyte as `loinc` reports it: same code, limits and ranges, but only the units
        that code accepts, each with the factor of the analyte unit it stands for."""
        own = self.loinc_units.get(loinc)
        if own is None:
            return self
        units = self.units
        alt = {spelling: units[target] for spelling, target in own.items() if spelling != self.unit}
        ambiguous = tuple(u for u in self.ambiguous_units if u in alt)
        return self.model_copy(
            update={"alt_units": alt, "ambiguous_units": ambiguous, "loinc_units": {}}
        )

    def unit_meaning(self, loinc: str, unit: str) -> str:
        """The analyte unit that `unit` (spelt as `measured_by(loinc)` spells it) stands for:
        "mg/dL" under 3094-0 -> "mg/dL{BUN}", so a record keyed by the analyte code keeps the
        factor of the code it came with. A unit of a code without its own units is unchanged."""
        return self.loinc_units.get(loinc, {}).get(unit, unit)

    def reference_for(self, sex: Sex | None = None, age: float | None = None) -> Interval:
        """The adult reference interval for this sex and age (canonical unit)."""
        interval = self.reference
        if sex == "male" and self.reference_male is not None:
            interval = self.reference_male
        elif sex == "female" and self.reference_female is not None:
            interval = self.reference_female
        if age is not None and sex is not None:
            for band in sorted(self.reference_age_upper, key=lambda b: b.from_age, reverse=True):
                high = band.male if sex == "male" else band.female
                if age >= band.from_age and high is not None:
                    return Interval(low=interval.low, high=high)
        return interval


class Catalogue:
    """An immutable lookup over analytes by code and by LOINC."""

    def __init__(self, analytes: Iterable[Analyte], version: str = CATALOGUE_VERSION) -> None:
        self._by_code: dict[str, Analyte] = {}
        self._by_loinc: dict[str, Analyte] = {}
        self._measured: dict[str, Analyte] = {}
        for analyte in analytes:
            if analyte.code in self._by_code:
                raise ValueError(f"analyte code {analyte.code!r} is declared twice")
            self._by_code[analyte.code] = analyte
            for loinc in (analyte.loinc, *analyte.alt_loinc):
                if loinc in self._by_loinc:
                    raise ValueError(
                        f"LOINC {loinc} is declared by both {self._by_loinc[loinc].code!r} "
                        f"and {analyte.code!r}"
                    )
                self._by_loinc[loinc] = analyte
            for loinc in analyte.loinc_units:
                self._measured[loinc] = analyte.measured_by(loinc)  # built once: a stable id
        self.version = version

    def __getitem__(self, code: str) -> Analyte:
        try:
            return self._by_code[code]
        except KeyError:
            raise KeyError(f"unknown analyte code {code!r}") from None

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[Analyte]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._by_code)

    def resolve(self, key: str) -> Analyte | None:
        """The catalogue entry for a catalogue code or a LOINC code, or None. Its units are the
        analyte's; use `as_measured` where a value's unit is read under the code it came with."""
        return self._by_code.get(key) or self._by_loinc.get(key)

    def as_measured(self, key: str) -> Analyte | None:
        """The analyte for a code or LOINC with the units (and factors) *that key* accepts: urea
        under 3094-0 reads mg/dL as urea nitrogen. The entry itself when the key has no units of
        its own, so `as_measured(key).code == resolve(key).code` always."""
        return self._measured.get(key) or self.resolve(key)

    def extended(self, extra: Iterable[Analyte]) -> Catalogue:
        """A new catalogue with extra analytes added (a spec's own analytes)."""
        extra = list(extra)
        if not extra:
            return self
        return Catalogue([*self, *extra], version=f"{self.version}+{_digest(extra)}")

    @cached_property
    def checksum(self) -> str:
        """A digest of every entry: changes whenever any code, unit, factor or limit changes."""
        return _digest(list(self))


def _digest(analytes: list[Analyte]) -> str:
    payload = json.dumps([a.model_dump(mode="json") for a in analytes], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _fmt(value: float) -> str:
    return f"{value:g}"


# --- panels ---------------------------------------------------------------------------------

PANEL_TITLES: dict[str, str] = {
    "fbc": "Full blood count",
    "renal": "Urea and electrolytes",
    "liver": "Liver function tests",
    "bone": "Bone profile",
    "protein": "Proteins",
    "inflammatory": "Inflammatory markers",
    "iron": "Iron studies",
    "metabolic": "Glucose and HbA1c",
    "tumour_markers": "Tumour markers",
    "other": "Other",
    "demographics": "Age and sex",
}

# A panel counts as present when all of its core analytes are (used by eligibility rules).
PANEL_CORE: dict[str, tuple[str, ...]] = {
    "fbc": ("haemoglobin", "wbc", "platelets"),
    "renal": ("sodium", "potassium", "creatinine"),
    "liver": ("alp", "alt", "bilirubin", "albumin"),
    "bone": ("calcium_adjusted", "phosphate", "alp"),
    "protein": ("albumin", "total_protein"),
    "inflammatory": ("crp",),
}


def _a(
    code: str,
    name: str,
    loinc: str,
    unit: str,
    display_unit: str,
    reference: tuple[float | None, float | None],
    limits: tuple[float, float],
    panel: Panel,
    direction: Direction,
    decimals: int,
    *,
    alt_units: Mapping[str, float | tuple[float, float]] | None = None,
    alt_loinc: tuple[str, ...] = (),
    loinc_units: Mapping[str, Mapping[str, str]] | None = None,
    ambiguous_units: tuple[str, ...] = (),
    male: tuple[float, float] | None = None,
    female: tuple[float, float] | None = None,
    age_upper: tuple[tuple[float, float | None, float | None], ...] = (),
    skewed: bool = False,
) -> Analyte:
    """Compact constructor for the table below (factor, or (factor, offset) for affine units)."""
    units = {
        unit_: UnitConversion(factor=conv[0], offset=conv[1])
        if isinstance(conv, tuple)
        else UnitConversion(factor=conv)
        for unit_, conv in (alt_units or {}).items()
    }
    return Analyte(
        code=code,
        name=name,
        loinc=loinc,
        alt_loinc=alt_loinc,
        loinc_units={k: dict(v) for k, v in (loinc_units or {}).items()},
        unit=unit,
        display_unit=display_unit,
        alt_units=units,
        ambiguous_units=ambiguous_units,
        reference=Interval(low=reference[0], high=reference[1]),
        reference_male=Interval(low=male[0], high=male[1]) if male else None,
        reference_female=Interval(low=female[0], high=female[1]) if female else None,
        reference_age_upper=tuple(
            AgeBandUpper(from_age=a, male=m, female=f) for a, m, f in age_upper
        ),
        limits=Interval(low=limits[0], high=limits[1]),
        panel=panel,
        cancer_direction=direction,
        decimals=decimals,
        skewed=skewed,
    )


_ENZYME = {"ukat/L": 60.0}
# LOINC 3094-0 is urea NITROGEN by mass: mg/dL of N (x10/28.014), never mg/dL of urea (x10/60.06).
# In moles, urea nitrogen (N2) equals urea, so mmol/L is taken as it is.
_BUN_UNITS = {"mg/dL": "mg/dL{BUN}", "mg/dL{BUN}": "mg/dL{BUN}", "mmol/L": "mmol/L"}

# fmt: off
_ANALYTES: tuple[Analyte, ...] = (
    # --- full blood count with differential ---
    _a("haemoglobin", "Haemoglobin", "718-7", "g/L", "g/L", (115, 170), (30, 250), "fbc", "low",
       0, alt_units={"g/dL": 10.0, "mmol/L": 16.11}, male=(130, 170), female=(115, 160)),
    _a("haematocrit", "Haematocrit", "4544-3", "L/L", "L/L", (0.34, 0.51), (0.10, 0.75), "fbc",
       "low", 3, alt_units={"%": 0.01}, male=(0.38, 0.51), female=(0.34, 0.47)),
    _a("rbc", "Red cell count", "789-8", "10*12/L", "×10¹²/L", (4.2, 6.0), (1, 8), "fbc", "low",
       2, alt_units={"10*6/uL": 1.0}, male=(4.4, 6.0), female=(4.2, 5.4)),
    _a("mcv", "Mean cell volume", "787-2", "fL", "fL", (80, 100), (50, 150), "fbc", "both", 1,
       alt_units={"um3": 1.0}),
    _a("mch", "Mean cell haemoglobin", "785-6", "pg", "pg", (27, 33), (15, 50), "fbc", "low", 1),
    _a("mchc", "Mean cell haemoglobin concentration", "786-4", "g/L", "g/L", (300, 360),
       (250, 400), "fbc", "low", 0, alt_units={"g/dL": 10.0}),
    _a("rdw", "Red cell distribution width", "788-0", "%", "%", (11.5, 15.7), (8, 40), "fbc",
       "high", 1),
    _a("platelets", "Platelet count", "777-3", "10*9/L", "×10⁹/L", (150, 400), (1, 2000), "fbc",
       "high", 0, alt_units={"10*3/uL": 1.0, "/uL": 0.001}),
    _a("mpv", "Mean platelet volume", "32623-1", "fL", "fL", (7, 12), (4, 20), "fbc", "none", 1),
    _a("wbc", "White cell count", "6690-2", "10*9/L", "×10⁹/L", (4.0, 11.0), (0.1, 500), "fbc",
       "both", 2, alt_units={"10*3/uL": 1.0}, skewed=True),
    _a("neutrophils", "Neutrophil count", "751-8", "10*9/L", "×10⁹/L", (2.0, 7.5), (0, 100),
       "fbc", "high", 2, alt_units={"10*3/uL": 1.0}, skewed=True),
    _a("lymphocytes", "Lymphocyte count", "731-0", "10*9/L", "×10⁹/L", (1.0, 4.0), (0, 400),
       "fbc", "low", 2, alt_units={"10*3/uL": 1.0}, skewed=True),
    _a("monocytes", "Monocyte count", "742-7", "10*9/L", "×10⁹/L", (0.2, 1.0), (0, 50), "fbc",
       "high", 2, alt_units={"10*3/uL": 1.0}, skewed=True),
    _a("eosinophils", "Eosinophil count", "711-2", "10*9/L", "×10⁹/L", (0.0, 0.5), (0, 50),
       "fbc", "none", 2, alt_units={"10*3/uL": 1.0}),
    _a("basophils", "Basophil count", "704-7", "10*9/L", "×10⁹/L", (0.0, 0.1), (0, 10), "fbc",
       "none", 2, alt_units={"10*3/uL": 1.0}),
    # --- urea and electrolytes ---
    _a("sodium", "Sodium", "2951-2", "mmol/L", "mmol/L", (133, 146), (100, 180), "renal", "low",
       0, alt_units={"meq/L": 1.0}),
    _a("potassium", "Potassium", "2823-3", "mmol/L", "mmol/L", (3.5, 5.3), (1.5, 10), "renal",
       "none", 1, alt_units={"meq/L": 1.0}),
    # 22664-7 urea [Moles/volume], 3091-6 urea [Mass/volume], 3094-0 urea nitrogen [Mass/volume]
    _a("urea", "Urea", "22664-7", "mmol/L", "mmol/L", (2.5, 7.8), (0.5, 100), "renal", "high", 1,
       alt_loinc=("3091-6", "3094-0"),
       alt_units={"mg/dL": 10 / UREA_G_PER_MOL, "mg/dL{BUN}": 10 / UREA_NITROGEN_G_PER_MOL},
       loinc_units={"3094-0": _BUN_UNITS}, skewed=True),
    _a("creatinine", "Creatinine", "14682-9", "umol/L", "µmol/L", (45, 110), (20, 2500), "renal",
       "high", 0, alt_loinc=("2160-0",), alt_units={"mg/dL": 10_000 / CREATININE_G_PER_MOL},
       male=(57, 110), female=(41, 90), skewed=True),
    _a("egfr", "eGFR", "62238-1", "mL/min/{1.73_m2}", "mL/min/1.73m²", (90, None), (1, 200),
       "renal", "low", 0, alt_loinc=("98979-8", "33914-3")),
    # --- proteins ---
    _a("albumin", "Albumin", "1751-7", "g/L", "g/L", (35, 50), (10, 60), "protein", "low", 0,
       alt_units={"g/dL": 10.0}),
    _a("total_protein", "Total protein", "2885-2", "g/L", "g/L", (60, 80), (30, 150), "protein",
       "high", 0, alt_units={"g/dL": 10.0}),
    _a("globulin", "Globulin", "10834-0", "g/L", "g/L", (20, 35), (5, 120), "protein", "high", 0,
       alt_units={"g/dL": 10.0}),
    # --- bone profile ---
    _a("calcium_adjusted", "Adjusted calcium", "29265-6", "mmol/L", "mmol/L", (2.2, 2.6),
       (1.0, 5.0), "bone", "high", 2,
       alt_units={"mg/dL": 10 / CALCIUM_G_PER_MOL, "meq/L": 0.5}),
    _a("calcium", "Calcium (total)", "2000-8", "mmol/L", "mmol/L", (2.2, 2.6), (1.0, 5.0),
       "bone", "high", 2, alt_loinc=("17861-6",),
       alt_units={"mg/dL": 10 / CALCIUM_G_PER_MOL, "meq/L": 0.5}),
    _a("phosphate", "Phosphate", "14879-1", "mmol/L", "mmol/L", (0.8, 1.5), (0.1, 5), "bone",
       "none", 2, alt_loinc=("2777-1",), alt_units={"mg/dL": 10 / PHOSPHORUS_G_PER_MOL}),
    _a("alp", "Alkaline phosphatase", "6768-6", "U/L", "U/L", (30, 130), (5, 5000), "liver",
       "high", 0, alt_units=_ENZYME, skewed=True),
    # --- liver function ---
    _a("alt", "Alanine aminotransferase", "1742-6", "U/L", "U/L", (5, 42), (1, 5000), "liver",
       "high", 0, alt_units=_ENZYME, skewed=True),
    _a("ast", "Aspartate aminotransferase", "1920-8", "U/L", "U/L", (5, 42), (1, 5000), "liver",
       "high", 0, alt_units=_ENZYME, skewed=True),
    _a("ggt", "Gamma-glutamyl transferase", "2324-2", "U/L", "U/L", (6, 46), (1, 5000), "liver",
       "high", 0, alt_units=_ENZYME, male=(10, 46), female=(6, 29), skewed=True),
    _a("bilirubin", "Bilirubin (total)", "14631-6", "umol/L", "µmol/L", (3, 21), (1, 1000),
       "liver", "high", 0, alt_loinc=("1975-2",),
       alt_units={"mg/dL": 10_000 / BILIRUBIN_G_PER_MOL}, skewed=True),
    _a("ldh", "Lactate dehydrogenase", "2532-0", "U/L", "U/L", (120, 250), (20, 10_000), "other",
       "high", 0, alt_loinc=("14804-9",), alt_units=_ENZYME, skewed=True),
    # --- inflammatory markers ---
    _a("crp", "C-reactive protein", "1988-5", "mg/L", "mg/L", (0, 5), (0, 500), "inflammatory",
       "high", 1, alt_units={"mg/dL": 10.0}, ambiguous_units=("mg/dL",), skewed=True),
    _a("esr", "Erythrocyte sedimentation rate", "4537-7", "mm/h", "mm/h", (0, 20), (0, 150),
       "inflammatory", "high", 0, alt_loinc=("30341-2",),
       age_upper=((18, 15, 20), (50, 25, 30), (70, 35, 40)), skewed=True),
    _a("plasma_viscosity", "Plasma viscosity", "4691-2", "mPa.s", "mPa·s", (1.50, 1.72),
       (1.0, 10), "inflammatory", "high", 2, alt_units={"cP": 1.0}),
    # --- iron, metabolic ---
    _a("ferritin", "Ferritin", "2276-4", "ug/L", "µg/L", (15, 300), (1, 100_000), "iron", "both",
       0, alt_units={"ng/mL": 1.0}, male=(30, 400), female=(15, 150), skewed=True),
    _a("glucose", "Glucose", "14749-6", "mmol/L", "mmol/L", (4.0, 7.8), (1, 60), "metabolic",
       "high", 1, alt_loinc=("2345-7",), alt_units={"mg/dL": 10 / GLUCOSE_G_PER_MOL}),
    # 59261-8 is HbA1c by the IFCC protocol (mmol/mol); 4548-4 is HbA1c/Hb.total, the NGSP/DCCT %
    # (IFCC = 10.929 x (NGSP - 2.15)). A "%" under 59261-8 could be the old IFCC percentage (a
    # tenth of mmol/mol, 6.5% IFCC = 65 mmol/mol, not 48): refused there rather than guessed.
    _a("hba1c", "HbA1c", "59261-8", "mmol/mol", "mmol/mol", (20, 48), (20, 195), "metabolic",
       "high", 0, alt_loinc=("4548-4",), alt_units={"%": (10.929, -10.929 * 2.15)},
       loinc_units={"59261-8": {}}),
    # --- tumour markers ---
    _a("psa", "Prostate-specific antigen", "2857-1", "ug/L", "µg/L", (0, 3), (0, 10_000),
       "tumour_markers", "high", 2, alt_units={"ng/mL": 1.0},
       age_upper=((60, 4, None), (70, 5, None)), skewed=True),
    _a("ca125", "CA125", "10334-1", "k[U]/L", "kU/L", (0, 35), (0, 100_000), "tumour_markers",
       "high", 0, alt_units={"U/mL": 1.0}, skewed=True),
    _a("cea", "Carcinoembryonic antigen", "2039-6", "ug/L", "µg/L", (0, 5), (0, 100_000),
       "tumour_markers", "high", 1, alt_units={"ng/mL": 1.0}, skewed=True),
)
# fmt: on

CATALOGUE = Catalogue(_ANALYTES)
