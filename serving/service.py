"""The BentoML triage service: it adapts HTTP to the predictors and nothing more.

Routes live in a FastAPI app mounted at /v1 (so the OpenAPI document at /docs.json describes every
status code); BentoML adds /livez, /readyz, /metrics and /docs.json. Each worker loads the champion
predictors from the `triage-champions` model in the BentoML store (text boosters + JSON, verified
by checksum), with one LightGBM thread. Every score is written to the audit trail before the
response leaves. Thresholds, bands and wording come from the predictor, and which model answers
from `models.routing`, never from here.
"""

from __future__ import annotations

import gc
import logging
import uuid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
import prometheus_client
from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from models.routing import RoutingError, route
from models.spec import ModelSpec
from models.validation import Issue
from serving.audit import AuditRecord, AuditStore, pseudonymise
from serving.config import ServingConfig
from serving.fhir import FhirError, operation_outcome, parse_bundle, risk_assessment
from serving.middleware import (
    ApiKeyAuth,
    BodySizeLimit,
    RateLimit,
    current_config,
    install_request_deadline,
)
from serving.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    DriverOut,
    ErrorBody,
    ErrorResponse,
    IssueOut,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    ScoreRequest,
    ScoreResponse,
)

if TYPE_CHECKING:  # LightGBM (and, through it, scikit-learn) loads in the workers only
    from models.predictor import Score
    from serving.release import Served

logger = logging.getLogger("triage.service")
install_request_deadline()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "malformed JSON"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "request body too large"),
        (422, "invalid or ineligible input: coded, field-level reasons"),
        (429, "rate limit exceeded"),
        (503, "not ready: no champion released (the reason is in the body)"),
    )
}

_FHIR = {"application/fhir+json": {"schema": {"type": "object"}}}
FHIR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"description": "a FHIR R4 RiskAssessment", "content": _FHIR},
    404: {"description": "unknown model (OperationOutcome)", "content": _FHIR},
    422: {
        "description": "invalid Bundle or ineligible patient: OperationOutcome (FHIR) or a "
        "schema error (JSON)",
        "content": {
            **_FHIR,
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}},
        },
    },
}

app = FastAPI(
    title="Cancer triage API",
    version="1",
    description="Calibrated probability of each model's outcome, triage band, recommendation and "
    "exact explanation per patient.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
# Outermost last: body size, then authentication, then the per-key rate limit.
app.add_middleware(RateLimit)
app.add_middleware(ApiKeyAuth)
app.add_middleware(BodySizeLimit)


class ApiError(Exception):
    """An error answered with a status code and a coded body."""

    def __init__(self, status: int, code: str, message: str, issues: list[Issue] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.issues = status, code, message, issues or []

    def body(self, request_id: str) -> ErrorResponse:
        return ErrorResponse(
            request_id=request_id,
            error=ErrorBody(code=self.code, message=self.message, issues=_issues(self.issues)),
        )


def _issues(issues: list[Issue] | tuple[Issue, ...]) -> list[IssueOut]:
    return [
        IssueOut(severity=i.severity, code=i.code, field=i.field, message=i.message) for i in issues
    ]


def _json(body: BaseModel, status: int = 200) -> Response:
    """A JSON response serialised by pydantic-core in one step (no intermediate dict)."""
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


def _request_id(given: str | None) -> str:
    return given or uuid.uuid4().hex


@app.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> Response:
    request_id = _request_id(request.headers.get("x-request-id"))
    return _json(error.body(request_id), error.status)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> Response:
    request_id = _request_id(request.headers.get("x-request-id"))
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        failure = ApiError(400, "malformed_json", "the request body is not valid JSON")
    else:
        issues = [
            Issue(
                "error",
                str(e.get("type", "invalid")),
                ".".join(map(str, e["loc"][1:])) or "body",
                str(e.get("msg", "invalid")),
            )
            for e in errors
        ]
        failure = ApiError(422, "invalid_request", "the request does not match the schema", issues)
    return _json(failure.body(request_id), failure.status)


@cache
def _metrics() -> dict[str, Any]:
    """Prometheus metrics, created once per worker on first use."""
    return {
        "scores": prometheus_client.Counter(
            name="triage_scores", documentation="scored patients", labelnames=["model", "band"]
        ),
        "warnings": prometheus_client.Counter(
            name="triage_warnings", documentation="warnings given", labelnames=["model", "code"]
        ),
        "refusals": prometheus_client.Counter(
            name="triage_refusals", documentation="refused patients", labelnames=["model", "code"]
        ),
        "probability": prometheus_client.Histogram(
            name="triage_probability",
            documentation="predicted probabilities",
            labelnames=["model"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
        ),
    }


class TriageService:
    """Cancer triage models: one worker per core, each holding every champion predictor."""

    def __init__(self) -> None:
        self.config: ServingConfig = current_config()
        self.audit = AuditStore(self.config.audit_url)
        self.served: dict[str, Served] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.not_ready_reason: str | None = None
        from serving.release import BUNDLE_NAME, load_release

        try:
            # Resolved here, not as a class-level BentoModel, so that a store without a release
            # still starts (and stays not ready, saying why); bentofile.yaml packs the bundle.
            folder = Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path)
        except bentoml.exceptions.NotFound as error:
            self.not_ready_reason = f"no champion models released ({error}); run `triage release`"
            logger.error("not ready: %s", self.not_ready_reason)
            return
        self.served = load_release(folder)  # raises ArtifactError on a tampered artifact
        self.specs = {name: served.predictor.spec for name, served in self.served.items()}
        logger.info("serving %s", ", ".join(f"{n} v{s.version}" for n, s in self.served.items()))
        # Everything loaded so far (libraries, predictors; ~230k objects) lives as long as the
        # worker: keep it out of the cyclic collector's full passes, each of which would stall a
        # request for ~0.2 s. (No gc.collect() first: it would add that 0.2 s to start-up.)
        gc.freeze()

    def __is_ready__(self) -> bool:
        return bool(self.served) and self.not_ready_reason is None

    def _require_ready(self) -> None:
        if not self.__is_ready__():
            raise ApiError(503, "not_ready", self.not_ready_reason or "no model is loaded")

    # --- helpers --------------------------------------------------------------------------------

    def _choose(self, model: str | None, pathway: str | None) -> tuple[Served, str | None]:
        """The served model for a request and the pathway to pass as context (`route`)."""
        self._require_ready()
        try:
            name, pathway = route(self.specs, model, pathway)
        except RoutingError as error:
            status = 404 if error.code == "unknown_model" else 422
            raise ApiError(status, error.code, error.message, list(error.issues)) from None
        return self.served[name], pathway

    def _score(self, body: ScoreRequest) -> tuple[Served, Score]:
        served, pathway = self._choose(body.model, body.pathway)
        record = {
            "age": body.age,
            "sex": body.sex,
            "analytes": {k: {"value": v.value, "unit": v.unit} for k, v in body.analytes.items()},
        }
        score = served.predictor.score(record, pathway=pathway)
        if not score.eligible:
            for issue in score.issues:
                if issue.severity == "error":
                    _metrics()["refusals"].labels(model=served.name, code=issue.code).inc()
            raise ApiError(422, "ineligible", "the record cannot be scored", list(score.issues))
        return served, score

    def _audit_record(
        self,
        served: Served,
        score: Score,
        *,
        request_id: str,
        item: int,
        endpoint: str,
        patient_reference: str | None,
    ) -> AuditRecord:
        assert score.probability is not None and score.band is not None and score.base is not None
        return AuditRecord.build(
            request_id=request_id,
            item=item,
            endpoint=endpoint,
            model_name=served.name,
            model_version=served.version,
            run_id=served.run_id,
            patient_pseudonym=pseudonymise(
                patient_reference, self.config.hmac_key.get_secret_value()
            ),
            inputs=score.values,
            warnings=[i.code for i in score.issues],
            probability=score.probability,
            band=score.band,
            base=score.base,
            contributions=score.contributions,
        )

    def _commit(
        self, served: Served, score: Score, request_id: str, endpoint: str, reference: str | None
    ) -> None:
        """Audit one scored patient (committed before the response leaves), then count it."""
        record = self._audit_record(
            served, score, request_id=request_id, item=0, endpoint=endpoint,
            patient_reference=reference,
        )  # fmt: skip
        self.audit.write([record])
        self._observe(served, score)

    def _observe(self, served: Served, score: Score) -> None:
        metrics = _metrics()
        metrics["scores"].labels(model=served.name, band=score.band).inc()
        metrics["probability"].labels(model=served.name).observe(score.probability)
        for issue in score.issues:
            metrics["warnings"].labels(model=served.name, code=issue.code).inc()

    def _response(self, served: Served, score: Score, request_id: str) -> ScoreResponse:
        assert score.probability is not None and score.band is not None and score.base is not None
        assert score.recommendation is not None
        return ScoreResponse(
            request_id=request_id,
            model=ModelRef(name=served.name, version=served.version, run_id=served.run_id),
            probability=score.probability,
            band=score.band,
            recommendation=score.recommendation,
            thresholds=served.predictor.thresholds.to_dict(),
            base=score.base,
            contributions=score.contributions,
            contributions_by_panel=score.groups,
            log_odds=score.base + sum(score.contributions.values()),
            drivers=[
                DriverOut(
                    feature=d.feature,
                    contribution=d.contribution,
                    text=d.text,
                    value=d.value,
                    unit=d.unit,
                    reference_interval=d.reference,
                )
                for d in score.drivers
            ],
            warnings=_issues([i for i in score.issues if i.severity == "warning"]),
        )


def _fhir_error(status: int, issues: list[Issue] | tuple[Issue, ...]) -> Response:
    return JSONResponse(
        operation_outcome(list(issues)), status_code=status, media_type="application/fhir+json"
    )


async def _current() -> TriageService:
    """The worker's service instance: an async dependency, so no thread hop per request."""
    return bentoml.get_current_service()


Service = Annotated[TriageService, Depends(_current)]


@app.post("/score", response_model=ScoreResponse, responses=ERRORS)
async def score(
    service: Service, body: ScoreRequest, x_request_id: str | None = Header(default=None)
) -> Response:
    """Score one patient: probability, band, recommendation and exact explanation."""
    request_id = body.request_id or _request_id(x_request_id)
    try:
        served, score = service._score(body)
    except ApiError as error:
        return _json(error.body(request_id), error.status)
    service._commit(served, score, request_id, "score", body.patient_reference)
    return _json(service._response(served, score, request_id))


@app.post("/score/batch", response_model=BatchResponse, responses=ERRORS)
async def score_batch(
    service: Service, body: BatchRequest, x_request_id: str | None = Header(default=None)
) -> Response:
    """Score several patients; each is scored or refused on its own."""
    request_id = _request_id(x_request_id)
    if len(body.patients) > service.config.max_batch:
        error = ApiError(
            422,
            "batch_too_large",
            f"at most {service.config.max_batch} patients",
            [
                Issue(
                    "error",
                    "batch_too_large",
                    "patients",
                    f"{len(body.patients)} > {service.config.max_batch}",
                )
            ],
        )
        return _json(error.body(request_id), 422)
    items, records, scored = [], [], []
    for index, patient in enumerate(body.patients):
        try:
            served, score = service._score(patient)
        except ApiError as error:
            items.append(
                BatchItem(
                    index=index,
                    status="refused",
                    error=ErrorBody(
                        code=error.code, message=error.message, issues=_issues(error.issues)
                    ),
                )
            )
            continue
        item_id = patient.request_id or f"{request_id}.{index}"
        records.append(
            service._audit_record(
                served,
                score,
                request_id=request_id,
                item=index,
                endpoint="score/batch",
                patient_reference=patient.patient_reference,
            )
        )
        scored.append((served, score))
        items.append(
            BatchItem(
                index=index, status="scored", result=service._response(served, score, item_id)
            )
        )
    service.audit.write(records)
    for served, score in scored:
        service._observe(served, score)
    return _json(BatchResponse(request_id=request_id, results=items))


@app.post("/fhir/score", responses=FHIR_RESPONSES)
async def fhir_score(
    service: Service,
    bundle: dict[str, Any] = Body(description="a FHIR R4 Bundle: Patient + Observations"),  # noqa: B008
    model: str | None = Query(default=None, max_length=64),
    pathway: str | None = Query(default=None, max_length=32),
    x_request_id: str | None = Header(default=None),
) -> Response:
    """FHIR R4 Bundle in, RiskAssessment out (OperationOutcome on error)."""
    request_id = _request_id(x_request_id)
    try:
        served, pathway = service._choose(model, pathway)
        request = parse_bundle(bundle, served.predictor.catalogue)
        score = served.predictor.score(request.record, pathway=pathway)
        if not score.eligible:
            raise FhirError(score.issues)
    except ApiError as error:
        return _fhir_error(
            error.status, error.issues or [Issue("error", error.code, "model", error.message)]
        )
    except FhirError as error:
        return _fhir_error(422, error.issues)
    service._commit(served, score, request_id, "fhir/score", request.subject)
    score_warnings = [i for i in score.issues if i.severity == "warning"]
    assessment = risk_assessment(
        score,
        request,
        model_name=served.name,
        model_version=served.version,
        outcome=served.predictor.spec.outcome.definition,
        request_id=request_id,
    )
    if request.warnings or score_warnings:
        assessment["contained"] = [operation_outcome([*request.warnings, *score_warnings])]
    return JSONResponse(assessment, media_type="application/fhir+json")


@app.get("/models", response_model=ModelsResponse, responses=ERRORS)
async def models(service: Service) -> ModelsResponse | Response:
    """Discovery: each served model's inputs, units, limits, thresholds, version, use."""
    if not service.__is_ready__():
        error = ApiError(503, "not_ready", service.not_ready_reason or "no model is loaded")
        return _json(error.body(uuid.uuid4().hex), 503)
    return ModelsResponse(
        models=[
            ModelInfo(version=s.version, run_id=s.run_id, **s.predictor.describe())
            for s in service.served.values()
        ]
    )


Triage = bentoml.service(
    name="triage",
    workers="cpu_count",
    threads=1,
    envs=[
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
    ],
    traffic={"timeout": 30},
)(bentoml.asgi_app(app, path="/v1")(TriageService))
