"""Pure-ASGI middleware for the /v1 routes: body size limit, API-key auth, per-key rate limit;
and, for the whole server, the request deadline that stands in for BentoML's TimeoutMiddleware.

Probes (/livez, /readyz, /metrics) and the OpenAPI document are served by BentoML outside /v1 and
stay open. API keys are held only as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from functools import cache
from typing import Any

from serving.config import ServingConfig, hash_key

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@cache
def current_config() -> ServingConfig:
    """The worker's configuration, read from the environment once."""
    return ServingConfig.from_env()


async def _reply(send: Send, status: int, code: str, message: str, headers: list[Any]) -> None:
    body = json.dumps(
        {"request_id": "", "error": {"code": code, "message": message, "issues": []}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
            await _reply(send, 504, "timeout", f"not answered within {self.timeout:g} s", [])


def install_request_deadline() -> None:
    """Have BentoML build its apps with `RequestDeadline` in place of its `TimeoutMiddleware`.

    BentoML imports the class from this module attribute each time it builds an app, so this
    must run before `to_asgi()` (the service module calls it on import). A test checks the app
    BentoML builds, so an upgrade that moves the class fails loudly rather than silently.
    """
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestDeadline  # type: ignore[misc,assignment]


class BodySizeLimit:
    """413 for a body over the configured size (declared or streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = current_config().max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, "body_too_large", f"the body exceeds {limit} bytes", [])
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reply(send, 413, "body_too_large", f"the body exceeds {limit} bytes", [])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


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


class ApiKeyAuth:
    """401 unless a configured API key is presented (no keys configured: open, loopback only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = current_config()
        if scope["type"] == "http" and config.auth_required:
            key = presented_key(dict(scope.get("headers") or []))
            if not key_is_valid(key, config.api_key_hashes):
                await _reply(
                    send,
                    401,
                    "unauthorised",
                    "a valid API key is required",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        await self.app(scope, receive, send)


class RateLimit:
    """429 once a caller (API key, or client address without keys) exceeds its per-minute limit.

    A sliding one-minute window per caller, kept in each worker's memory: with W workers the
    server-wide ceiling is W times the configured limit (a gateway limit is the place for a hard
    global one).
    """

    WINDOW_SECONDS = 60.0
    MAX_CALLERS = 10_000  # forget the oldest callers beyond this, so memory stays bounded

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.windows: dict[str, deque[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = current_config().rate_limit_per_minute
        if scope["type"] != "http" or not limit:
            await self.app(scope, receive, send)
            return
        key = presented_key(dict(scope.get("headers") or []))
        caller = hash_key(key) if key else f"address:{(scope.get('client') or ('-',))[0]}"
        now = time.monotonic()
        window = self.windows.pop(caller, deque())
        self.windows[caller] = window  # most recent callers last
        while window and now - window[0] >= self.WINDOW_SECONDS:
            window.popleft()
        if len(window) >= limit:
            retry = max(1, math.ceil(self.WINDOW_SECONDS - (now - window[0])))
            await _reply(send, 429, "rate_limited", f"more than {limit} requests a minute",
                         [(b"retry-after", str(retry).encode())])  # fmt: skip
            return
        window.append(now)
        while len(self.windows) > self.MAX_CALLERS:
            self.windows.pop(next(iter(self.windows)))
        await self.app(scope, receive, send)
