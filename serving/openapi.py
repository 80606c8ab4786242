"""The OpenAPI document at /docs.json, completed: BentoML writes its own `info` (the service name,
version "None", BentoML's contact) and no security schemes, so this middleware rewrites the
document it serves: a real `info` (title, the package version, the error codes), the two ways to
present an API key, and the answers every route can give (401, 429, 504) on every operation.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api import app, package_version
from serving.schemas import ERROR_CODES

OPEN_PATHS = ("/livez", "/readyz", "/metrics", "/docs.json", "/")  # probes: no key needed
EVERY_ROUTE = {
    "401": "missing or wrong API key (when keys are configured)",
    "429": "rate limit exceeded, or too many failed authentications (see Retry-After)",
    "504": "not answered within the server's deadline",
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """The document with a real `info`, security schemes and the answers of every route."""
    codes = "\n".join(
        f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in ERROR_CODES.items()
    )
    document["info"] = {
        "title": app.title,
        "version": package_version(),
        "description": f"{app.description}\n\nError codes (`error.code`, or the first "
        f"OperationOutcome issue's coding on FHIR routes):\n\n| code | status | meaning |\n"
        f"|---|---|---|\n{codes}",
    }
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    document["security"] = [{"bearer": []}, {"apiKey": []}]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or method not in ("get", "post", "head", "put"):
                continue
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            media = "application/fhir+json" if "/fhir/" in path else "application/json"
            for status, text in EVERY_ROUTE.items():
                responses.setdefault(
                    status, {"description": text, "content": {media: {"schema": error_ref}}}
                )
    return document


class OpenApiDocument:
    """Rewrites BentoML's `GET /docs.json` answer with `complete` (built once per worker)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.cached: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json":
            await self.app(scope, receive, send)
            return
        if self.cached is None:
            start: Message = {}
            chunks: list[bytes] = []

            async def capture(message: Message) -> None:
                nonlocal start
                if message["type"] == "http.response.start":
                    start = message
                else:
                    chunks.append(message.get("body", b""))

            await self.app(scope, receive, capture)
            if start.get("status") != 200:
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks)})
                return
            self.cached = json.dumps(complete(json.loads(b"".join(chunks)))).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(self.cached)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": self.cached})
