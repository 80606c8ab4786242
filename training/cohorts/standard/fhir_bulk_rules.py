"""How one Flat FHIR (Bulk Data NDJSON) resource becomes a row, by the FHIR route's rules.

`serving.fhir` decides which Observations a live request may score; a bulk import must decide the
same way, or a model replayed over an export would see other results than the service. Its
public constants (LOINC, UCUM, the used and withdrawn statuses) are imported from there; its
`_span` and `_when` are private, so the date rules are written again here, vectorised (the
duplication is deliberate: `training` may not change `serving`'s private helpers).

Observation, in the order the checks run (the first failing one is the reason counted):
`no_id`, `no_subject`, `unknown_patient` (the subject is not a Patient of the export),
`withdrawn` (entered-in-error, cancelled), `status_not_final` (only final, amended, corrected),
`unknown_code` (no LOINC coding whose code the catalogue lists), `no_value` (no numeric
valueQuantity.value), `comparator` (`<5` is not 5), `undated` (no effectiveDateTime,
effectiveInstant or effectivePeriod; for a period its end, else its start, as the route does),
`imprecise_date` (`2019` or `2019-03`: the route keeps one only when it lies wholly inside its
look-back window, and a bulk import has no single window, so it is never placed), `no_unit`
(neither a code nor a unit text). The unit is `valueQuantity.code` when its system is UCUM or
absent, else `valueQuantity.unit`, kept as written: a unit the catalogue does not accept is not
dropped here, validation refuses it later with its own code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from models.analytes import CATALOGUE, Catalogue
from serving.fhir import LOINC, UCUM, USED_STATUSES, WITHDRAWN_STATUSES

ICD10_SYSTEMS = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-uk",
        "http://hl7.org/fhir/sid/icd-10-cm",
    }
)
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOCAL_TEST_CODE_SYSTEM = "urn:triage:local-test-code"  # a lab's own test codes ("haemoglobin")
VOCABULARY_SYSTEMS = {  # OMOP vocabulary_id -> the FHIR code system URI (HL7 terminology)
    "SNOMED": "http://snomed.info/sct",
    "LOINC": LOINC,
    "ICD10": ICD10,
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "UCUM": UCUM,
}
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$")
_ORGANIZATION_REFERENCE = re.compile(r"(?:^|/)Organization/([A-Za-z0-9\-.]{1,64})$")
_DATE = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2}))?)?$")
_PARTIAL = re.compile(r"\d{4}(?:-\d{2})?")  # a FHIR partial date: a year, or a year and month

__all__ = ["LOINC", "UCUM", "USED_STATUSES", "WITHDRAWN_STATUSES"]


def vocabulary_system(vocabulary_id: str) -> str:
    """The code system URI of an index concept's vocabulary: HL7's URI for a standard one, else
    `urn:triage:vocabulary:<vocabulary_id>` (a site-local vocabulary such as TriageReferral)."""
    return VOCABULARY_SYSTEMS.get(vocabulary_id, f"urn:triage:vocabulary:{vocabulary_id}")


def reference_id(
    reference: Any, kind: str = "Patient", pattern: re.Pattern[str] = _PATIENT_REFERENCE
) -> str | None:
    """`Patient/7` or `https://ehr/fhir/Patient/7` -> "7" (None when it names no Patient)."""
    if not isinstance(reference, str):
        return None
    if reference.startswith(kind) and reference[len(kind) : len(kind) + 1] == "/":
        return reference[len(kind) + 1 :]  # the usual relative form: no regex (hot path)
    found = pattern.search(reference)
    return found.group(1) if found else None


def organization_id(reference: Any) -> str | None:
    return reference_id(reference, "Organization", _ORGANIZATION_REFERENCE)


def subject_id(resource: Mapping[str, Any]) -> str | None:
    subject = resource.get("subject")
    return reference_id(subject.get("reference")) if isinstance(subject, dict) else None


# --- Observation --------------------------------------------------------------------------------


class ObservationReader:
    """One Observation -> (id, patient, LOINC, value, unit, effective text, lab) or its reason.
    Called once per line: JSON objects are tested with `isinstance(x, dict)` (what orjson
    gives), not the Mapping ABC, which made the check a third of the time per Observation."""

    def __init__(
        self,
        patients: Mapping[str, int],
        labs: Mapping[str, str],
        catalogue: Catalogue = CATALOGUE,
    ) -> None:
        self.patients = patients
        self.labs = labs  # Organization id -> name
        self.loincs = frozenset(
            code for analyte in catalogue for code in (analyte.loinc, *analyte.alt_loinc)
        )

    def read(self, obs: Mapping[str, Any]) -> tuple[Any, ...] | str:
        id_ = obs.get("id")
        if not isinstance(id_, str) or not id_:
            return "no_id"
        subject = obs.get("subject")
        if not isinstance(subject, dict) or not subject.get("reference"):
            return "no_subject"
        patient = self.patients.get(reference_id(subject["reference"]) or "")
        if patient is None:
            return "unknown_patient"
        status = obs.get("status")
        if status not in USED_STATUSES:
            return "withdrawn" if status in WITHDRAWN_STATUSES else "status_not_final"
        loinc = self._loinc(obs.get("code"))
        if loinc is None:
            return "unknown_code"
        quantity = obs.get("valueQuantity")
        value = quantity.get("value") if isinstance(quantity, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "no_value"
        assert isinstance(quantity, dict)
        if quantity.get("comparator"):
            return "comparator"
        when = effective(obs)
        if when is None:
            return "undated"
        if _PARTIAL.fullmatch(when):
            return "imprecise_date"
        unit = quantity_unit(quantity)
        if unit is None:
            return "no_unit"
        return (id_, patient, loinc, float(value), unit, when, self._lab(obs.get("performer")))

    def _loinc(self, code: Any) -> str | None:
        for coding in _codings(code):
            if coding.get("system") == LOINC and coding.get("code") in self.loincs:
                return str(coding["code"])
        return None

    def _lab(self, performers: Any) -> str | None:
        """The performing Organization's name (its id when the export has no name for it)."""
        for performer in performers if isinstance(performers, list) else ():
            if not isinstance(performer, dict):
                continue
            found = organization_id(performer.get("reference"))
            if found is not None:
                return self.labs.get(found, found)
        return None


def effective(obs: Mapping[str, Any]) -> str | None:
    """The effective time as written: effectiveDateTime, effectiveInstant, or a period's end,
    else its start (as `serving.fhir` takes it)."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if isinstance(obs.get(key), str):
            return str(obs[key])
    period = obs.get("effectivePeriod")
    if isinstance(period, dict):
        for key in ("end", "start"):
            if isinstance(period.get(key), str):
                return str(period[key])
    return None


def quantity_unit(quantity: Mapping[str, Any]) -> str | None:
    """The UCUM code when the system is UCUM or absent, else the unit text (`serving.fhir`)."""
    code = quantity.get("code")
    if code and quantity.get("system") in (None, UCUM):
        return str(code)
    unit = quantity.get("unit")
    return str(unit) if unit else None


# --- ServiceRequest, Condition, Patient ----------------------------------------------------------


def text(value: Any) -> str | None:
    """A FHIR primitive as text (None for a missing or non-string value)."""
    return value if isinstance(value, str) else None


def _codings(code: Any) -> list[Mapping[str, Any]]:
    codings = code.get("coding") if isinstance(code, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def coded_as(code: Any, concepts: Mapping[tuple[str, str], str]) -> str | None:
    """The value `concepts` gives the first coding (system, code) it lists, else None."""
    for coding in _codings(code):
        found = concepts.get((str(coding.get("system")), str(coding.get("code"))))
        if found is not None:
            return found
    return None


def icd10_code(code: Any) -> str | None:
    """The first ICD-10 coding's code (WHO, UK or CM edition)."""
    for coding in _codings(code):
        if coding.get("system") in ICD10_SYSTEMS and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def verification(condition: Mapping[str, Any]) -> str | None:
    """The Condition's verificationStatus code (confirmed, refuted, entered-in-error, ...)."""
    codings = _codings(condition.get("verificationStatus"))
    return text(codings[0].get("code")) if codings else None


def condition_date(condition: Mapping[str, Any]) -> str | None:
    """When the cancer was diagnosed: onsetDateTime, else onsetPeriod.start, else recordedDate."""
    period = condition.get("onsetPeriod")
    start = period.get("start") if isinstance(period, dict) else None
    for value in (condition.get("onsetDateTime"), start, condition.get("recordedDate")):
        if isinstance(value, str):
            return value
    return None


# --- dates --------------------------------------------------------------------------------------


def local_times(text: pd.Series, time_zone: str) -> pd.Series:
    """FHIR dateTimes (full dates or dates with a time) as naive local wall-clock times in
    `time_zone`: an aware time is converted (2019-03-31T23:30:00-05:00 is 05:30 on 1 April in
    London); a date alone is 00:00 of that day; a time written without a zone (not valid FHIR,
    but sent) is taken as local. NaT where the text is not a readable date."""
    text = text.astype("string")
    result = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    day_only = text.str.len() == 10
    result[day_only] = pd.to_datetime(text[day_only], format="%Y-%m-%d", errors="coerce")
    timed = ~day_only & text.notna()
    aware = timed & text.str.contains(r"(?:Z|[+-]\d{2}:\d{2})$", regex=True)
    if aware.any():
        moments = pd.to_datetime(text[aware], format="ISO8601", utc=True, errors="coerce")
        result[aware] = moments.dt.tz_convert(time_zone).dt.tz_localize(None)
    naive = timed & ~aware
    if naive.any():
        result[naive] = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
    return result


def date_spans(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The first and last day a FHIR `date` may mean: itself; 1 Jan-31 Dec of a year; the first
    and last day of a month (NaT for a missing or unreadable one). As `serving.fhir._span`."""
    parts = text.astype("string").str.extract(_DATE)
    year = pd.to_numeric(parts[0], errors="coerce")
    month = pd.to_numeric(parts[2], errors="coerce")
    day = pd.to_numeric(parts[4], errors="coerce")
    first = _days(year, month.fillna(1), day.fillna(1))
    last_month = month.fillna(12)
    last = _days(year, last_month, day.fillna(1))
    month_end = (last + pd.offsets.MonthEnd(0)).where(day.isna(), last)
    return first, month_end


def _days(year: pd.Series, month: pd.Series, day: pd.Series) -> pd.Series:
    frame = pd.DataFrame({"year": year, "month": month, "day": day})
    valid = frame.notna().all(axis=1).to_numpy()
    days = pd.Series(pd.NaT, index=year.index, dtype="datetime64[ns]")
    if valid.any():
        days[valid] = pd.to_datetime(frame[valid].astype("int64"), errors="coerce")
    return days


def is_partial(text: pd.Series) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for a `YYYY` or `YYYY-MM` value."""
    return text.astype("string").str.fullmatch(_PARTIAL.pattern).fillna(False).to_numpy(bool)
