"""The BentoML triage service: it adapts HTTP to the predictors and nothing more.

The routes live in a FastAPI app mounted at /v1 (serving/api.py; the JSON routes in
serving/routes.py, the FHIR, CDS Hooks and result-page routes in serving/routes_fhir.py), so the
OpenAPI document at /docs.json describes every status code; BentoML adds /livez, /readyz,
/metrics and /docs.json. Each worker is a `TriageService` (serving/triage.py) holding every
released predictor and the audit store. This module only assembles them: the middleware, in
order, and BentoML's service definition (`bentoml serve serving.service:Triage`).
"""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.types import ASGIApp

from serving import routes, routes_fhir  # noqa: F401 (the routes register themselves on `app`)
from serving.api import app
from serving.middleware import (
    ApiKeyAuth,
    BodySizeLimit,
    Edge,
    RateLimit,
    install_request_deadline,
)
from serving.openapi import OpenApiDocument
from serving.triage import TriageService


class NoTracing:
    """Stands in for OpenTelemetry's ASGI middleware, which BentoML wraps around every app: it
    starts a span and wraps every `send` of every request although no tracer exports anything
    here (~10% of a worker's CPU under load, py-spy on `bench_serve`). No trace leaves this
    service, so the middleware is the app itself."""

    def __new__(cls, app: ASGIApp, **_: Any) -> ASGIApp:  # type: ignore[misc]
        return app


def install_without_tracing() -> None:
    """Have BentoML build its apps with `NoTracing` in place of `OpenTelemetryMiddleware` (it
    imports the class from that module attribute as it builds an app, so this must run before
    `to_asgi()`; a test checks the app BentoML builds)."""
    import opentelemetry.instrumentation.asgi as otel

    otel.OpenTelemetryMiddleware = NoTracing  # type: ignore[misc,assignment]


install_request_deadline()
install_without_tracing()
# Innermost first: the key is checked, then the per-key limit, and only then is a body read.
app.add_middleware(BodySizeLimit)
app.add_middleware(RateLimit)
app.add_middleware(ApiKeyAuth)

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
Triage.add_asgi_middleware(OpenApiDocument)  # /docs.json with a real info and security schemes
Triage.add_asgi_middleware(Edge)  # ids, the index page, 404/405 envelope, no-store (outermost)
