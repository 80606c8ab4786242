"""Request and response schemas of the JSON API (they are also the OpenAPI document).

Numbers are strict: a JSON `true` is not 1 (pydantic's lax mode would score it as 1 mg/L, or age 1),
while an integer is still a number. Every request id (`request_id` in a body or a batch item,
`X-Request-Id`, `Idempotency-Key`) follows the FHIR id rule, so that any id a client chooses can
also name a FHIR resource in the response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    Strict,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

# FHIR R4 `id`: at most 64 letters, digits, '-' and '.' (no '_' or ':', which FHIR refuses).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

# The `error.code` of every error answer, with its status and meaning (README and OpenAPI).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "the body is not JSON, or not UTF-8 text"),
    "invalid_request_id": (400, "a request id outside [A-Za-z0-9-.]{1,64} (FHIR id rule)"),
    "conflicting_request_ids": (400, "X-Request-Id, Idempotency-Key and request_id differ"),
    "unauthorised": (401, "missing or wrong API key"),
    "not_found": (404, "no such route"),
    "unknown_model": (404, "no such model is served"),
    "unknown_model_version": (404, "NAME/VERSION or NAME@ALIAS was not released on this server"),
    "unknown_request": (404, "no stored score for this request id (result page)"),
    "unknown_service": (404, "no such CDS Hooks service"),
    "invalid_prefetch": (400, "a CDS Hooks prefetch value of the wrong type or patient"),
    "prefetch_missing": (
        412,
        "a CDS Hooks prefetch key left out (the service never queries the EHR itself)",
    ),
    "method_not_allowed": (405, "the route exists with another method (see Allow)"),
    "request_in_progress": (409, "a request with this id is still being answered; retry later"),
    "body_too_large": (413, "the body exceeds TRIAGE_MAX_BODY_BYTES"),
    "unsupported_media_type": (415, "a body whose Content-Type is not JSON"),
    "invalid_request": (422, "the body does not match the schema: field-level issues"),
    "ineligible": (422, "the patient cannot be scored: coded, field-level reasons"),
    "batch_too_large": (422, "more patients than TRIAGE_MAX_BATCH"),
    "request_id_reused": (422, "a request id already used for a different request"),
    "missing_pathway": (422, "the model uses the referral pathway as an input: send one"),
    "invalid_pathway": (422, "an unknown referral pathway"),
    "invalid_fhir": (422, "the FHIR resource cannot be read (FHIR routes: OperationOutcome)"),
    "rate_limited": (429, "too many requests, or failed authentications; see Retry-After"),
    "not_ready": (503, "no champion model is loaded (the reason is in the message)"),
    "timeout": (504, "not answered within the server's deadline"),
}


def valid_request_id(value: object) -> bool:
    """Whether `value` may be used as a request id (the FHIR id rule, 1-64 characters)."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def _checked_request_id(value: str) -> str:
    if not valid_request_id(value):
        raise PydanticCustomError(
            "invalid_request_id", "a request id is 1-64 letters, digits, '-' or '.' (FHIR id rule)"
        )
    return value


# Checked by a validator (not `pattern=`) so that a bad id is coded `invalid_request_id`, the same
# code as the 400 for a bad header, rather than pydantic's generic `string_pattern_mismatch`.
RequestId = Annotated[
    str,
    AfterValidator(_checked_request_id),
    Field(json_schema_extra={"pattern": REQUEST_ID_PATTERN, "minLength": 1, "maxLength": 64}),
]


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date_text(value: object) -> object:
    """Only `YYYY-MM-DD` (lax pydantic also reads numbers as Unix times and midnight datetimes)."""
    if isinstance(value, date) or (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
        return value
    raise PydanticCustomError("date_type", "a date is a string YYYY-MM-DD")


Number = Annotated[float, Strict()]  # int or float; never a bool or a numeric string


@dataclass(frozen=True)
class DocumentedAs:
    """OpenAPI shows `model` for a value that is validated later, on its own (Annotated metadata).

    A batch's items are validated one by one by the route, so that one bad patient is refused
    alone instead of failing the batch; a FHIR body is read by the FHIR parser, which answers an
    OperationOutcome. The document still shows what a client should send.
    """

    model: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        model_schema = self.model.__pydantic_core_schema__
        ref = model_schema.get("ref")
        if not isinstance(ref, str):  # a model without a reference: inline it
            return handler(model_schema)
        # A definition reference, so the model appears once under components/schemas.
        return handler(
            core_schema.definitions_schema(
                core_schema.definition_reference_schema(ref), [model_schema]
            )
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AnalyteValue(_Strict):
    value: Number = Field(description="the result as reported (a number, never a boolean)")
    unit: str | None = Field(
        default=None, max_length=32, description="UCUM unit as reported; canonical if absent"
    )


class ScoreRequest(_Strict):
    """One patient. Analytes are keyed by catalogue code (e.g. `haemoglobin`) or LOINC."""

    model: str | None = Field(
        default=None, max_length=64, description="model name; defaults from the pathway"
    )
    pathway: str | None = Field(default=None, max_length=32, description="urgent referral pathway")
    age: Number = Field(description="years")
    sex: str = Field(max_length=16, description="male or female")
    patient_reference: str | None = Field(
        default=None, max_length=128, description="stored only as a keyed-HMAC pseudonym"
    )
    sample_date: Annotated[date, BeforeValidator(_date_text)] | None = Field(
        default=None, description="the day the blood was taken (YYYY-MM-DD)"
    )
    request_id: RequestId | None = None
    analytes: dict[str, AnalyteValue] = Field(max_length=100)


class BatchRequest(_Strict):
    patients: list[Annotated[Any, DocumentedAs(ScoreRequest)]] = Field(
        min_length=1, description="each validated, scored or refused on its own"
    )


class _FhirElement(BaseModel):
    """FHIR's JSON names (camelCase) by alias; any other element is allowed and passed on."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FhirResource(_FhirElement):
    resource_type: str = Field(
        alias="resourceType", description="Patient and Observation are read; others are ignored"
    )
    id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)


class FhirBundleEntry(_FhirElement):
    full_url: str | None = Field(
        default=None, alias="fullUrl", description="how the response refers to the resource"
    )
    resource: FhirResource


class FhirBundle(_FhirElement):
    """A FHIR R4 Bundle: one Patient and its laboratory Observations (LOINC, UCUM)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, title="Bundle")

    resource_type: Literal["Bundle"] = Field(alias="resourceType")
    type: Literal[
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    ]
    entry: list[FhirBundleEntry] = []


# The FHIR route's body parameter (`bundle: FhirBundleBody`, no default): any JSON, which the FHIR
# parser reads or refuses with an OperationOutcome, shown as a Bundle in the OpenAPI document.
FhirBundleBody = Annotated[
    Any,
    Body(
        media_type="application/fhir+json", description="a FHIR R4 Bundle: Patient + Observations"
    ),
    DocumentedAs(FhirBundle),
]


class ModelRef(BaseModel):
    name: str
    version: str
    run_id: str | None


class IssueOut(BaseModel):
    severity: Literal["error", "warning"]
    code: str
    field: str
    message: str


class DriverOut(BaseModel):
    feature: str
    contribution: float
    text: str
    value: float | str | None = None
    unit: str | None = None
    reference_interval: str | None = None


class ScoreResponse(BaseModel):
    request_id: str
    model: ModelRef
    probability: float = Field(ge=0, le=1)
    band: Literal["green", "amber", "red"]
    recommendation: str
    thresholds: dict[str, float | None]
    base: float = Field(description="calibrated log-odds before any feature")
    contributions: dict[str, float] = Field(description="per feature, calibrated log-odds")
    contributions_by_panel: dict[str, float]
    log_odds: float = Field(description="base + sum(contributions) = logit(probability)")
    drivers: list[DriverOut]
    warnings: list[IssueOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    issues: list[IssueOut] = []


class ErrorResponse(BaseModel):
    request_id: str
    error: ErrorBody


class BatchItem(BaseModel):
    index: int
    status: Literal["scored", "refused"]
    result: ScoreResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    request_id: str
    results: list[BatchItem]


class ModelInput(BaseModel):
    code: str
    name: str
    loinc: str
    unit: str
    accepted_units: list[str]
    limits: dict[str, float | None]
    panel: str
    required: bool = Field(description="refused (`missing_required_analyte`) when absent and "
                           "not derivable")  # fmt: skip
    required_by: Literal["eligibility", "training"] | None = Field(
        description="the spec's eligibility, or a missing rate under `required_below_missing` "
        "in the model's training rows"
    )
    training_missing_rate: float | None = Field(description="share missing in training rows")
    derivable_from: list[str] | None = Field(
        description="inputs from which it is derived when absent (warning `analyte_derived`)"
    )
    derivations: list[dict[str, object]]


class ModelOutcome(BaseModel):
    name: str
    definition: str
    horizon_days: int | None


class ModelInfo(BaseModel):
    name: str
    title: str
    version: str
    run_id: str | None
    intended_use: str
    population: str
    not_for: list[str]
    features: list[str]
    inputs: list[ModelInput]
    eligibility: dict[str, object]
    thresholds: dict[str, float | None]
    family: str = "lightgbm"
    calibration: dict[str, object]  # slope, intercept, shift; case-control models: their strata
    catalogue_version: str
    required_inputs: list[str]
    panels: dict[str, dict[str, object]]
    required_below_missing: float
    training_missing_known: bool
    lookback_days: int = Field(description="FHIR results older than this are not used")
    outcome: ModelOutcome


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


# FHIR IssueType of each error code on the FHIR routes; anything else is "processing".
FHIR_ISSUE_TYPES = {
    "malformed_json": "structure",
    "invalid_request_id": "value",
    "unauthorised": "login",
    "not_found": "not-found",
    "method_not_allowed": "not-supported",
    "body_too_large": "too-long",
    "unsupported_media_type": "not-supported",
    "rate_limited": "throttled",
    "timeout": "timeout",
}


def error_payload(
    request_id: str, code: str, message: str, issues: Sequence[IssueOut] = (), *, fhir: bool = False
) -> bytes:
    """The error body: `ErrorResponse`, or on FHIR routes an OperationOutcome with the same codes
    (its `id` is the request id, which the FHIR id rule makes a valid FHIR id)."""
    if not fhir:
        error = ErrorBody(code=code, message=message, issues=list(issues))
        return ErrorResponse(request_id=request_id, error=error).model_dump_json().encode()
    entries = [
        {
            "severity": issue.severity,
            "code": "invalid" if issue.severity == "error" else "informational",
            "details": {"coding": [{"code": issue.code}], "text": issue.message},
            "expression": [issue.field],
        }
        for issue in issues
    ]
    main = {
        "severity": "error",
        "code": FHIR_ISSUE_TYPES.get(code, "processing"),
        "details": {"coding": [{"code": code}], "text": message},
    }
    outcome = {"resourceType": "OperationOutcome", "id": request_id, "issue": [main, *entries]}
    return json.dumps(outcome).encode()
