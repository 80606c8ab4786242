"""Pure-ASGI middleware: the server's edge (request ids, the index page, response headers), the
/v1 gate (body checks, API keys, rate limits) and the request deadline; one error envelope for all.

`Edge` wraps BentoML's whole app: it refuses a request id outside the FHIR id rule before anything
is read or audited, answers `GET /` with a self-contained page (BentoML's loads a third-party tag
manager), puts `X-Request-Id` and `Cache-Control: no-store` on every response and rewrites the
plain-text 404/405 of BentoML's router into the envelope. Inside /v1, `BodySizeLimit`, `ApiKeyAuth`
and `RateLimit` answer 413/415/400, 401 and 429 in the same envelope (an OperationOutcome on the
FHIR routes). API keys are held only as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import cache
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from serving.config import ServingConfig, hash_key
from serving.schemas import IssueOut, error_payload, valid_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

NO_STORE = (b"cache-control", b"no-store")


@cache
def current_config() -> ServingConfig:
    """The worker's configuration, read from the environment once."""
    return ServingConfig.from_env()


# --- request ids ---------------------------------------------------------------------------------


class EdgeIds(NamedTuple):
    """A request's ids as the edge read them (headers already checked)."""

    header_id: str | None  # X-Request-Id
    idempotency_key: str | None  # Idempotency-Key, its structured-field quotes removed
    request_id: str  # the one answered with: X-Request-Id, else Idempotency-Key, else a fresh one


def unquoted_key(value: str) -> str:
    """An `Idempotency-Key` value without its quotes (the IETF draft sends a structured-field
    string, `"abc"`); a bare `abc`, which many clients send, is taken as it is."""
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return str(value.decode("latin-1").strip())
    return None


def _read_ids(scope: Scope) -> tuple[EdgeIds, str | None]:
    """The request's ids and, when a header breaks the FHIR id rule, which header."""
    header_id = _header(scope, b"x-request-id")
    key = _header(scope, b"idempotency-key")
    key = None if key is None else unquoted_key(key)
    broken = None
    if header_id is not None and not valid_request_id(header_id):
        broken, header_id = "X-Request-Id", None
    if key is not None and not valid_request_id(key):
        broken, key = broken or "Idempotency-Key", None
    return EdgeIds(header_id, key, header_id or key or uuid.uuid4().hex), broken


def edge_ids(scope: Scope) -> EdgeIds:
    """The ids `Edge` read for this request (read here, with invalid ones dropped, without it)."""
    state = scope.setdefault("state", {})
    ids = state.get("edge_ids")
    if ids is None:
        ids = state["edge_ids"] = _read_ids(scope)[0]
    return ids


def request_id_of(request: Request) -> str:
    """The request id to answer with: the client's (checked at the edge) or a fresh one, the same
    one `Edge` puts in the `X-Request-Id` response header."""
    return edge_ids(request.scope).request_id


# --- the error envelope --------------------------------------------------------------------------


def is_fhir_path(path: str) -> bool:
    """FHIR routes answer every error as an OperationOutcome."""
    return "/fhir/" in path


def _error_headers(scope: Scope, request_id: str, body: bytes) -> list[tuple[bytes, bytes]]:
    media = b"application/fhir+json" if is_fhir_path(scope.get("path", "")) else b"application/json"
    return [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        NO_STORE,
    ]


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    issues: Sequence[IssueOut] = (),
    headers: Headers = (),
) -> Response:
    """An error answer for an exception handler: the envelope, with the request id filled in."""
    request_id = request_id_of(request)
    body = error_payload(request_id, code, message, issues, fhir=is_fhir_path(request.url.path))
    response = Response(body, status_code=status)
    response.raw_headers = [*_error_headers(request.scope, request_id, body), *headers]
    return response


async def send_error(
    scope: Scope, send: Send, status: int, code: str, message: str, headers: Headers = ()
) -> None:
    """Answer the request from a middleware with the error envelope."""
    request_id = edge_ids(scope).request_id
    body = error_payload(request_id, code, message, fhir=is_fhir_path(scope.get("path", "")))
    all_headers = [*_error_headers(scope, request_id, body), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


# --- the edge of the whole server ----------------------------------------------------------------

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1a1a1a}code{font-size:.95em}"
)
INDEX_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cancer triage API</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Cancer triage API</h1>
<p>Calibrated probability of each model's outcome, a triage band and the reasons, per patient.
This page loads nothing from anywhere else.</p>
<ul>
<li><a href="/docs.json">OpenAPI document</a> (<code>/docs.json</code>)</li>
<li><a href="/v1/models">Models served</a>, their inputs and thresholds
(<code>/v1/models</code>; API key)</li>
<li><a href="/v1/fhir/metadata">FHIR CapabilityStatement</a> (<code>/v1/fhir/metadata</code>)</li>
<li><a href="/cds-services">CDS Hooks services</a> (<code>/cds-services</code>)</li>
</ul>
</main>
</body>
</html>
""".encode()
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Nothing but the page's own style may load, and no other site may frame it.
INDEX_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
).encode()


class Edge:
    """The server's edge (add to BentoML's app with `Triage.add_asgi_middleware(Edge)`).

    400 `invalid_request_id` for an `X-Request-Id` or `Idempotency-Key` outside the FHIR id rule,
    before anything is read or audited; the ids for the routes (`request_id_of`); the index page
    at `GET /`; `X-Request-Id` and `Cache-Control: no-store` on every response; BentoML's
    plain-text 404 and 405 as the error envelope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ids, broken = _read_ids(scope)
        scope.setdefault("state", {})["edge_ids"] = ids
        if broken is not None:
            message = f"{broken} must be 1-64 letters, digits, '-' or '.' (the FHIR id rule)"
            await send_error(scope, send, 400, "invalid_request_id", message)
            return
        if scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await self._index(scope, send, ids.request_id)
            return
        rewritten = False

        async def send_marked(message: Message) -> None:
            nonlocal rewritten
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if message["status"] in (404, 405) and _is_plain_text(headers):
                    rewritten = True
                    await self._router_error(scope, send, message["status"], headers)
                    return
                names = {name.lower() for name, _ in headers}
                if b"x-request-id" not in names:
                    headers.append((b"x-request-id", ids.request_id.encode()))
                if b"cache-control" not in names:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            elif rewritten:
                return  # the router's plain-text body, replaced above
            await send(message)

        await self.app(scope, receive, send_marked)

    @staticmethod
    async def _index(scope: Scope, send: Send, request_id: str) -> None:
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(INDEX_PAGE)).encode()),
            (b"content-security-policy", INDEX_POLICY),
            (b"x-content-type-options", b"nosniff"),
            (b"x-request-id", request_id.encode()),
            NO_STORE,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else INDEX_PAGE
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _router_error(scope: Scope, send: Send, status: int, headers: Headers) -> None:
        where = f"{scope['method']} {scope['path'][:200]}"
        if status == 404:
            await send_error(scope, send, 404, "not_found", f"no route for {where}")
            return
        allow = [(name, value) for name, value in headers if name.lower() == b"allow"]
        await send_error(scope, send, 405, "method_not_allowed", f"not allowed: {where}", allow)


def _is_plain_text(headers: Headers) -> bool:
    return any(n.lower() == b"content-type" and v.startswith(b"text/plain") for n, v in headers)


# --- the request deadline ------------------------------------------------------------------------


class RequestDeadline:
    """504 for a request not answered within `timeout` seconds (BentoML's `traffic.timeout`).

    It replaces BentoML 1.4's `TimeoutMiddleware` (see `install_request_deadline`), which
    schedules a timer per request and never cancels it: the event loop then holds every finished
    request's context (its OpenTelemetry span and attributes) for the whole timeout, ~6,000
    requests and ~25 MB per worker at 200 requests/s and 30 s. Here the timer is cancelled as
    soon as the request ends, and the deadline is dropped once the response has started, as
    BentoML's did.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False
        try:
            async with asyncio.timeout(self.timeout) as deadline:

                async def send_started(message: Message) -> None:
                    nonlocal started
                    if not started:
                        started = True
                        deadline.reschedule(None)
                    await send(message)

                await self.app(scope, receive, send_started)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            message = f"not answered within {self.timeout:g} s"
            await send_error(scope, send, 504, "timeout", message)


def install_request_deadline() -> None:
    """Have BentoML build its apps with `RequestDeadline` in place of its `TimeoutMiddleware`.

    BentoML imports the class from this module attribute each time it builds an app, so this
    must run before `to_asgi()` (the service module calls it on import). A test checks the app
    BentoML builds, so an upgrade that moves the class fails loudly rather than silently.
    """
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestDeadline  # type: ignore[misc,assignment]


# --- the /v1 gate --------------------------------------------------------------------------------

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ACCEPT_POST = (b"accept-post", b"application/json, application/fhir+json")


def is_json_media_type(content_type: bytes) -> bool:
    """`application/json` or any `application/...+json` (`fhir+json`), parameters aside."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class BodySizeLimit:
    """A body the routes can read, or a coded refusal before any route sees it.

    413 for a body over the configured size (declared or streamed); 415 for a body whose
    Content-Type is not JSON, or that has none (RFC 9110 lets a server treat an untyped body as
    octets, and an interface engine that omits the type is better told than guessed at); 400
    `malformed_json` for a body that is not UTF-8, the only encoding RFC 8259 allows between
    systems. A bodiless request needs no Content-Type.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = current_config().max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(scope, send, 413, "body_too_large", f"the body exceeds {limit} bytes")
            return
        content_type = headers.get(b"content-type")
        takes_body = scope.get("method") in BODY_METHODS
        if takes_body and content_type is not None and not is_json_media_type(content_type):
            await self._unsupported(scope, send, content_type.decode("latin-1")[:100])
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                text = f"the body exceeds {limit} bytes"
                await send_error(scope, send, 413, "body_too_large", text)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if takes_body and body:
            if content_type is None:
                await self._unsupported(scope, send, None)
                return
            if not body.isascii():  # isascii is a fast scan; most bodies are ASCII
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as error:
                    text = f"the body is not UTF-8 text (byte {error.start})"
                    await send_error(scope, send, 400, "malformed_json", text)
                    return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _unsupported(scope: Scope, send: Send, content_type: str | None) -> None:
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        message = f"send JSON: Content-Type application/json or application/fhir+json ({given})"
        await send_error(scope, send, 415, "unsupported_media_type", message, [ACCEPT_POST])


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The API key from `Authorization: Bearer ...` or `X-API-Key`."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None


def key_is_valid(key: str | None, hashes: tuple[str, ...]) -> bool:
    """Constant-time comparison of the key's digest with every configured digest."""
    digest = hash_key(key or "")
    matches = [hmac.compare_digest(digest, stored) for stored in hashes]
    return key is not None and any(matches)


def client_address(scope: Scope) -> str:
    return str((scope.get("client") or ("-",))[0])


class SlidingWindows:
    """Per caller, the times of its counted events in the last minute (a sliding window).

    Kept in each worker's memory: with W workers the server-wide ceiling is W times a limit (a
    gateway is the place for a hard global one). The least recently counted callers beyond
    `MAX_CALLERS` are forgotten, so memory stays bounded.
    """

    WINDOW_SECONDS = 60.0
    MAX_CALLERS = 10_000

    def __init__(self) -> None:
        self.windows: dict[str, deque[float]] = {}

    def retry_after(self, caller: str, limit: int, now: float) -> int | None:
        """Whole seconds until `caller` is under `limit` again; None when it is under it now."""
        window = self.windows.get(caller)
        if window is None:
            return None
        while window and now - window[0] >= self.WINDOW_SECONDS:
            window.popleft()
        if len(window) < limit:
            return None
        return max(1, math.ceil(self.WINDOW_SECONDS - (now - window[0])))

    def count(self, caller: str, now: float) -> None:
        window = self.windows.pop(caller, None) or deque()
        self.windows[caller] = window  # most recently counted callers last
        window.append(now)
        while len(self.windows) > self.MAX_CALLERS:
            self.windows.pop(next(iter(self.windows)))


def _too_many(limit: int, retry: int, what: str) -> tuple[str, list[tuple[bytes, bytes]]]:
    return f"more than {limit} {what} a minute", [(b"retry-after", str(retry).encode())]


class ApiKeyAuth:
    """401 unless a configured API key is presented (no keys configured: open, loopback only).

    Failed authentications count per client address: past `auth_failures_per_minute` the address
    gets 429 before any key is compared, a right one included, so that guessing learns nothing
    until the window slides.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failures = SlidingWindows()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = current_config()
        if scope["type"] != "http" or not config.auth_required:
            await self.app(scope, receive, send)
            return
        address, limit, now = (
            client_address(scope),
            config.auth_failures_per_minute,
            time.monotonic(),
        )
        retry = self.failures.retry_after(address, limit, now) if limit else None
        if retry is not None:
            message, headers = _too_many(limit, retry, "failed authentications")
            await send_error(scope, send, 429, "rate_limited", message, headers)
            return
        if not key_is_valid(presented_key(dict(scope.get("headers") or [])), config.api_key_hashes):
            if limit:
                self.failures.count(address, now)
            message = "a valid API key is required"
            await send_error(
                scope, send, 401, "unauthorised", message, [(b"www-authenticate", b"Bearer")]
            )
            return
        await self.app(scope, receive, send)


class RateLimit:
    """429 once a caller (API key, or client address without keys) exceeds its per-minute limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.windows = SlidingWindows()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = current_config().rate_limit_per_minute
        if scope["type"] != "http" or not limit:
            await self.app(scope, receive, send)
            return
        key = presented_key(dict(scope.get("headers") or []))
        caller = hash_key(key) if key else f"address:{client_address(scope)}"
        now = time.monotonic()
        retry = self.windows.retry_after(caller, limit, now)
        if retry is not None:
            message, headers = _too_many(limit, retry, "requests")
            await send_error(scope, send, 429, "rate_limited", message, headers)
            return
        self.windows.count(caller, now)
        await self.app(scope, receive, send)
