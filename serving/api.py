"""The FastAPI app BentoML mounts at /v1: its error envelope, documented responses and helpers.

Routes register themselves on `app` (serving/routes.py, serving/routes_fhir.py); the service
class (serving/service.py) holds the models and the audit store. Every error a client can cause is
a coded body (`ErrorResponse`, or an OperationOutcome on the FHIR routes), never a 5xx.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from models.validation import Issue
from serving.middleware import error_response
from serving.schemas import ErrorBody, ErrorResponse, IssueOut

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "malformed JSON, an undecodable body or an invalid request id"),
        (401, "missing or wrong API key"),
        (404, "unknown model or model version"),
        (409, "a request with this id is still being answered (retry later)"),
        (413, "request body too large"),
        (415, "the body is not JSON"),
        (422, "invalid or ineligible input, or a request id reused for another request"),
        (429, "rate limit exceeded"),
        (503, "not ready: no champion released (the reason is in the body)"),
        (504, "not answered in time"),
    )
}

app = FastAPI(
    title="Cancer triage API",
    version="1",
    description="Calibrated probability of each model's outcome, triage band, recommendation and "
    "exact explanation per patient.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)


class ApiError(Exception):
    """An error answered with a status code and a coded body."""

    def __init__(self, status: int, code: str, message: str, issues: list[Issue] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.issues = status, code, message, issues or []

    def body(self, request_id: str) -> ErrorResponse:
        return ErrorResponse(
            request_id=request_id,
            error=ErrorBody(code=self.code, message=self.message, issues=issues_out(self.issues)),
        )

    def fhir_issues(self) -> list[Issue]:
        """The issues of an OperationOutcome: the detailed ones, else the error itself."""
        return self.issues or [Issue("error", self.code, "request", self.message)]


def issues_out(issues: list[Issue] | tuple[Issue, ...]) -> list[IssueOut]:
    return [
        IssueOut(severity=i.severity, code=i.code, field=i.field, message=i.message) for i in issues
    ]


def json_bytes(body: BaseModel) -> bytes:
    """A response body serialised by pydantic-core in one step (no intermediate dict)."""
    return body.model_dump_json().encode()


def json_response(body: BaseModel, status: int = 200) -> Response:
    return Response(json_bytes(body), status_code=status, media_type="application/json")


def error_answer(request: Request, failure: ApiError, headers: Any = ()) -> Response:
    """The error envelope (an OperationOutcome on the FHIR routes) with the request id filled."""
    return error_response(request, failure.status, failure.code, failure.message,
                          issues_out(failure.issues), headers)  # fmt: skip


@app.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> Response:
    return error_answer(request, error)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> Response:
    """404 (no such route), 405 (wrong method) and the like, in the one error envelope."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    failure = ApiError(error.status_code, codes.get(error.status_code, "http_error"),
                       str(error.detail))  # fmt: skip
    headers = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    return error_answer(request, failure, headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> Response:
    return error_answer(request, validation_failure(error.errors()))


def validation_failure(errors: Any) -> ApiError:
    """A schema failure as a coded error: 400 for a body that is not JSON, else 422."""
    errors = list(errors)
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "malformed_json", "the request body is not valid JSON")
    issues = [
        Issue(
            "error",
            str(e.get("type", "invalid")),
            ".".join(map(str, e["loc"][1:] if e["loc"][:1] == ("body",) else e["loc"])) or "body",
            str(e.get("msg", "invalid")),
        )
        for e in errors
    ]
    return ApiError(422, "invalid_request", "the request does not match the schema", issues)


@cache
def package_version() -> str:
    """The installed package's version (the OpenAPI `info.version` and the FHIR software)."""
    try:
        return version("cancer-triage")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
