"""The JSON routes: /v1/score, /v1/score/batch and /v1/models.

Each scoring route works out its request id (the client's, checked at the edge, else a fresh one),
then lets the service answer it once (serving/service.py `TriageService.answer`): a score or a
refusal, audited, and stored against a client-chosen id so that a retry gets the same bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from serving.api import (
    ERRORS,
    ApiError,
    app,
    issues_out,
    json_bytes,
    json_response,
    validation_failure,
)
from serving.middleware import edge_ids
from serving.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    DriverOut,
    ErrorBody,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    ScoreRequest,
    ScoreResponse,
)
from serving.triage import Answer, Service, fingerprint, sample_date_issues

if TYPE_CHECKING:
    from models.predictor import Score
    from serving.audit import ShadowRecord
    from serving.release import Served
    from serving.triage import TriageService


def request_id_for(request: Request, in_body: str | None = None) -> tuple[str, bool]:
    """The request id and whether the client chose it (only then is it an idempotency key).

    `X-Request-Id`, `Idempotency-Key` and a body's `request_id` name the same thing: two that
    differ are refused (400 `conflicting_request_ids`) rather than one silently preferred."""
    ids = edge_ids(request.scope)
    given = {value for value in (in_body, ids.header_id, ids.idempotency_key) if value}
    if len(given) > 1:
        raise ApiError(400, "conflicting_request_ids", "X-Request-Id, Idempotency-Key and the "
                       "body's request_id differ; send one id per request")  # fmt: skip
    return (given.pop(), True) if given else (ids.request_id, False)


def json_failure(request_id: str) -> Callable[[ApiError], Answer]:
    """How a JSON route answers a failure: the error envelope with its status."""

    def answer(failure: ApiError) -> Answer:
        return Answer(failure.status, json_bytes(failure.body(request_id)))

    return answer


def score_response(served: Served, score: Score, request_id: str) -> ScoreResponse:
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
        warnings=issues_out([i for i in score.issues if i.severity == "warning"]),
    )


def record_of(patient: ScoreRequest) -> dict[str, Any]:
    """What the predictor scores: `{"age", "sex", "analytes": {code: {"value", "unit"}}}`."""
    return {
        "age": patient.age,
        "sex": patient.sex,
        "analytes": {k: {"value": v.value, "unit": v.unit} for k, v in patient.analytes.items()},
    }


def audited_request(patient: ScoreRequest, pathway: str | None) -> dict[str, Any]:
    """The request as audited: the record as sent (units as sent) and everything that chose the
    model and pathway, so that `predictor.score(request["record"], pathway=request["pathway"])`
    gives the same answer again. The patient reference is left out (the row holds its pseudonym).
    """
    return {
        "record": record_of(patient),
        "pathway": pathway,
        "model": patient.model,
        "requested_pathway": patient.pathway,
        "sample_date": patient.sample_date.isoformat() if patient.sample_date else None,
    }


def _score_patient(
    service: TriageService, patient: ScoreRequest
) -> tuple[Served | None, str | None, Score | ApiError, list[ShadowRecord]]:
    """Route and score one patient: the served model, the pathway, its score or refusal, and
    the shadow rows for the record (once the champion's predictor has read it)."""
    served = pathway = None
    shadows: list[ShadowRecord] = []
    try:
        served, pathway = service.choose(patient.model, patient.pathway)
        lookback = served.predictor.spec.features.lookback_days
        if issues := sample_date_issues(patient.sample_date, lookback):
            raise service.refusal(served, issues)
        record = record_of(patient)
        score = served.predictor.score(record, pathway=pathway)
        shadows = service.score_shadows(served, patient.model, record, pathway)
        if not score.eligible:
            raise service.refusal(served, score.issues)
    except ApiError as failure:
        return served, pathway, failure, shadows
    return served, pathway, score, shadows


@app.post("/score", response_model=ScoreResponse, responses=ERRORS)
async def score(service: Service, body: ScoreRequest, request: Request) -> Response:
    """Score one patient: probability, band, recommendation and exact explanation."""
    request_id, keyed = request_id_for(request, body.request_id)

    error = json_failure(request_id)

    def work() -> Answer:
        served, pathway, result, shadows = _score_patient(service, body)
        audit: dict[str, Any] = {
            "request_id": request_id,
            "item": 0,
            "endpoint": "score",
            "request": audited_request(body, pathway),
            "reference": body.patient_reference,
            "shadows": shadows,
        }
        if isinstance(result, ApiError):
            answer = error(result)
            if answer.final:
                answer.records = [service.refused_record(served, result, **audit,
                                                         response=answer.body)]  # fmt: skip
            return answer
        assert served is not None
        body_bytes = json_bytes(score_response(served, result, request_id))
        record = service.scored_record(served, result, **audit, response=body_bytes)
        return Answer(200, body_bytes, records=[record], scored=[(served, result)])

    return await service.answer(
        request_id=request_id, keyed=keyed,
        fingerprint=fingerprint("score", lambda: body.model_dump(mode="json")),
        work=work, error=error,
    )  # fmt: skip


@app.post("/score/batch", response_model=BatchResponse, responses=ERRORS)
async def score_batch(service: Service, body: BatchRequest, request: Request) -> Response:
    """Score several patients; each is validated, scored or refused on its own."""
    request_id, keyed = request_id_for(request)

    error = json_failure(request_id)

    def work() -> Answer:
        limit = service.config.max_batch
        if len(body.patients) > limit:
            return error(ApiError(422, "batch_too_large", f"at most {limit} patients"))
        items: list[BatchItem] = []
        answer = Answer(200, b"")
        pending = []  # (index, patient, served, pathway, score or refusal, shadow rows)
        for index, raw in enumerate(body.patients):
            try:
                patient = ScoreRequest.model_validate(raw)
            except ValidationError as invalid:
                failure = validation_failure(invalid.errors())
                items.append(BatchItem(index=index, status="refused", error=ErrorBody(
                    code=failure.code, message=failure.message,
                    issues=issues_out(failure.issues))))  # fmt: skip
                continue
            served, pathway, result, shadows = _score_patient(service, patient)
            if isinstance(result, ApiError) and result.status == 503:
                return error(result)
            pending.append((index, patient, served, pathway, result, shadows))
        for index, patient, served, pathway, result, shadows in pending:
            audit: dict[str, Any] = {
                "request_id": request_id,
                "item": index,
                "endpoint": "score/batch",
                "request": audited_request(patient, pathway),
                "reference": patient.patient_reference,
                "item_request_id": patient.request_id,
                "shadows": shadows,
            }
            if isinstance(result, ApiError):
                failure_body = ErrorBody(code=result.code, message=result.message,
                                         issues=issues_out(result.issues))  # fmt: skip
                items.append(BatchItem(index=index, status="refused", error=failure_body))
                record = service.refused_record(served, result, **audit,
                                                response=json_bytes(failure_body))  # fmt: skip
            else:
                assert served is not None
                out = score_response(served, result, patient.request_id or request_id)
                items.append(BatchItem(index=index, status="scored", result=out))
                record = service.scored_record(served, result, **audit,
                                               response=out.model_dump_json().encode())  # fmt: skip
                answer.scored.append((served, result))
            answer.records.append(record)
        items.sort(key=lambda item: item.index)
        answer.body = json_bytes(BatchResponse(request_id=request_id, results=items))
        return answer

    return await service.answer(
        request_id=request_id, keyed=keyed,
        fingerprint=fingerprint("score/batch", lambda: body.model_dump(mode="json")),
        work=work, error=error,
    )  # fmt: skip


@app.get("/models", response_model=ModelsResponse, responses=ERRORS)
async def models(service: Service) -> Response:
    """Discovery: each served model's inputs (required or not), units, limits, thresholds,
    version, look-back window and intended use."""
    try:
        release = service.require_ready()
    except ApiError as failure:
        return json_response(failure.body(uuid.uuid4().hex), failure.status)
    return json_response(
        ModelsResponse(
            models=[
                ModelInfo(version=s.version, run_id=s.run_id, **s.predictor.describe())
                for s in release.champions.values()
            ]
        )
    )
