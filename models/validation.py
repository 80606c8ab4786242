"""Validation of one record against the analyte catalogue, and the rules both paths share.

Both paths (this record path, and the frame path in `models.frame_validation`) return canonical
values plus coded issues (`error` or `warning`, code, field, message). A record with any error is
ineligible: it is never scored. The record path is plain Python (it runs per API request); the
frame path is vectorised (a million rows in seconds). They share the issue codes, rules and
message functions below, and a property test holds them equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.analytes import AGE_LIMITS, CATALOGUE, PANEL_CORE, Analyte, Catalogue, Sex
from models.units import (
    UnitMatch,
    alternative_readings,
    apply_conversion,
    canonical_match,
    unit_key,
    unit_table,
)

Severity = Literal["error", "warning"]
FloatArray = npt.NDArray[np.float64]

# Every issue code the validation can raise, with its severity and meaning.
ISSUE_CODES: dict[str, tuple[Severity, str]] = {
    "unknown_field": ("error", "a key that is neither a catalogue code, a LOINC code, age nor sex"),
    "duplicate_analyte": ("error", "the same analyte given twice (e.g. by code and by LOINC)"),
    "not_a_number": ("error", "an analyte value that is not a finite number"),
    "unknown_unit": ("error", "a unit the catalogue does not accept for the analyte"),
    "out_of_limits": ("error", "a value outside the analyte's hard plausibility limits"),
    "age_out_of_range": ("error", "age missing, implausible, or outside the model's eligibility"),
    "invalid_sex": ("error", "sex missing or not male/female"),
    "missing_required_panel": ("error", "a panel the model requires is absent or incomplete"),
    "missing_required_analyte": ("error", "an analyte the model requires is absent"),
    "unit_converted": ("warning", "the value was converted from its declared unit"),
    "unit_assumed": ("warning", "no unit was declared; the canonical unit was assumed"),
    "ambiguous_unit": ("warning", "a unit that is often mislabelled; check the source"),
    "differential_exceeds_wbc": ("warning", "the differential counts add up to more than the WBC"),
    "albumin_exceeds_total_protein": ("warning", "albumin is greater than total protein"),
    "mch_inconsistent": ("warning", "MCH differs from Hb/RBC by more than 10%"),
    "globulin_inconsistent": ("warning", "globulin differs from total protein - albumin"),
    "possible_haemolysis": ("warning", "potassium above 6.0 mmol/L; consider haemolysis"),
}

_SEX_SPELLINGS: dict[str, Sex] = {"male": "male", "m": "male", "female": "female", "f": "female"}
DIFFERENTIAL = ("neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils")
# Tolerances: reported values are rounded, so exact identities hold only approximately.
DIFFERENTIAL_TOLERANCE = (1.05, 0.1)  # sum > WBC * 1.05 + 0.1
MCH_RELATIVE_TOLERANCE = 0.10
GLOBULIN_TOLERANCE_G_PER_L = 2.0
HAEMOLYSIS_POTASSIUM = 6.0


class Eligibility(BaseModel):
    """Who a model may score: an age range and the panels/analytes that must be present."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_age: float = Field(default=18, ge=AGE_LIMITS[0], le=AGE_LIMITS[1])
    max_age: float = Field(default=AGE_LIMITS[1], ge=AGE_LIMITS[0], le=AGE_LIMITS[1])
    required_panels: tuple[str, ...] = ()
    required_analytes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known(self) -> Eligibility:
        if self.min_age > self.max_age:
            raise ValueError(f"min_age {self.min_age} is above max_age {self.max_age}")
        unknown = [p for p in self.required_panels if p not in PANEL_CORE]
        if unknown:
            raise ValueError(f"unknown panels {unknown}; known: {sorted(PANEL_CORE)}")
        return self


@dataclass(frozen=True, order=True)
class Issue:
    severity: Severity
    code: str
    field: str
    message: str


def _issue(code: str, field_: str, message: str) -> Issue:
    return Issue(ISSUE_CODES[code][0], code, field_, message)


# --- messages (shared by both paths so that they agree to the letter) ---------------------------


def _g(value: float) -> str:
    return f"{value:g}"


def message_unknown_unit(analyte: Analyte, unit: str) -> str:
    return f"unit {unit!r} is not accepted for {analyte.name}; accepted: {', '.join(analyte.units)}"


def message_out_of_limits(analyte: Analyte, value: float, unit: str, canonical: float) -> str:
    text = (
        f"{analyte.name} {_g(value)} {unit} is implausible "
        f"(limits {analyte.limits.describe()} {analyte.display_unit})"
    )
    hints = [
        _reading(analyte, value, alt, reading)
        for alt, reading in alternative_readings(analyte, value, unit)
    ]
    return text + ("; did you mean " + " or ".join(hints) + "?" if hints else "")


def _reading(analyte: Analyte, value: float, unit: str, canonical: float) -> str:
    """`value` read in `unit`, with its canonical equivalent unless `unit` is the canonical one
    (else Hb 131 g/dL would earn "131 g/L = 131 g/L")."""
    reading = f"{_g(value)} {unit}"
    if unit_key(unit) == unit_key(analyte.unit):
        return reading
    return f"{reading} = {_g(round(canonical, analyte.decimals))} {analyte.display_unit}"


def message_converted(analyte: Analyte, match: UnitMatch) -> str:
    conv = match.conversion
    how = f"x{conv.factor:.6g}" + (f" {conv.offset:+.6g}" if conv.offset else "")
    return f"{analyte.name} converted from {match.unit} to {analyte.unit} ({how})"


def message_assumed(analyte: Analyte) -> str:
    return f"{analyte.name} has no unit; assumed {analyte.unit}"


def message_ambiguous(analyte: Analyte, match: UnitMatch) -> str:
    return (
        f"{analyte.name} in {match.unit} is often a mislabelled {analyte.unit}; "
        "check the source if the value looks 10x off"
    )


def message_not_a_number(analyte: Analyte, value: object) -> str:
    return f"{analyte.name} value {value!r} is not a finite number"


# --- cross-analyte rules: written once on numpy, applied to scalars and to arrays ----------------

Values = Mapping[str, Any]  # code -> float or FloatArray (NaN where absent)


def _get(values: Values, code: str, like: Any) -> Any:
    found = values.get(code)
    return found if found is not None else np.full_like(like, np.nan, dtype=np.float64)


@dataclass(frozen=True)
class Rule:
    code: str
    field: str
    flags: Callable[[Values, Any], Any]  # (values, template) -> bool or bool array
    message: Callable[[Values, int | None], str]


def _at(values: Values, code: str, i: int | None) -> float:
    value = values.get(code)
    if value is None:
        return math.nan
    return float(value if i is None else value[i])


def _differential_sum(values: Values, like: Any) -> Any:
    parts = [_get(values, c, like) for c in DIFFERENTIAL]
    return np.nansum(np.stack(parts), axis=0), np.any(~np.isnan(np.stack(parts)), axis=0)


def _flag_differential(v: Values, like: Any) -> Any:
    total, present = _differential_sum(v, like)
    wbc = _get(v, "wbc", like)
    factor, slack = DIFFERENTIAL_TOLERANCE
    with np.errstate(invalid="ignore"):
        return present & (total > wbc * factor + slack)


def _message_differential(v: Values, i: int | None) -> str:
    total = sum(x for x in (_at(v, c, i) for c in DIFFERENTIAL) if not math.isnan(x))
    return (
        f"differential counts add up to {total:.4g} x10^9/L, "
        f"more than the WBC {_g(_at(v, 'wbc', i))} x10^9/L"
    )


def _flag_albumin(v: Values, like: Any) -> Any:
    with np.errstate(invalid="ignore"):
        return _get(v, "albumin", like) > _get(v, "total_protein", like)


def _flag_mch(v: Values, like: Any) -> Any:
    hb, rbc, mch = (_get(v, c, like) for c in ("haemoglobin", "rbc", "mch"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(mch - hb / rbc) > MCH_RELATIVE_TOLERANCE * mch


def _flag_globulin(v: Values, like: Any) -> Any:
    glob, tp, alb = (_get(v, c, like) for c in ("globulin", "total_protein", "albumin"))
    with np.errstate(invalid="ignore"):
        return np.abs(glob - (tp - alb)) > GLOBULIN_TOLERANCE_G_PER_L


def _flag_haemolysis(v: Values, like: Any) -> Any:
    with np.errstate(invalid="ignore"):
        return _get(v, "potassium", like) > HAEMOLYSIS_POTASSIUM


RULES: tuple[Rule, ...] = (
    Rule("differential_exceeds_wbc", "wbc", _flag_differential, _message_differential),
    Rule(
        "albumin_exceeds_total_protein",
        "albumin",
        _flag_albumin,
        lambda v, i: (
            f"albumin {_g(_at(v, 'albumin', i))} g/L is greater than "
            f"total protein {_g(_at(v, 'total_protein', i))} g/L"
        ),
    ),
    Rule(
        "mch_inconsistent",
        "mch",
        _flag_mch,
        lambda v, i: (
            f"MCH {_g(_at(v, 'mch', i))} pg differs by more than 10% from "
            f"Hb/RBC = {_at(v, 'haemoglobin', i) / _at(v, 'rbc', i):.3g} pg"
        ),
    ),
    Rule(
        "globulin_inconsistent",
        "globulin",
        _flag_globulin,
        lambda v, i: (
            f"globulin {_g(_at(v, 'globulin', i))} g/L differs from total protein - "
            f"albumin = {_g(_at(v, 'total_protein', i) - _at(v, 'albumin', i))} g/L"
        ),
    ),
    Rule(
        "possible_haemolysis",
        "potassium",
        _flag_haemolysis,
        lambda v, i: (
            f"potassium {_g(_at(v, 'potassium', i))} mmol/L is above "
            f"{_g(HAEMOLYSIS_POTASSIUM)}; consider a haemolysed or delayed sample"
        ),
    ),
)


def message_age(age: float, eligibility: Eligibility | None) -> str:
    if math.isnan(age):
        return "age is missing or not a number"
    low, high = AGE_LIMITS
    if not low <= age <= high:
        return f"age {_g(age)} is implausible (limits {_g(low)}-{_g(high)})"
    assert eligibility is not None
    return (
        f"age {_g(age)} is outside this model's eligible range "
        f"{_g(eligibility.min_age)}-{_g(eligibility.max_age)}"
    )


def age_ok(age: Any, eligibility: Eligibility | None) -> Any:
    low, high = (
        (eligibility.min_age, eligibility.max_age) if eligibility is not None else AGE_LIMITS
    )
    with np.errstate(invalid="ignore"):
        return (age >= low) & (age <= high)


def message_sex(raw: object) -> str:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return "sex is missing; expected male or female"
    return f"sex {raw!r} is not recognised; expected male or female"


def message_panel(panel: str, missing: list[str]) -> str:
    return f"the {panel} panel is required but lacks: {', '.join(missing)}"


def parse_sex(raw: object) -> Sex | None:
    """male/female from the accepted spellings (male, m, female, f; any case), else None."""
    if not isinstance(raw, str):
        return None
    return _SEX_SPELLINGS.get(raw.strip().lower())


def _to_float(raw: object) -> float:
    if isinstance(raw, bool) or raw is None:
        return math.nan
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


# --- one record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """What happened to one declared value on its way to the canonical unit."""

    value: float
    unit: str | None
    canonical_value: float
    canonical_unit: str


@dataclass(frozen=True)
class RecordValidation:
    values: dict[str, float]  # canonical values of the analytes that passed
    age: float | None
    sex: Sex | None
    issues: tuple[Issue, ...]
    conversions: dict[str, Conversion] = field(default_factory=dict)

    @property
    def eligible(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)

    @property
    def errors(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")


def validate_record(
    record: Mapping[str, Any],
    *,
    catalogue: Catalogue = CATALOGUE,
    eligibility: Eligibility | None = None,
) -> RecordValidation:
    """Validate one patient: `{"age", "sex", "analytes": {code or LOINC: {"value", "unit"}}}`.

    An analyte may also be given as a bare number (the canonical unit is then assumed, with a
    warning). Returns canonical values and every issue found.
    """
    issues: list[Issue] = []
    values: dict[str, float] = {}
    provided: set[str] = set()
    conversions: dict[str, Conversion] = {}

    for key, entry in (record.get("analytes") or {}).items():
        analyte = catalogue.as_measured(str(key))
        if analyte is None:
            issues.append(_issue("unknown_field", str(key), f"{key!r} is not a known analyte"))
            continue
        if analyte.code in provided:
            issues.append(
                _issue("duplicate_analyte", analyte.code, f"{analyte.name} is given twice")
            )
            continue
        raw, unit = (
            (entry.get("value"), entry.get("unit"))
            if isinstance(entry, Mapping)
            else (
                entry,
                None,
            )
        )
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            continue  # absent, as an empty cell is in a frame
        provided.add(analyte.code)
        canonical, unit_issues, conversion = _check_value(analyte, raw, unit)
        issues.extend(unit_issues)
        if conversion is not None:
            conversions[analyte.code] = conversion
        if canonical is not None:
            values[analyte.code] = canonical

    age = _to_float(record.get("age"))
    if not bool(age_ok(age, eligibility)) or not bool(age_ok(age, None)):
        issues.append(_issue("age_out_of_range", "age", message_age(age, eligibility)))
    sex = parse_sex(record.get("sex"))
    if sex is None:
        issues.append(_issue("invalid_sex", "sex", message_sex(record.get("sex"))))

    issues.extend(_eligibility_issues_record(provided, eligibility))
    for rule in RULES:
        if bool(rule.flags(values, math.nan)):
            issues.append(_issue(rule.code, rule.field, rule.message(values, None)))
    return RecordValidation(
        values=values,
        age=None if math.isnan(age) else age,
        sex=sex,
        issues=tuple(issues),
        conversions=conversions,
    )


def _check_value(
    analyte: Analyte, raw: object, unit: object
) -> tuple[float | None, list[Issue], Conversion | None]:
    value = _to_float(raw)
    if not math.isfinite(value):
        message = message_not_a_number(analyte, raw)
        return None, [_issue("not_a_number", analyte.code, message)], None
    issues: list[Issue] = []
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        match = canonical_match(analyte)
        declared = analyte.unit
        issues.append(_issue("unit_assumed", analyte.code, message_assumed(analyte)))
    else:
        declared = str(unit)
        found = unit_table(analyte).get(unit_key(declared))
        if found is None:
            message = message_unknown_unit(analyte, declared)
            return None, [_issue("unknown_unit", analyte.code, message)], None
        match = found
    canonical = apply_conversion(value, match.conversion)
    if not analyte.limits.contains(canonical):
        message = message_out_of_limits(analyte, value, declared, canonical)
        return None, [*issues, _issue("out_of_limits", analyte.code, message)], None
    if not match.is_canonical:
        issues.append(_issue("unit_converted", analyte.code, message_converted(analyte, match)))
    if match.unit in analyte.ambiguous_units:
        issues.append(_issue("ambiguous_unit", analyte.code, message_ambiguous(analyte, match)))
    conversion = Conversion(value, None if unit is None else declared, canonical, analyte.unit)
    return canonical, issues, conversion


def _eligibility_issues_record(provided: set[str], eligibility: Eligibility | None) -> list[Issue]:
    if eligibility is None:
        return []
    issues = []
    for panel in eligibility.required_panels:
        missing = [c for c in PANEL_CORE[panel] if c not in provided]
        if missing:
            issues.append(_issue("missing_required_panel", panel, message_panel(panel, missing)))
    for code in eligibility.required_analytes:
        if code not in provided:
            issues.append(_issue("missing_required_analyte", code, f"{code} is required"))
    return issues
