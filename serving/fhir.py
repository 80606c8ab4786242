"""FHIR R4B in: a Bundle (one Patient + LOINC-coded Observations) -> the patient record to score.

The same as-of idea as training and replay (`training.cohorts.asof`): a model may only see what
was known on its reference date, so nothing in the Bundle moves that date. The rules:

- Reference date: `as_of` when the request gives one (`asOf`, or `sample_date`), else today (UTC).
  Age is taken on it, in completed years, as the training cohorts count age.
- An Observation is used only when all of these hold; otherwise it is ignored and reported as one
  warning `observation_ignored` (field: its reference; message: "<reason>: ..."):
  `other_patient` (its subject is not the Bundle's Patient: matched by the Patient entry's fullUrl,
  `Patient/<id>` or an absolute URL ending in `/Patient/<id>`), `no_subject` (no subject: an
  interface engine mixing patients is more common than a lab result without one), `no_id` (neither
  a fullUrl nor an id: it could not be cited in `basis`), `withdrawn` (entered-in-error,
  cancelled), `status_not_final` (only final, amended and corrected are results to act on),
  `unknown_code` (no LOINC coding the catalogue knows), `no_value` (no valueQuantity with a value,
  e.g. a dataAbsentReason), `comparator` (`<5` is not 5; the catalogue states no substitution, so a
  censored value is not scored), `undated` (no effectiveDateTime, effectiveInstant or
  effectivePeriod: `issued` is the release time, not when the blood was taken), `future_dated`
  (after the reference date), `outside_lookback` (before the reference date minus `lookback_days`),
  `imprecise_date` (a partial date, `2026` or `2026-11`, not wholly inside that window),
  `superseded` (a later result of the same analyte is used).
- Dates: an Observation's day is its calendar day as written (its own offset). Among the usable
  results of one analyte, the latest wins by full timestamp (timezone-aware); a date without a time
  counts as 00:00 UTC of that day, a partial date (wholly inside the window) as its first day.
  Ties: a corrected/amended result beats a final one, then the later `issued`, then the larger
  reference (so bundle order never decides).
- Units: `valueQuantity.code` when its system is UCUM (or absent), else `valueQuantity.unit`, read
  under the Observation's own LOINC (`Catalogue.as_measured`): BUN (3094-0) in mg/dL becomes
  `mg/dL{BUN}` in the record. A unit that LOINC does not accept refuses the request
  (`unknown_unit`).
- Patient: exactly one. `birthDate` may be `YYYY`, `YYYY-MM` or a full date. A partial birth date
  is read as the middle of its span (1 July of the year; the 15th of the month), as epidemiology
  does; when that makes the
  age uncertain on the reference date, a warning `birth_date_partial` gives the possible ages.
  Errors: `missing_birth_date`, `missing_sex` (no gender), `unsupported_sex` (other/unknown: the
  models learnt male and female only), `missing_patient_reference` (no fullUrl and no id).
- Anything that is not a readable R4B Bundle: `invalid_fhir`, in plain words (no library internals).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from models.analytes import Analyte, Catalogue
from models.units import unit_key, unit_table
from models.validation import Issue
from serving.fhir_out import capability_statement, operation_outcome, risk_assessment

__all__ = [
    "FhirError",
    "FhirRequest",
    "capability_statement",
    "completed_years",
    "operation_outcome",
    "parse_bundle",
    "risk_assessment",
]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
USED_STATUSES = frozenset({"final", "amended", "corrected"})
WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})
SEXES = frozenset({"male", "female"})
MAX_ISSUES = 20
_PATIENT_URL = re.compile(r"/Patient/([A-Za-z0-9\-.]{1,64})$")
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


class FhirError(ValueError):
    """A Bundle that cannot be scored; `issues` say why (errors, then the warnings so far)."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(i.message for i in self.issues))


@dataclass
class FhirRequest:
    """What a Bundle says about one patient on its reference date."""

    record: dict[str, Any]  # {"age", "sex", "analytes": {code: {"value", "unit"}}}
    subject: str
    as_of: date
    basis: list[str] = field(default_factory=list)  # the Observations used
    warnings: list[Issue] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # Observation reference -> reason


@dataclass(frozen=True)
class _Candidate:
    analyte: Analyte  # as measured by its LOINC
    base: Analyte  # the catalogue entry
    loinc: str
    reference: str
    key: tuple[datetime, int, datetime, str]  # later is greater
    value: float
    unit: str | None


def _error(code: str, field_: str, message: str) -> Issue:
    return Issue("error", code, field_, message)


def ignored(reference: str, reason: str, message: str) -> Issue:
    """The warning for one Observation left out (the reason code leads the message)."""
    return Issue("warning", "observation_ignored", reference, f"{reason}: {reference} {message}")


def parse_bundle(
    data: Any,
    catalogue: Catalogue,
    *,
    as_of: date | None = None,
    lookback_days: int = 90,
    today: date | None = None,
) -> FhirRequest:
    """The patient record a Bundle holds as of the reference date (raises FhirError)."""
    bundle = _read_bundle(data)
    reference = as_of or today or datetime.now(UTC).date()
    patients = [(i, e) for i, e in enumerate(bundle.entry or []) if isinstance(e.resource, Patient)]
    if len(patients) != 1:
        found = f"found {len(patients)}"
        raise FhirError([_error("invalid_fhir", "Bundle.entry", f"need one Patient, {found}")])
    entry = patients[0][1]
    patient = entry.resource
    assert isinstance(patient, Patient)
    errors: list[Issue] = []
    warnings: list[Issue] = []
    subject = _own_reference(entry.fullUrl, "Patient", patient.id)
    if subject is None:
        message = "the Patient has neither a fullUrl nor an id, so it cannot be referenced"
        errors.append(_error("missing_patient_reference", "Patient", message))
    age, age_issues = _age(patient.birthDate, reference)
    sex, sex_issues = _sex(patient.gender)
    for issue in (*age_issues, *sex_issues):
        (errors if issue.severity == "error" else warnings).append(issue)
    names = _patient_names(entry.fullUrl, patient.id)
    window = (reference - timedelta(days=lookback_days), reference)
    chosen, skipped = _choose(bundle, catalogue, names, window)
    analytes, unit_errors = _record_values(chosen)
    warnings.extend(skipped)
    if errors or unit_errors:
        raise FhirError([*errors, *unit_errors, *warnings][: MAX_ISSUES * 5])
    assert subject is not None
    return FhirRequest(
        record={"age": age, "sex": sex, "analytes": analytes},
        subject=subject,
        as_of=reference,
        basis=[c.reference for c in chosen.values()],
        warnings=warnings,
        ignored={w.field: w.message.split(":", 1)[0] for w in skipped},
    )


def completed_years(birth: date, on: date) -> int:
    """Age in whole years on a date (the birthday itself counts)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


# --- reading ------------------------------------------------------------------------------------


def _read_bundle(data: Any) -> Bundle:
    """A validated R4B Bundle, or FhirError with plain-worded `invalid_fhir` issues."""
    if not isinstance(data, Mapping):
        shape = (
            "a list" if isinstance(data, list) else "a string" if isinstance(data, str) else None
        )
        kind = shape or "not a JSON object"
        message = f"the body is {kind}; expected a FHIR Bundle (a JSON object)"
        raise FhirError([_error("invalid_fhir", "Bundle", message)])
    declared = data.get("resourceType")
    if declared != "Bundle":
        shown = (
            f"is a {declared} resource"
            if isinstance(declared, str) and declared.isalnum()
            else "has no resourceType"
        )
        message = f"the body {shown}; expected a FHIR Bundle"
        raise FhirError([_error("invalid_fhir", "Bundle.resourceType", message)])
    problems = _entry_shape(data.get("entry"))
    if problems:
        raise FhirError(problems)
    try:
        return Bundle.model_validate(dict(data))
    except ValidationError as error:
        issues = [_plain(e) for e in error.errors()[:MAX_ISSUES]]
        raise FhirError(issues) from None
    except (TypeError, KeyError, ValueError, RecursionError):  # the library's own slips
        message = "the Bundle could not be read as FHIR R4B"
        raise FhirError([_error("invalid_fhir", "Bundle", message)]) from None


def _entry_shape(entries: Any) -> list[Issue]:
    """Checks the library answers with a crash or with its class names: entries must be objects
    whose resource is an object with a known resourceType."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return [_error("invalid_fhir", "Bundle.entry", "entry must be a list")]
    issues = []
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(entry, Mapping) or (
            resource is not None and not isinstance(resource, Mapping)
        ):
            issues.append(
                _error("invalid_fhir", where, "an entry and its resource must be objects")
            )
            continue
        if resource is None:
            continue
        kind = resource.get("resourceType")
        try:
            known = isinstance(kind, str) and get_fhir_model_class(kind) is not None
        except (KeyError, ValueError, AttributeError, ImportError):
            known = False
        if not known:
            message = "the resource has no resourceType known to FHIR R4B"
            issues.append(_error("invalid_fhir", f"{where}.resource.resourceType", message))
    return issues[:MAX_ISSUES]


_PLAIN = {
    "missing": "is required",
    "extra_forbidden": "is not an element of this resource",
}


def _plain(error: Mapping[str, Any]) -> Issue:
    """A pydantic error in FHIR words: a FHIRPath-like location and a fixed phrase."""
    path = "Bundle"
    for part in error.get("loc", ()):
        if part == "root":
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    kind = str(error.get("type", ""))
    if kind in _PLAIN:
        phrase = _PLAIN[kind]
    elif kind.endswith("_type"):
        phrase = "has the wrong JSON type"
    else:
        phrase = "is not a valid value for this element"
    return _error("invalid_fhir", path, f"{path} {phrase}")


# --- the patient --------------------------------------------------------------------------------


def _own_reference(full_url: Any, kind: str, id_: Any) -> str | None:
    if full_url:
        return str(full_url)
    return f"{kind}/{id_}" if id_ else None


def _patient_names(full_url: Any, id_: Any) -> tuple[set[str], str | None]:
    """The references that name this Patient, and the `/Patient/<id>` suffix of absolute URLs."""
    names = {str(full_url)} if full_url else set()
    tail = _PATIENT_URL.search(str(full_url or ""))
    id_ = id_ or (tail.group(1) if tail else None)  # https://ehr/fhir/Patient/7 is Patient/7
    if id_:
        names.add(f"Patient/{id_}")
        return names, f"/Patient/{id_}"
    return names, None


def _span(value: Any) -> tuple[date, date] | None:
    """First and last day a FHIR date/dateTime may mean (a partial date spans a month/year)."""
    if isinstance(value, datetime):
        return value.date(), value.date()
    if isinstance(value, date):
        return value, value
    match = _PARTIAL.match(str(value)) if value else None
    if match is None:
        return None
    year, month = int(match.group(1)), match.group(2)
    if month is None:
        return date(year, 1, 1), date(year, 12, 31)
    first = date(year, int(month), 1)
    return first, (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _age(birth: Any, on: date) -> tuple[int | None, list[Issue]]:
    span = _span(birth)
    if span is None:
        message = "Patient.birthDate is missing; age is needed to score"
        return None, [_error("missing_birth_date", "Patient.birthDate", message)]
    first, last = span
    if first == last:
        return completed_years(first, on), []
    middle = (
        first.replace(month=7) if first.month == 1 and last.month == 12 else first.replace(day=15)
    )
    age = completed_years(middle, on)
    youngest, oldest = completed_years(last, on), completed_years(first, on)
    if youngest == oldest:
        return age, []
    message = (
        f"birth date {birth} gives age {youngest} to {oldest} on {on.isoformat()}; "
        f"{age} used (as if born on {middle.isoformat()})"
    )
    return age, [Issue("warning", "birth_date_partial", "Patient.birthDate", message)]


def _sex(gender: Any) -> tuple[str | None, list[Issue]]:
    if gender is None:
        message = "Patient.gender is missing; the model needs male or female"
        return None, [_error("missing_sex", "Patient.gender", message)]
    if str(gender) not in SEXES:
        shown = str(gender) if str(gender).replace("-", "").isalnum() else "this value"
        message = f"Patient.gender {shown} cannot be scored: the model learnt male and female only"
        return None, [_error("unsupported_sex", "Patient.gender", message)]
    return str(gender), []


# --- the observations ---------------------------------------------------------------------------


def _choose(
    bundle: Bundle,
    catalogue: Catalogue,
    names: tuple[set[str], str | None],
    window: tuple[date, date],
) -> tuple[dict[str, _Candidate], list[Issue]]:
    """The latest usable Observation per analyte, and one warning per Observation left out."""
    chosen: dict[str, _Candidate] = {}
    skipped: list[Issue] = []
    for i, entry in enumerate(bundle.entry or []):
        if not isinstance(entry.resource, Observation):
            continue
        obs: Observation = entry.resource
        reference = _own_reference(entry.fullUrl, "Observation", obs.id)
        if reference is None:
            skipped.append(ignored(f"Bundle.entry[{i}]", "no_id", "has no fullUrl or id"))
            continue
        found = _candidate(obs, reference, catalogue, names, window)
        if isinstance(found, Issue):
            skipped.append(found)
            continue
        code = found.analyte.code
        if code in chosen:
            older, newer = sorted((chosen[code], found), key=lambda c: c.key)
            chosen[code] = newer
            skipped.append(ignored(older.reference, "superseded", f"by {newer.reference}"))
        else:
            chosen[code] = found
    return chosen, skipped


def _candidate(
    obs: Observation,
    reference: str,
    catalogue: Catalogue,
    names: tuple[set[str], str | None],
    window: tuple[date, date],
) -> _Candidate | Issue:
    """The Observation as a dated value of one analyte, or the warning saying why not."""
    refused = _subject_problem(obs, reference, names) or _status_problem(obs, reference)
    if refused:
        return refused
    loinc, analyte = next(
        (
            (str(c.code), found)
            for c in (obs.code.coding or [])
            if c.system == LOINC and c.code and (found := catalogue.as_measured(str(c.code)))
        ),
        (None, None),
    )
    if analyte is None or loinc is None:
        return ignored(reference, "unknown_code", "has no LOINC code this service knows")
    quantity = obs.valueQuantity
    if quantity is None or quantity.value is None:
        return ignored(reference, "no_value", f"({analyte.name}) has no numeric value")
    if quantity.comparator:
        what = f"{analyte.name} {quantity.comparator}{quantity.value}"
        return ignored(reference, "comparator", f"({what}) is not an exact value; not scored")
    when = _when(obs)
    if when is None:
        return ignored(reference, "undated", f"({analyte.name}) has no effective date")
    placed = _place(when, window)
    if isinstance(placed, tuple):
        reason, why = placed
        return ignored(reference, reason, f"({analyte.name}) {why}")
    rank = 0 if obs.status == "final" else 1
    issued = obs.issued if isinstance(obs.issued, datetime) else datetime.min.replace(tzinfo=UTC)
    unit = quantity.code if quantity.code and quantity.system in (None, UCUM) else quantity.unit
    return _Candidate(
        analyte=analyte,
        base=catalogue[analyte.code],
        loinc=loinc,
        reference=reference,
        key=(placed, rank, issued, reference),
        value=float(quantity.value),
        unit=str(unit) if unit else None,
    )


def _subject_problem(
    obs: Observation, reference: str, names: tuple[set[str], str | None]
) -> Issue | None:
    target = obs.subject.reference if obs.subject is not None else None
    if not target:
        return ignored(reference, "no_subject", "names no subject; not assumed to be this patient")
    exact, suffix = names
    if target in exact or (suffix is not None and "://" in target and target.endswith(suffix)):
        return None
    return ignored(reference, "other_patient", "is about another subject than the Patient")


def _status_problem(obs: Observation, reference: str) -> Issue | None:
    status = str(obs.status)
    if status in USED_STATUSES:
        return None
    shown = status if status.replace("-", "").isalnum() else "not a result status"
    if status in WITHDRAWN_STATUSES:
        return ignored(reference, "withdrawn", f"has status {shown}")
    return ignored(
        reference, "status_not_final", f"has status {shown}; only final results are used"
    )


def _when(obs: Observation) -> Any:
    if obs.effectiveDateTime is not None:
        return obs.effectiveDateTime
    if obs.effectiveInstant is not None:
        return obs.effectiveInstant
    period = obs.effectivePeriod
    if period is not None:
        return period.end or period.start
    return None


def _place(when: Any, window: tuple[date, date]) -> datetime | tuple[str, str]:
    """The sort instant of a usable date, or (reason, wording) when it is outside the window."""
    start, end = window
    span = _span(when)
    if span is None:
        return "undated", "has a date that cannot be read"
    first, last = span
    if first > end:
        return "future_dated", f"dated {first.isoformat()} is after the as-of date {end}"
    if last < start:
        return "outside_lookback", f"dated {last.isoformat()} is before the window from {start}"
    if first < start or last > end:
        return "imprecise_date", f"dated {when} may fall outside {start} to {end}"
    if isinstance(when, datetime):
        return when.astimezone(UTC)
    return datetime.combine(first, time(0), tzinfo=UTC)


def _record_values(
    chosen: Mapping[str, _Candidate],
) -> tuple[dict[str, dict[str, Any]], list[Issue]]:
    """The record's analytes, a unit rewritten to what its LOINC meant when that LOINC has units
    of its own (BUN mg/dL -> mg/dL{BUN}); a unit that LOINC does not accept is an error."""
    analytes: dict[str, dict[str, Any]] = {}
    errors: list[Issue] = []
    for code, candidate in chosen.items():
        unit, view, base = candidate.unit, candidate.analyte, candidate.base
        if unit is not None and candidate.loinc in base.loinc_units:
            match = unit_table(view).get(unit_key(unit))
            if match is None:
                message = (
                    f"{candidate.reference}: unit {unit} is not accepted for {view.name} "
                    f"under LOINC {candidate.loinc}; accepted: {', '.join(view.units)}"
                )
                errors.append(_error("unknown_unit", code, message))
                continue
            unit = base.unit_meaning(candidate.loinc, match.unit)
        analytes[code] = {"value": candidate.value, "unit": unit}
    return analytes, errors
