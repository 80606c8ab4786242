"""FHIR R4 in and out: a Bundle (Patient + LOINC-coded Observations) -> a RiskAssessment.

Age is taken at the date of the latest Observation (as of the sample, not of the request). When an
analyte is observed more than once, the latest observation is used, as in the cohort as-of
selection. Observations with a LOINC code the catalogue does not know, or without a LOINC code,
are left out and reported as warnings. Errors come back as an OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from pydantic import ValidationError

from models.analytes import Catalogue
from models.validation import Issue

if TYPE_CHECKING:
    from models.predictor import Score

LOINC = "http://loinc.org"
BAND_SYSTEM = "urn:cancer-triage:band"
IGNORED_STATUSES = frozenset({"entered-in-error", "cancelled"})
GENDERS = {"male": "male", "female": "female"}


class FhirError(ValueError):
    """A Bundle that cannot be read; `issues` say why, field by field."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(i.message for i in self.issues))


@dataclass
class FhirRequest:
    record: dict[str, Any]
    subject: str | None
    basis: list[str] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def _reference(entry: Any, resource: Any) -> str:
    if entry.fullUrl:
        return str(entry.fullUrl)
    return f"{resource.get_resource_type()}/{resource.id}"


def _day(value: date | datetime | None) -> date | None:
    if value is None:
        return None
    return value.date() if isinstance(value, datetime) else value


def parse_bundle(data: Mapping[str, Any], catalogue: Catalogue) -> FhirRequest:
    """The patient record inside a Bundle (raises FhirError when it cannot be read)."""
    try:
        bundle = Bundle.model_validate(dict(data))
    except ValidationError as error:
        raise FhirError(
            [
                Issue("error", "invalid_fhir", ".".join(map(str, e["loc"])) or "Bundle", e["msg"])
                for e in error.errors()[:20]
            ]
        ) from None
    patients, observations = [], []
    for entry in bundle.entry or []:
        resource = entry.resource
        if isinstance(resource, Patient):
            patients.append((entry, resource))
        elif isinstance(resource, Observation):
            observations.append((entry, resource))
    if len(patients) != 1:
        raise FhirError(
            [Issue("error", "invalid_fhir", "Patient", f"need one Patient, found {len(patients)}")]
        )
    patient_entry, patient = patients[0]
    latest: dict[str, tuple[date | None, str, dict[str, Any]]] = {}
    warnings: list[Issue] = []
    for entry, obs in observations:
        ref = _reference(entry, obs)
        if obs.status in IGNORED_STATUSES:
            continue
        codes = [c.code for c in (obs.code.coding or []) if c.system == LOINC and c.code]
        analyte = next((a for a in (catalogue.resolve(str(c)) for c in codes) if a), None)
        if analyte is None or obs.valueQuantity is None or obs.valueQuantity.value is None:
            warnings.append(
                Issue(
                    "warning",
                    "observation_ignored",
                    ref,
                    f"{ref}: no known LOINC code with a quantity; not used",
                )
            )
            continue
        quantity = obs.valueQuantity
        assert quantity.value is not None
        when = _day(obs.effectiveDateTime)
        value = {"value": float(quantity.value), "unit": quantity.code or quantity.unit}
        previous = latest.get(analyte.code)
        if previous is None or (when or date.min) >= (previous[0] or date.min):
            latest[analyte.code] = (when, ref, value)
    dates = [d for d, _, _ in latest.values() if d is not None]
    as_of = max(dates) if dates else datetime.now(UTC).date()
    birth = _day(patient.birthDate)
    # Completed years, as the cohorts a model is trained on count age (not days / 365.25: a
    # spline model's risk moves with a fraction of a year that no JSON client sends).
    age = None if birth is None else completed_years(birth, as_of)
    record = {
        "age": age,
        "sex": GENDERS.get(str(patient.gender), str(patient.gender)),
        "analytes": {code: value for code, (_, _, value) in latest.items()},
    }
    subject = _reference(patient_entry, patient)
    return FhirRequest(record, subject, [ref for _, ref, _ in latest.values()], warnings)


def completed_years(birth: date, on: date) -> int:
    """Age in whole years on a date (the birthday itself counts)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def risk_assessment(
    score: Score,
    request: FhirRequest,
    *,
    model_name: str,
    model_version: str,
    outcome: str,
    request_id: str,
) -> dict[str, Any]:
    """A RiskAssessment for a scored patient, as FHIR JSON."""
    assert score.probability is not None and score.band is not None
    notes = [{"text": d.text} for d in score.drivers]
    if score.recommendation:
        notes.insert(0, {"text": score.recommendation})
    resource = RiskAssessment.model_validate(
        {
            "resourceType": "RiskAssessment",
            "id": request_id,
            "status": "final",
            "subject": {"reference": request.subject},
            "occurrenceDateTime": datetime.now(UTC).isoformat(timespec="seconds"),
            "method": {"text": f"cancer-triage model {model_name} version {model_version}"},
            "basis": [{"reference": ref} for ref in request.basis],
            "prediction": [
                {
                    "outcome": {"text": outcome},
                    "probabilityDecimal": round(score.probability, 6),
                    "qualitativeRisk": {
                        "coding": [{"system": BAND_SYSTEM, "code": score.band}],
                        "text": score.band,
                    },
                }
            ],
            "note": notes,
        }
    )
    out: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    out["prediction"][0]["probabilityDecimal"] = score.probability  # full precision
    return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome listing coded, field-level issues."""
    resource = OperationOutcome.model_validate(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": issue.severity,
                    "code": "invalid" if issue.severity == "error" else "informational",
                    "details": {"coding": [{"code": issue.code}], "text": issue.message},
                    "expression": [issue.field],
                }
                for issue in issues
            ]
            or [{"severity": "error", "code": "invalid"}],
        }
    )
    result: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    return result
