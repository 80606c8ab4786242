"""Request and response schemas of the JSON API (they are also the OpenAPI document)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AnalyteValue(_Strict):
    value: float = Field(description="the result as reported")
    unit: str | None = Field(
        default=None, max_length=32, description="UCUM unit as reported; canonical if absent"
    )


class ScoreRequest(_Strict):
    """One patient. Analytes are keyed by catalogue code (e.g. `haemoglobin`) or LOINC."""

    model: str | None = Field(
        default=None, max_length=64, description="model name; defaults from the pathway"
    )
    pathway: str | None = Field(default=None, max_length=32, description="urgent referral pathway")
    age: float = Field(description="years")
    sex: str = Field(max_length=16, description="male or female")
    patient_reference: str | None = Field(
        default=None, max_length=128, description="stored only as a keyed-HMAC pseudonym"
    )
    sample_date: date | None = None
    request_id: str | None = Field(default=None, pattern=IDENTIFIER)
    analytes: dict[str, AnalyteValue] = Field(max_length=100)


class BatchRequest(_Strict):
    patients: list[ScoreRequest] = Field(min_length=1)


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
    required: bool


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


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
