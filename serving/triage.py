"""The triage service class: the released models, routing, the audit trail and idempotency.

Routes live in a FastAPI app mounted at /v1 (serving/api.py; the routes in serving/routes.py and
serving/routes_fhir.py), so the OpenAPI document at /docs.json describes every status code;
BentoML adds /livez, /readyz, /metrics and /docs.json. Each worker loads the released predictors
(champions, and any version released for pinning) from the `triage-champions` model in the BentoML
store (text boosters + JSON, verified by checksum), with one LightGBM thread.

Every answer to a scoring request, a score or a refusal, is written to the audit trail (and, for a
request id the client chose, stored against that id) before the response leaves; a request id the
client repeats is answered from the store. Shadow versions (`TRIAGE_SHADOW`, serving/shadow.py)
score the records their champion answers, into the audit trail only. Thresholds, bands and
wording come from the predictor, and which model answers from `models.routing`, never from here.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
import prometheus_client
from fastapi import Depends
from fastapi.responses import Response

from models.routing import RoutingError, route
from models.spec import ModelSpec
from models.validation import Issue
from serving.api import ApiError
from serving.audit import AuditRecord, AuditStore, ShadowRecord, pseudonymise
from serving.config import ServingConfig
from serving.idempotency import CommitConflictError
from serving.middleware import current_config
from serving.shadow import ShadowConfigError, is_pinned, resolve_shadows, shadow_record

if TYPE_CHECKING:  # LightGBM (and, through it, scikit-learn) loads in the workers only
    from models.predictor import Score
    from serving.release import Release, Served

logger = logging.getLogger("triage.service")

TRANSIENT = frozenset({503})  # answers a retry may improve on
# A sample taken "tomorrow" in UTC can be today where the clinic is (UTC+14 at the most).
CLOCK_SLACK = timedelta(days=1)


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
        "shadow_scores": prometheus_client.Counter(
            name="triage_shadow_scores",
            documentation="records scored by shadow versions (band: red/amber/green or refused)",
            labelnames=["model", "version", "band"],
        ),
    }


def fingerprint(endpoint: str, payload: Callable[[], Any]) -> Callable[[], str]:
    """The request's identity for idempotency, computed only for a client-chosen id: its parsed,
    canonical form (not its raw bytes, so key order and whitespace do not matter), with the
    endpoint and query parameters."""

    def digest() -> str:
        text = json.dumps([endpoint, payload()], sort_keys=True, separators=(",", ":"),
                          default=str)  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()

    return digest


def sample_date_issues(sample_date: date | None, lookback_days: int) -> list[Issue]:
    """Refusals for a sample dated after today or before the model's look-back window."""
    if sample_date is None:
        return []
    today = datetime.now(UTC).date()
    if sample_date > today + CLOCK_SLACK:
        return [Issue("error", "future_sample_date", "sample_date",
                      f"the sample date {sample_date} is after today ({today})")]  # fmt: skip
    if sample_date < today - timedelta(days=lookback_days):
        return [Issue("error", "sample_outside_lookback", "sample_date",
                      f"the sample date {sample_date} is more than {lookback_days} days ago: "
                      "results that old are not used")]  # fmt: skip
    return []


@dataclass
class Answer:
    """What a request is answered with, and the audit rows that must be durable first."""

    status: int
    body: bytes
    media_type: str = "application/json"
    records: list[AuditRecord] = field(default_factory=list)
    scored: list[tuple[Served, Score]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        """False for a transient answer (503, not ready): never audited, stored or replayed, so
        a retry once the models are released is scored."""
        return self.status not in TRANSIENT


class TriageService:
    """Cancer triage models: one worker per core, each holding every released predictor."""

    def __init__(self) -> None:
        self.config: ServingConfig = current_config()
        self.audit = AuditStore(self.config.audit_url, self.config.hmac_key.get_secret_value())
        self.release: Release | None = None
        self.specs: dict[str, ModelSpec] = {}
        self.not_ready_reason: str | None = None
        self.shadows: dict[str, tuple[Served, ...]] = {}  # model name -> its shadow versions
        from serving.release import BUNDLE_NAME, load_release

        try:
            # Resolved here, not as a class-level BentoModel, so that a store without a release
            # still starts (and stays not ready, saying why); bentofile.yaml packs the bundle.
            folder = Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path)
        except bentoml.exceptions.NotFound as error:
            self.not_ready_reason = f"no champion models released ({error}); run `triage release`"
            logger.error("not ready: %s", self.not_ready_reason)
            return
        self.release = load_release(folder)  # raises ArtifactError on a tampered artifact
        self.specs = {n: s.predictor.spec for n, s in self.release.champions.items()}
        try:
            self.shadows = resolve_shadows(self.release, self.config.shadows)
        except ShadowConfigError as error:
            self.not_ready_reason = str(error)
            logger.error("not ready: %s", self.not_ready_reason)
            return
        logger.info("serving %s", ", ".join(f"{s.name} v{s.version}" for s in self.released()))
        for shadow in (s for found in self.shadows.values() for s in found):
            logger.info("shadow: %s v%s", shadow.name, shadow.version)
        # Everything loaded so far (libraries, predictors; ~230k objects) lives as long as the
        # worker: keep it out of the cyclic collector's full passes, each of which would stall a
        # request for ~0.2 s. (No gc.collect() first: it would add that 0.2 s to start-up.)
        gc.freeze()

    @bentoml.on_shutdown
    def _close(self) -> None:
        """Finish the audit rows still queued for a group commit, then close the store."""
        self.audit.close()

    def __is_ready__(self) -> bool:
        return self.release is not None and self.not_ready_reason is None

    def released(self) -> list[Served]:
        """Every released version (champions and versions released for pinning)."""
        release = self.require_ready()
        return [served for found in release.versions.values() for served in found.values()]

    def require_ready(self) -> Release:
        if self.release is None or self.not_ready_reason is not None:
            raise ApiError(503, "not_ready", self.not_ready_reason or "no model is loaded")
        return self.release

    def choose(self, model: str | None, pathway: str | None) -> tuple[Served, str | None]:
        """The served model for a request (a pinned version or alias, else the champion) and the
        pathway to pass as context (`route`)."""
        from serving.release import parse_ref

        release = self.require_ready()
        name, version, alias = parse_ref(model) if model else (None, None, None)
        try:
            name, pathway = route(self.specs, name or None, pathway)
        except RoutingError as error:
            status = 404 if error.code == "unknown_model" else 422
            raise ApiError(status, error.code, error.message, list(error.issues)) from None
        served = release.find(name, version=version, alias=alias)
        if served is None:
            pin = f"version {version}" if version else f"alias {alias!r}"
            raise ApiError(404, "unknown_model_version",
                           f"{name} {pin} is not released on this server")  # fmt: skip
        return served, pathway

    def score_shadows(
        self,
        served: Served,
        model: str | None,
        record: Mapping[str, Any],
        pathway: str | None,
    ) -> list[ShadowRecord]:
        """The shadow rows for a record `served` (NAME's champion) scored, or refused on its own
        eligibility: one per shadow of NAME, none when the client pinned a version or alias
        (`model`, as asked for)."""
        if is_pinned(model):
            return []
        return [
            shadow_record(shadow, record, pathway) for shadow in self.shadows.get(served.name, ())
        ]

    def refusal(self, served: Served | None, issues: list[Issue] | tuple[Issue, ...]) -> ApiError:
        """An ineligible record: counted, and answered 422 `ineligible`."""
        for issue in issues:
            if issue.severity == "error":
                _metrics()["refusals"].labels(
                    model=served.name if served else "-", code=issue.code
                ).inc()
        return ApiError(422, "ineligible", "the record cannot be scored", list(issues))

    # --- the audit trail and idempotency --------------------------------------------------------

    def pseudonym(self, reference: str | None) -> str | None:
        return pseudonymise(reference, self.config.hmac_key.get_secret_value())

    async def answer(
        self,
        *,
        request_id: str,
        keyed: bool,
        fingerprint: Callable[[], str],
        work: Callable[[], Answer],
        error: Callable[[ApiError], Answer],
    ) -> Response:
        """Answer once per request id: a client-chosen id is claimed first, so a retry gets the
        stored answer (same bytes), the same id with another request 422 and a retry while the
        first is still being answered 409 (IETF Idempotency-Key draft). The audit rows and the
        stored answer are committed together, before the response leaves."""
        headers = {"x-request-id": request_id}

        def reply(status: int, body: bytes, media_type: str) -> Response:
            return Response(body, status, headers=headers, media_type=media_type)

        async def claimed() -> Response | None:
            """None when this request now owns the id; else the answer a retry gets."""
            claim = await self.audit.claim_async(request_id, fingerprint())
            if claim.kind == "new":
                return None
            if claim.kind == "replay":
                assert claim.status is not None and claim.body is not None
                return reply(claim.status, claim.body, claim.media_type or "application/json")
            failure = (
                ApiError(422, "request_id_reused", f"request id {request_id!r} was used for a "
                         "different request; use a new id for a new request")
                if claim.kind == "mismatch"
                else ApiError(409, "request_in_progress", f"request id {request_id!r} is still "
                              "being answered; retry shortly")
            )  # fmt: skip
            refused = error(failure)
            return reply(failure.status, refused.body, refused.media_type)

        if keyed and (earlier := await claimed()) is not None:
            return earlier
        try:
            result = work()
            if not result.final:
                if keyed:
                    self.audit.abandon(request_id)
                return reply(result.status, result.body, result.media_type)
            await self.audit.commit_async(
                result.records,
                key=request_id if keyed else None,
                status=result.status,
                media_type=result.media_type,
                body=result.body,
            )
        except CommitConflictError:
            # The claim was taken over (this request outlived the stale limit) or the id is in
            # the trail already: answer as a retry would be answered.
            if keyed and (earlier := await claimed()) is not None:
                return earlier
            raise
        except BaseException:
            if keyed:
                self.audit.abandon(request_id)
            raise
        metrics = _metrics()
        for served, score in result.scored:
            metrics["scores"].labels(model=served.name, band=score.band).inc()
            metrics["probability"].labels(model=served.name).observe(score.probability)
            for issue in score.issues:
                metrics["warnings"].labels(model=served.name, code=issue.code).inc()
        for shadow in (shadow for record in result.records for shadow in record.shadows):
            metrics["shadow_scores"].labels(
                model=shadow.model_name, version=shadow.model_version, band=shadow.band or "refused"
            ).inc()
        return reply(result.status, result.body, result.media_type)

    def scored_record(
        self,
        served: Served,
        score: Score,
        *,
        request_id: str,
        item: int,
        endpoint: str,
        request: dict[str, Any],
        reference: str | None,
        response: bytes,
        item_request_id: str | None = None,
        shadows: Sequence[ShadowRecord] = (),
    ) -> AuditRecord:
        """The audit row of a scored patient: the canonical request (enough to score it again),
        the inputs as the model read them, the score, its explanation and the answer sent (and
        the shadow versions' rows for the same record)."""
        assert score.probability is not None and score.band is not None and score.base is not None
        return AuditRecord.build(
            request_id=request_id,
            item=item,
            item_request_id=item_request_id,
            endpoint=endpoint,
            outcome="scored",
            request=request,
            response=response,
            model_name=served.name,
            model_version=served.version,
            run_id=served.run_id,
            patient_pseudonym=self.pseudonym(reference),
            inputs=score.values,
            warnings=[i.code for i in score.issues],
            probability=score.probability,
            band=score.band,
            base=score.base,
            contributions=score.contributions,
            shadows=shadows,
        )

    def refused_record(
        self,
        served: Served | None,
        failure: ApiError,
        *,
        request_id: str,
        item: int,
        endpoint: str,
        request: dict[str, Any],
        reference: str | None,
        response: bytes,
        item_request_id: str | None = None,
        shadows: Sequence[ShadowRecord] = (),
    ) -> AuditRecord:
        """The audit row of a refusal (a clinical decision point too): its reason codes, no
        score (and the shadow versions' rows, when the champion refused on its own
        eligibility)."""
        return AuditRecord.build(
            request_id=request_id,
            item=item,
            item_request_id=item_request_id,
            endpoint=endpoint,
            outcome="refused",
            request=request,
            response=response,
            reason_codes=[failure.code, *(i.code for i in failure.issues if i.severity == "error")],
            warnings=[i.code for i in failure.issues if i.severity == "warning"],
            model_name=served.name if served else None,
            model_version=served.version if served else None,
            run_id=served.run_id if served else None,
            patient_pseudonym=self.pseudonym(reference),
            shadows=shadows,
        )


async def _current() -> TriageService:
    """The worker's service instance: an async dependency, so no thread hop per request."""
    return bentoml.get_current_service()


Service = Annotated[TriageService, Depends(_current)]
