"""FHIR R4B out: a RiskAssessment for a score, an OperationOutcome for issues, and the server's
CapabilityStatement. Each is built through `fhir.resources` so that what leaves is valid R4B.

Warnings travel with a RiskAssessment as a contained OperationOutcome (`id` "warnings"), referenced
from the RiskAssessment by the core `workflow-supportingInfo` extension: FHIR's dom-3 requires a
contained resource to be referenced, and `basis` must list only the Observations the model used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from models.validation import Issue

if TYPE_CHECKING:
    from models.predictor import Score

BAND_SYSTEM = "urn:cancer-triage:band"
ISSUE_SYSTEM = "urn:cancer-triage:issue"
REASON_SYSTEM = "urn:cancer-triage:observation-ignored"
SUPPORTING_INFO = "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo"
WARNINGS_ID = "warnings"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REASON = re.compile(r"^([a-z_]+): ")
_FHIRPATH = re.compile(r"^(Bundle|Patient|Observation)(\.[A-Za-z]+|\[\d+\])*$")


class Assessed(Protocol):
    """What a RiskAssessment cites (a `serving.fhir.FhirRequest`; a protocol, so the reader and
    the writers do not import each other)."""

    subject: str
    basis: list[str]


def risk_assessment(
    score: Score,
    request: Assessed,
    *,
    model_name: str,
    model_version: str,
    outcome: str,
    request_id: str,
    warnings: Sequence[Issue] = (),
) -> dict[str, Any]:
    """A RiskAssessment for a scored patient, as FHIR JSON (warnings contained and referenced).

    Raises ValueError for a request id that is not a FHIR id (the service checks ids at its edge;
    this is the last guard, before anything is sent)."""
    if not FHIR_ID.match(request_id):
        raise ValueError("request id must match [A-Za-z0-9-.]{1,64} to be a FHIR id")
    if score.probability is None or score.band is None:
        raise ValueError("only a scored patient has a RiskAssessment")
    notes = [{"text": d.text} for d in score.drivers]
    if score.recommendation:
        notes.insert(0, {"text": score.recommendation})
    body: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": request_id,
        "status": "final",
        "subject": {"reference": request.subject},
        "occurrenceDateTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": {"text": f"cancer-triage model {model_name} version {model_version}"},
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
    }
    if request.basis:
        body["basis"] = [{"reference": ref} for ref in request.basis]
    if notes:
        body["note"] = notes
    if warnings:
        body["contained"] = [{**operation_outcome(warnings), "id": WARNINGS_ID}]
        body["extension"] = [
            {"url": SUPPORTING_INFO, "valueReference": {"reference": f"#{WARNINGS_ID}"}}
        ]
    resource = RiskAssessment.model_validate(body)
    out: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    out["prediction"][0]["probabilityDecimal"] = score.probability  # full precision
    return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome listing coded issues: our code (and, for an ignored Observation, its
    reason) in `details.coding`, the field as a FHIRPath `expression` when it is one, otherwise
    in `diagnostics` (an Observation's reference, an analyte code)."""
    entries = [_issue(issue) for issue in issues] or [
        {"severity": "error", "code": "invalid", "details": {"text": "the request was refused"}}
    ]
    resource = OperationOutcome.model_validate(
        {"resourceType": "OperationOutcome", "issue": entries}
    )
    result: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    return result


def _issue(issue: Issue) -> dict[str, Any]:
    coding = [{"system": ISSUE_SYSTEM, "code": issue.code}]
    reason = _REASON.match(issue.message) if issue.code == "observation_ignored" else None
    if reason:
        coding.append({"system": REASON_SYSTEM, "code": reason.group(1)})
    entry: dict[str, Any] = {
        "severity": issue.severity,
        "code": "invalid" if issue.severity == "error" else "informational",
        "details": {"coding": coding, "text": issue.message},
    }
    if _FHIRPATH.match(issue.field):
        entry["expression"] = [issue.field]
    elif issue.field:
        entry["diagnostics"] = f"about {issue.field}"
    return entry


def capability_statement(software_version: str) -> dict[str, Any]:
    """What `GET /v1/fhir/metadata` answers: this server's one FHIR capability, honestly.

    It is not a FHIR REST server (no read or search of any resource): it offers one operation,
    described by a contained OperationDefinition. The operation is served at `POST
    /v1/fhir/score` (not at `[base]/$score`): a Bundle in, a RiskAssessment out."""
    operation = {
        "resourceType": "OperationDefinition",
        "id": "score",
        "name": "Score",
        "title": "Cancer triage risk from routine blood tests",
        "status": "active",
        "kind": "operation",
        "code": "score",
        "system": True,
        "type": False,
        "instance": False,
        "description": (
            "POST /v1/fhir/score with a Bundle (one Patient, LOINC-coded laboratory "
            "Observations) as the body; returns a RiskAssessment, or an OperationOutcome (422) "
            "when the patient cannot be scored. Query parameters: model, pathway, asOf "
            "(the reference date; default today). Only final/amended/corrected Observations of "
            "the Bundle's Patient, dated within the look-back window before asOf, are used."
        ),
        "parameter": [
            _parameter("bundle", "in", 1, "Bundle", "the patient and results (the POST body)"),
            _parameter("model", "in", 0, "string", "the model name (query parameter)"),
            _parameter("pathway", "in", 0, "string", "the referral pathway (query parameter)"),
            _parameter("asOf", "in", 0, "date", "the reference date (query parameter)"),
            _parameter("return", "out", 1, "RiskAssessment", "the score, band and drivers"),
        ],
    }
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "cancer-triage", "version": software_version},
        "implementation": {"description": "cancer-triage scoring service (FHIR interface)"},
        "fhirVersion": "4.3.0",
        "format": ["json"],
        "contained": [operation],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "No resource interactions. One operation, at POST /v1/fhir/score "
                    "(application/fhir+json), described by the contained OperationDefinition."
                ),
                "operation": [{"name": "score", "definition": "#score"}],
            }
        ],
    }
    resource = CapabilityStatement.model_validate(body)
    result: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    return result


def _parameter(name: str, use: str, low: int, kind: str, documentation: str) -> dict[str, Any]:
    return {
        "name": name,
        "use": use,
        "min": low,
        "max": "1",
        "type": kind,
        "documentation": documentation,
    }
