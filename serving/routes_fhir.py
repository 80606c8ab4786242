"""Where EHRs plug in: the FHIR route, its CapabilityStatement, CDS Hooks and the result page.

`POST /v1/fhir/score` takes a Bundle as EHRs send it and applies the same as-of rules as replay
(serving/fhir.py): the bundle's own Patient only, results dated on or before the reference date
(`asOf`, else today) and inside the model's look-back window, final results only, comparators
never read as numbers; every Observation left out is a coded warning. Errors are always an
OperationOutcome. CDS Hooks 2.0 services score the prefetched Patient and Observations the same
way (never calling the EHR's FHIR server), and `GET /v1/result/{id}` renders a stored score as a
self-contained page an EHR can show in an iframe.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from models.validation import Issue
from serving.api import ERRORS, ApiError, app, json_bytes, package_version
from serving.cds_hooks import (
    HookProblem,
    cards_for_problem,
    cards_for_score,
    discovery,
    parse_hook_request,
    problem_for_refusal,
)
from serving.fhir import (
    FhirError,
    FhirRequest,
    capability_statement,
    operation_outcome,
    parse_bundle,
    risk_assessment,
)
from serving.result_page import CSP, render_stored
from serving.routes import json_failure, request_id_for, score_response
from serving.schemas import ErrorResponse, FhirBundleBody
from serving.triage import CLOCK_SLACK, Answer, Service, fingerprint

if TYPE_CHECKING:
    from models.predictor import Score
    from serving.audit import ShadowRecord
    from serving.release import Served
    from serving.triage import TriageService

FHIR_JSON = "application/fhir+json"
AS_OF = "reference date: results after it are not used (default: today, UTC)"
ModelPin = Annotated[
    str | None, Query(max_length=64, description="NAME, NAME/VERSION or NAME@ALIAS")
]
OUTCOME_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                   "issue": {"type": "array", "items": {"type": "object"}}},
}  # fmt: skip
_FHIR = {FHIR_JSON: {"schema": OUTCOME_SCHEMA}}
FHIR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{s: {"description": e["description"], "content": _FHIR} for s, e in ERRORS.items()},
    200: {
        "description": "a FHIR R4B RiskAssessment",
        "content": {FHIR_JSON: {"schema": {"type": "object"}}},
    },
}


def outcome_bytes(issues: list[Issue] | tuple[Issue, ...]) -> bytes:
    return json.dumps(operation_outcome(list(issues))).encode()


def fhir_failure(failure: ApiError) -> Answer:
    return Answer(failure.status, outcome_bytes(failure.fhir_issues()), FHIR_JSON)


def score_bundle(
    service: TriageService,
    data: Any,
    *,
    model: str | None,
    pathway: str | None,
    as_of: date | None,
) -> tuple[Served | None, str | None, FhirRequest | None, Score | ApiError, list[ShadowRecord]]:
    """Route, read and score a Bundle: the model, the pathway, what was read and the score, or
    the refusal (422 `ineligible` with every issue, the ignored Observations' warnings too), and
    the shadow rows for the record (once the champion's predictor has read it)."""
    served: Served | None = None
    parsed: FhirRequest | None = None
    resolved = None
    shadows: list[ShadowRecord] = []
    try:
        today = datetime.now(UTC).date()
        if as_of is not None and as_of > today + CLOCK_SLACK:
            raise ApiError(422, "ineligible", "the reference date is in the future",
                           [Issue("error", "future_as_of", "asOf",
                                  f"asOf {as_of} is after today ({today})")])  # fmt: skip
        served, resolved = service.choose(model, pathway)
        spec = served.predictor.spec
        try:
            parsed = parse_bundle(data, served.predictor.catalogue, as_of=as_of,
                                  lookback_days=spec.features.lookback_days)  # fmt: skip
        except FhirError as error:
            raise service.refusal(served, error.issues) from None
        score = served.predictor.score(parsed.record, pathway=resolved)
        shadows = service.score_shadows(served, model, parsed.record, resolved)
        if not score.eligible:
            raise service.refusal(served, [*score.issues, *parsed.warnings])
    except ApiError as failure:
        return served, resolved, parsed, failure, shadows
    return served, resolved, parsed, score, shadows


def audited_fhir_request(
    parsed: FhirRequest | None, model: str | None, pathway: str | None, resolved: str | None,
    as_of: date | None,
) -> dict[str, Any]:  # fmt: skip
    """What was read from the Bundle (no identifiers: the subject only as the row's pseudonym)."""
    return {
        "record": parsed.record if parsed else None,
        "pathway": resolved,
        "model": model,
        "requested_pathway": pathway,
        "as_of": (parsed.as_of if parsed else as_of or datetime.now(UTC).date()).isoformat(),
        "basis": parsed.basis if parsed else [],
        "ignored": parsed.ignored if parsed else {},
    }


@app.post("/fhir/score", responses=FHIR_RESPONSES)
async def fhir_score(
    service: Service,
    request: Request,
    bundle: FhirBundleBody,
    model: ModelPin = None,
    pathway: Annotated[str | None, Query(max_length=32)] = None,
    as_of: Annotated[date | None, Query(alias="asOf", description=AS_OF)] = None,
) -> Response:
    """FHIR R4B Bundle in (Patient + LOINC-coded Observations), RiskAssessment out
    (OperationOutcome on error)."""
    request_id, keyed = request_id_for(request)
    data = bundle
    query = {"model": model, "pathway": pathway, "asOf": as_of}

    def work() -> Answer:
        served, resolved, parsed, result, shadows = score_bundle(
            service, data, model=model, pathway=pathway, as_of=as_of
        )
        audit: dict[str, Any] = {
            "request_id": request_id,
            "item": 0,
            "endpoint": "fhir/score",
            "request": audited_fhir_request(parsed, model, pathway, resolved, as_of),
            "reference": parsed.subject if parsed else None,
            "shadows": shadows,
        }
        if isinstance(result, ApiError):
            answer = fhir_failure(result)
            if answer.final:
                answer.records = [service.refused_record(served, result, **audit,
                                                         response=answer.body)]  # fmt: skip
            return answer
        assert served is not None and parsed is not None
        warnings = [*parsed.warnings, *(i for i in result.issues if i.severity == "warning")]
        assessment = risk_assessment(
            result, parsed, model_name=served.name, model_version=served.version,
            outcome=served.predictor.spec.outcome.definition, request_id=request_id,
            warnings=warnings,
        )  # fmt: skip
        body = json.dumps(assessment).encode()
        # The audit row keeps the JSON score (what the result page shows); the wire body, the
        # RiskAssessment, is what a retry gets back.
        score_json = json_bytes(score_response(served, result, request_id))
        record = service.scored_record(served, result, **audit, response=score_json)
        return Answer(200, body, FHIR_JSON, records=[record], scored=[(served, result)])

    return await service.answer(
        request_id=request_id, keyed=keyed,
        fingerprint=fingerprint("fhir/score", lambda: [data, query]), work=work, error=fhir_failure,
    )  # fmt: skip


@app.get(
    "/fhir/metadata",
    responses={
        **FHIR_RESPONSES,
        200: {"description": "the FHIR R4B CapabilityStatement",
              "content": {FHIR_JSON: {"schema": {"type": "object"}}}},
    },
)  # fmt: skip
async def fhir_metadata() -> Response:
    """The server's FHIR CapabilityStatement."""
    return JSONResponse(capability_statement(package_version()), media_type=FHIR_JSON)


HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}


@app.get(
    "/result/{request_id}",
    responses={**ERRORS, 200: {"description": "an HTML page", "content": HTML_PAGE}},
)
async def result_page(
    service: Service, request_id: str, item: int = Query(default=0, ge=0, le=10_000)
) -> Response:
    """One stored score as a small, self-contained HTML page (for an EHR iframe): band,
    probability in words, the drivers as a waterfall, warnings, the model and its intended use.
    No patient identifier; behind the same API key as the scoring routes."""
    service.require_ready()
    row = service.audit.find(request_id, item)
    if row is None or row["outcome"] != "scored":
        raise ApiError(404, "unknown_request", f"no stored score for request {request_id!r}, "
                       f"item {item}")  # fmt: skip
    models = [s.predictor.describe() | {"version": s.version} for s in service.released()]
    html = render_stored(row["response"], models, received_at=row["received_at"])
    return HTMLResponse(html, headers={"content-security-policy": CSP,
                                       "x-content-type-options": "nosniff"})  # fmt: skip


# --- CDS Hooks 2.0 ------------------------------------------------------------------------------


@app.get("/cds-services", responses=ERRORS)
async def cds_discovery(service: Service) -> Response:
    """CDS Hooks discovery: a patient-view and an order-sign service with their prefetch."""
    release = service.require_ready()
    models = [s.predictor.describe() for s in release.champions.values()]
    catalogue = next(iter(release.champions.values())).predictor.catalogue
    return JSONResponse(discovery(models, catalogue))


@app.post(
    "/cds-services/{service_id}",
    responses={**ERRORS, 412: {"model": ErrorResponse, "description": "a prefetch key missing"}},
)
async def cds_service(
    service: Service, service_id: str, request: Request, body: Annotated[Any, Body()] = None
) -> Response:
    """A CDS Hooks call: the prefetched Patient and Observations scored by the FHIR rules,
    answered as cards. `hookInstance` is the request id, so a retried hook gets the same cards.
    The `fhirServer` in a request is never called."""
    hook = parse_hook_request(body, service_id)
    if isinstance(hook, HookProblem):
        if hook.status != 200:
            raise ApiError(hook.status, hook.code, hook.message, list(hook.issues))
        return JSONResponse(cards_for_problem(hook))
    request_id = hook.hook_instance
    result_url = f"{str(request.url).rsplit('/cds-services/', 1)[0]}/result/{request_id}"

    def work() -> Answer:
        served, resolved, parsed, result, shadows = score_bundle(
            service, hook.bundle, model=None, pathway=hook.pathway, as_of=None
        )
        model = served.predictor.describe() | {"version": served.version} if served else None
        audit: dict[str, Any] = {
            "request_id": request_id,
            "item": 0,
            "endpoint": f"cds/{hook.hook}",
            "request": audited_fhir_request(parsed, None, hook.pathway, resolved, None),
            "reference": parsed.subject if parsed else None,
            "shadows": shadows,
        }
        if isinstance(result, ApiError):
            if result.status == 503:
                return json_failure(request_id)(result)
            problem = problem_for_refusal(result.body(request_id).error.model_dump(), service_id)
            body = json.dumps(cards_for_problem(problem, model, key=request_id)).encode()
            return Answer(200, body, records=[service.refused_record(
                served, result, **audit, response=body)])  # fmt: skip
        assert served is not None and model is not None
        score_json = json_bytes(score_response(served, result, request_id))
        cards = cards_for_score(json.loads(score_json), model, result_url, notes=hook.notes)
        record = service.scored_record(served, result, **audit, response=score_json)
        return Answer(200, json.dumps(cards).encode(), records=[record],
                      scored=[(served, result)])  # fmt: skip

    return await service.answer(
        request_id=request_id, keyed=True,
        fingerprint=fingerprint(f"cds/{service_id}", lambda: body),
        work=work, error=json_failure(request_id),
    )  # fmt: skip
