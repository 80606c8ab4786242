"""The request deadline standing in for BentoML's TimeoutMiddleware: same answers, nothing kept."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib.util
import json
import weakref
from typing import Any

import pytest

from serving.middleware import RequestDeadline

REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")
SCOPE = {"type": "http", "method": "POST", "path": "/v1/score", "headers": []}


class State:
    """Stands in for what an outer middleware (OpenTelemetry) sets in the request's context."""


def bentoml_timeout_middleware() -> Any:
    """A fresh copy of BentoML's own class (the installed module attribute is ours)."""
    spec = importlib.util.find_spec("bentoml._internal.server.http.traffic")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TimeoutMiddleware


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def call(middleware: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(SCOPE, receive, send)
    return sent


def request_context_released(middleware_class: Any) -> bool:
    """Serve one request with a per-request object in its context; is it freed afterwards?"""

    async def main() -> bool:
        async def one_request() -> weakref.ref[State]:
            state = State()
            REQUEST_STATE.set(state)
            assert (await call(middleware_class(answer, timeout=30)))[0]["status"] == 200
            return weakref.ref(state)

        released = await asyncio.create_task(one_request())  # its own context, as a request's
        await asyncio.sleep(0)
        gc.collect()
        return released() is None

    return asyncio.run(main())


def test_bentoml_builds_the_app_with_the_request_deadline(asgi_app: Any) -> None:
    classes = [m.cls for m in asgi_app.user_middleware]
    assert RequestDeadline in classes, "installed before BentoML built the app"
    assert bentoml_timeout_middleware() not in classes


def test_bentoml_builds_the_app_without_tracing(asgi_app: Any) -> None:
    """No OpenTelemetry middleware (no trace leaves the service; it cost ~10% of a worker's CPU):
    when BentoML moves its import, this fails rather than the cost silently coming back."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from serving.service import NoTracing

    assert OpenTelemetryMiddleware is NoTracing
    stack, seen = asgi_app.build_middleware_stack(), []
    while stack is not None and len(seen) < 50:
        seen.append(type(stack).__name__)
        stack = getattr(stack, "app", None)
    assert "OpenTelemetryMiddleware" not in seen and "RequestDeadline" in seen, seen


def test_request_context_released_when_the_request_ends() -> None:
    assert request_context_released(RequestDeadline)
    # BentoML 1.4's own keeps it until its uncancelled timer fires: when this starts failing,
    # BentoML has fixed it and `install_request_deadline` can go.
    assert not request_context_released(bentoml_timeout_middleware())


def test_slow_request_gets_a_coded_504() -> None:
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(1)
        await answer(scope, receive, send)

    sent = asyncio.run(call(RequestDeadline(slow, timeout=0.05)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"])["error"]["code"] == "timeout"


def test_deadline_ends_once_the_response_has_started() -> None:
    async def streams(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"{}"})

    sent = asyncio.run(call(RequestDeadline(streams, timeout=0.05)))
    assert [m.get("status") for m in sent] == [200, None], "answered in full, no 504"


def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("a dependency timed out")

    with pytest.raises(TimeoutError, match="a dependency"):
        asyncio.run(call(RequestDeadline(fails, timeout=30)))
