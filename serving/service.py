"""The BentoML triage service: it adapts HTTP to the predictors and nothing more.

The routes live in a FastAPI app mounted at /v1 (serving/api.py; the JSON routes in
serving/routes.py, the FHIR, CDS Hooks and result-page routes in serving/routes_fhir.py), so the
OpenAPI document at /docs.json describes every status code; BentoML adds /livez, /readyz,
/metrics and /docs.json. Each worker is a `TriageService` (serving/triage.py) holding every
released predictor and the audit store. This module only assembles them: the middleware, in
order, and BentoML's service definition (`bentoml serve serving.service:Triage`).
"""

from __future__ import annotations

import bentoml

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

install_request_deadline()
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
