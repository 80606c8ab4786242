"""The server's edge and the /v1 gate, driven through a small app shaped like BentoML's.

The outer Starlette app stands in for the one BentoML builds (its own `GET /` page, a probe, the
FastAPI app mounted at /v1, service middleware added outside the router); no models are needed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi import Body, FastAPI, Request
from fhir.resources.R4B.operationoutcome import OperationOutcome
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import serving.middleware as middleware
from models.analytes import CATALOGUE
from serving.config import ServingConfig, default_body_limit
from serving.middleware import (
    INDEX_PAGE,
    INDEX_POLICY,
    ApiKeyAuth,
    BodySizeLimit,
    Edge,
    RateLimit,
    RequestDeadline,
    SlidingWindows,
    current_config,
    error_response,
    request_id_of,
)

BENTOML_INDEX = '<script src="https://www.googletagmanager.com/gtm.js"></script>'
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def build_app() -> tuple[Starlette, list[str]]:
    """BentoML's shape: Edge around the outer router; /v1 a FastAPI app with the gate inside."""
    seen: list[str] = []  # request ids the routes saw: a refused request never reaches one
    api = FastAPI()

    @api.post("/score")
    async def score(request: Request, body: Any = Body()) -> Response:  # noqa: B008
        seen.append(request_id_of(request))
        return JSONResponse({"request_id": request_id_of(request), "echo": body})

    @api.post("/fhir/score")
    async def fhir_score(request: Request, body: Any = Body()) -> Response:  # noqa: B008
        seen.append(request_id_of(request))
        return JSONResponse({"resourceType": "RiskAssessment"})

    @api.get("/models")
    async def models(request: Request) -> Response:
        seen.append(request_id_of(request))
        return JSONResponse({"models": []})

    @api.get("/slow")
    async def slow() -> Response:
        await asyncio.sleep(1)
        return JSONResponse({})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, "malformed_json")
        headers = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
        return error_response(request, error.status_code, code, str(error.detail), (), headers)

    api.add_exception_handler(HTTPException, http_error)
    # Outermost last, as the service adds them: keys, then the rate limit, then the body.
    api.add_middleware(BodySizeLimit)
    api.add_middleware(RateLimit)
    api.add_middleware(ApiKeyAuth)

    async def bentoml_index(request: Request) -> Response:
        return HTMLResponse(BENTOML_INDEX)

    async def livez(request: Request) -> Response:
        return PlainTextResponse("\n")

    routes = [Route("/", bentoml_index), Route("/livez", livez), Mount("/v1", api)]
    outer = Starlette(routes=routes, middleware=[Middleware(Edge)])
    return outer, seen


@pytest.fixture
def env(serving_env: Path) -> Path:
    return serving_env


@pytest.fixture
def app(env: Path) -> tuple[Starlette, list[str]]:
    return build_app()


@pytest.fixture
def client(app: tuple[Starlette, list[str]]) -> Iterator[TestClient]:
    with TestClient(app[0]) as test_client:
        yield test_client


def error_of(response: Any) -> dict[str, Any]:
    """The envelope's error, after checking that the request id is filled in and echoed."""
    body = response.json()
    assert set(body) == {"request_id", "error"}, f"the one envelope: {body}"
    assert set(body["error"]) == {"code", "message", "issues"}, body
    assert body["request_id"] == response.headers["x-request-id"], "the id used, in both places"
    assert response.headers["cache-control"] == "no-store"
    return dict(body["error"])


# --- request ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["int_fhir_24761", "int:fhir:23955", "a" * 65, "sp ace", "", "é"])
@pytest.mark.parametrize("header", ["x-request-id", "idempotency-key"])
def test_a_request_id_outside_the_fhir_rule_is_refused_before_any_route(
    app: tuple[Starlette, list[str]], client: TestClient, header: str, value: str
) -> None:
    response = client.post("/v1/score", json={"a": 1}, headers={header: value.encode()})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_request_id"
    assert HEX_ID.match(response.headers["x-request-id"]), "a fresh id, not the refused one"
    assert app[1] == [], "nothing behind the edge ran (so nothing was audited)"


def test_the_clients_id_is_used_and_echoed(client: TestClient) -> None:
    given = client.post("/v1/score", json={}, headers={"x-request-id": "lab-2026.11-" + "9" * 52})
    assert given.json()["request_id"] == given.headers["x-request-id"] == "lab-2026.11-" + "9" * 52
    fresh = client.post("/v1/score", json={})
    assert HEX_ID.match(fresh.json()["request_id"])
    assert fresh.headers["x-request-id"] == fresh.json()["request_id"], "route and header agree"


def test_a_quoted_idempotency_key_is_the_request_id(client: TestClient) -> None:
    quoted = client.post("/v1/score", json={}, headers={"idempotency-key": '"retry-7"'})
    assert quoted.status_code == 200 and quoted.json()["request_id"] == "retry-7"
    assert quoted.headers["x-request-id"] == "retry-7", "the structured-field quotes are removed"
    bare = client.post("/v1/score", json={}, headers={"idempotency-key": "retry-8"})
    assert bare.json()["request_id"] == "retry-8"
    both = client.post(
        "/v1/score", json={}, headers={"x-request-id": "req-1", "idempotency-key": '"key-1"'}
    )
    assert both.json()["request_id"] == "req-1", "X-Request-Id first, as the header says"


def test_fhir_routes_answer_edge_errors_as_operation_outcomes(client: TestClient) -> None:
    response = client.post(
        "/v1/fhir/score", json={"resourceType": "Bundle"}, headers={"x-request-id": "a_b"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/fhir+json"
    outcome = OperationOutcome.model_validate(response.json())  # valid R4B
    assert outcome.id == response.headers["x-request-id"], "the outcome is named by the request id"
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid_request_id"
    assert outcome.issue[0].code == "value"


# --- one envelope everywhere ---------------------------------------------------------------------


def test_unknown_paths_and_wrong_methods_use_the_envelope(client: TestClient) -> None:
    rid = {"x-request-id": "probe-1"}
    outer_404 = client.get("/nothing", headers=rid)
    assert outer_404.status_code == 404 and error_of(outer_404)["code"] == "not_found"
    assert outer_404.json()["request_id"] == "probe-1"
    inner_404 = client.get("/v1/nothing", headers=rid)
    assert inner_404.status_code == 404 and error_of(inner_404)["code"] == "not_found"
    outer_405 = client.post("/livez", headers=rid)
    assert outer_405.status_code == 405 and error_of(outer_405)["code"] == "method_not_allowed"
    assert "GET" in outer_405.headers["allow"], "Allow survives the rewrite"
    inner_405 = client.get("/v1/score", headers=rid)
    assert inner_405.status_code == 405 and error_of(inner_405)["code"] == "method_not_allowed"
    assert inner_405.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_a_body_that_is_not_typed_as_json_is_415(
    app: tuple[Starlette, list[str]], client: TestClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/score", content=b'{"age": 70}', headers=headers)
    assert response.status_code == 415, response.text
    assert error_of(response)["code"] == "unsupported_media_type"
    assert "application/json" in response.headers["accept-post"]
    assert app[1] == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/fhir+json",
        "Application/JSON",
    ],
)
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    body = json.dumps({"name": "Zoë"}).encode()  # escaped, so ASCII
    response = client.post("/v1/score", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    raw = '{"name": "Zoë Brontë"}'.encode()  # UTF-8, not ASCII
    response = client.post("/v1/score", content=raw, headers={"content-type": content_type})
    assert response.json()["echo"] == {"name": "Zoë Brontë"}


def test_a_bodiless_post_needs_no_content_type(client: TestClient) -> None:
    response = client.post("/v1/score")
    assert response.status_code == 422, "the route, not the gate, says the body is missing"


def test_a_body_that_is_not_utf8_is_400(
    app: tuple[Starlette, list[str]], client: TestClient
) -> None:
    latin1 = '{"name": "Zoë"}'.encode("latin-1")
    response = client.post(
        "/v1/score", content=latin1, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "malformed_json" and "byte 12" in error["message"], error
    utf16 = '{"a": 1}'.encode("utf-16")
    response = client.post("/v1/score", content=utf16, headers={"content-type": "application/json"})
    assert response.status_code == 400 and app[1] == []


def test_every_response_carries_the_request_id_and_no_store(client: TestClient) -> None:
    for response in (
        client.get("/livez"),
        client.get("/v1/models"),
        client.get("/"),
        client.post("/v1/score", json={}),
    ):
        assert response.headers["cache-control"] == "no-store", response.url
        assert HEX_ID.match(response.headers["x-request-id"]), response.url


def test_a_slow_request_gets_a_504_envelope_with_its_id(env: Path) -> None:
    outer, _ = build_app()
    with TestClient(RequestDeadline(outer, timeout=0.05)) as client:
        response = client.get("/v1/slow", headers={"x-request-id": "slow-1"})
    assert response.status_code == 504
    assert error_of(response)["code"] == "timeout" and response.json()["request_id"] == "slow-1"


# --- body size -----------------------------------------------------------------------------------


def full_panel_patient() -> dict[str, Any]:
    """Every catalogue analyte with a long value and its longest accepted unit."""
    return {
        "model": "lower_gi",
        "pathway": "lower_gi",
        "age": 71.5,
        "sex": "female",
        "patient_reference": "x" * 64,
        "sample_date": "2026-11-30",
        "request_id": "r" * 64,
        "analytes": {
            a.code: {"value": 1234.567, "unit": max([a.unit, *a.alt_units], key=len)}
            for a in CATALOGUE
        },
    }


def test_the_default_body_limit_fits_a_full_pretty_printed_batch(env: Path) -> None:
    config = ServingConfig.from_env({"TRIAGE_HOME": str(env), "TRIAGE_HMAC_KEY": "k"})
    assert config.max_batch == 100 and config.max_body_bytes == 100 * 4_000 * 2 + 65_536
    batch = {"patients": [full_panel_patient()] * config.max_batch}
    for indent in (2, 4, "\t"):
        size = len(json.dumps(batch, indent=indent).replace("\n", "\r\n"))
        assert size < config.max_body_bytes, f"indent {indent!r}: {size} bytes"
    assert len(json.dumps(batch, indent=2)) > 100 * 3_500, "the measured size still holds"
    small = ServingConfig.from_env(
        {"TRIAGE_HOME": str(env), "TRIAGE_HMAC_KEY": "k", "TRIAGE_MAX_BATCH": "10"}
    )
    assert small.max_body_bytes == default_body_limit(10) == 145_536, "follows the batch limit"
    pinned = ServingConfig.from_env(
        {"TRIAGE_HOME": str(env), "TRIAGE_HMAC_KEY": "k", "TRIAGE_MAX_BODY_BYTES": "2048"}
    )
    assert pinned.max_body_bytes == 2048, "the variable still wins"


def test_a_full_pretty_printed_batch_passes_and_a_larger_body_is_413(client: TestClient) -> None:
    batch = {"patients": [full_panel_patient()] * current_config().max_batch}
    pretty = json.dumps(batch, indent=2).encode()
    response = client.post(
        "/v1/score", content=pretty, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text[:200]
    too_big = b" " * (current_config().max_body_bytes + 1)
    response = client.post(
        "/v1/score", content=too_big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"


# --- authentication failures ---------------------------------------------------------------------


def test_sliding_window_by_hand() -> None:
    windows = SlidingWindows()
    for t in (0.0, 10.0, 20.0):
        assert windows.retry_after("a", 3, t) is None
        windows.count("a", t)
    assert windows.retry_after("a", 3, 30.0) == 30, "the oldest (t=0) leaves at t=60"
    assert windows.retry_after("a", 3, 59.5) == 1
    assert windows.retry_after("a", 3, 60.0) is None, "one left the window"
    assert windows.retry_after("b", 3, 30.0) is None, "per caller"


def test_repeated_wrong_keys_get_429_before_any_key_is_compared(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_API_KEYS", "right-key")
    monkeypatch.setenv("TRIAGE_AUTH_FAILURE_LIMIT", "3")
    current_config.cache_clear()
    compared: list[str | None] = []
    real = middleware.key_is_valid

    def counted(key: str | None, hashes: tuple[str, ...]) -> bool:
        compared.append(key)
        return real(key, hashes)

    monkeypatch.setattr(middleware, "key_is_valid", counted)
    outer, _ = build_app()
    wrong, right = {"x-api-key": "guess"}, {"x-api-key": "right-key"}
    with TestClient(outer, client=("10.0.0.1", 4000)) as attacker:
        codes = [attacker.get("/v1/models", headers=wrong).status_code for _ in range(3)]
        assert codes == [401, 401, 401]
        assert error_of(attacker.get("/v1/models"))["code"] == "rate_limited", "no key: a failure"
        limited = attacker.get("/v1/models", headers=right)
        assert limited.status_code == 429, "a right key from a blocked address is not compared"
        assert error_of(limited)["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert len(compared) == 3, "only the three failures before the limit were compared"
    with TestClient(outer, client=("10.0.0.2", 4000)) as clinic:
        codes = [clinic.get("/v1/models", headers=right).status_code for _ in range(5)]
        assert codes == [200] * 5, "another address, and successes never count as failures"


def test_successful_calls_keep_the_per_key_limit(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_API_KEYS", "key-a")
    monkeypatch.setenv("TRIAGE_RATE_LIMIT", "2")
    current_config.cache_clear()
    with TestClient(build_app()[0]) as client:
        codes = [
            client.get("/v1/models", headers={"x-api-key": "key-a"}).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        unauthorised = client.get("/v1/models", headers={"x-api-key": "nope"})
        assert unauthorised.status_code == 401 and error_of(unauthorised)["code"] == "unauthorised"
        assert unauthorised.headers["www-authenticate"] == "Bearer"


# --- the index page ------------------------------------------------------------------------------


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_index_page_is_ours_and_loads_nothing_from_elsewhere(client: TestClient) -> None:
    package = importlib.util.find_spec("_bentoml_impl")  # located, not imported
    assert package is not None and package.submodule_search_locations
    bentoml_page = Path(package.submodule_search_locations[0]) / "server" / "main-openapi.html"
    assert "googletagmanager" in bentoml_page.read_text(), (
        "the premise: BentoML's own index page calls a third party"
    )
    response = client.get("/")
    assert response.status_code == 200 and response.content == INDEX_PAGE
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "<script" not in page and "googletagmanager" not in page
    assert not re.search(r"(https?:)?//", page), "no external URL of any kind"
    parser = Links()
    parser.feed(page)
    hrefs = {attrs["href"] for tag, attrs in parser.tags if tag == "a"}
    assert hrefs == {"/docs.json", "/v1/models", "/v1/fhir/metadata", "/cds-services"}
    assert not [t for t, attrs in parser.tags if "src" in attrs], "no src attribute at all"
    assert response.headers["content-security-policy"] == INDEX_POLICY.decode()
    assert client.head("/").content == b"", "HEAD: headers only"


def test_the_page_policy_allows_exactly_its_own_style() -> None:
    style = re.search(rb"<style>(.*?)</style>", INDEX_PAGE, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1)).digest()).decode()
    policy = INDEX_POLICY.decode()
    assert f"style-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
