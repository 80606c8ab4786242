"""The JSON API's schemas: strict numbers, one request-id rule, batch items validated one by one,
a typed FHIR body in the OpenAPI document, and the one error envelope."""

from __future__ import annotations

import ast
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

import serving.middleware
from serving.examples import fhir_bundle
from serving.schemas import (
    ERROR_CODES,
    REQUEST_ID_PATTERN,
    BatchRequest,
    ErrorResponse,
    FhirBundle,
    FhirBundleBody,
    IssueOut,
    ScoreRequest,
    error_payload,
    valid_request_id,
)

PATIENT: dict[str, Any] = {
    "age": 71,
    "sex": "male",
    "analytes": {"haemoglobin": {"value": 131, "unit": "g/L"}},
}


def errors(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, location) of each schema error, for a request sent as JSON."""
    with pytest.raises(ValidationError) as caught:
        ScoreRequest.model_validate_json(json.dumps(body))
    return [(e["type"], ".".join(map(str, e["loc"]))) for e in caught.value.errors()]


def with_crp(value: Any) -> dict[str, Any]:
    return {**PATIENT, "analytes": {"crp": {"value": value, "unit": "mg/L"}}}


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, "5", None, "NaN"])
def test_a_value_that_is_not_a_json_number_is_refused(value: Any) -> None:
    assert errors(with_crp(value)) == [("float_type", "analytes.crp.value")], value


def test_a_boolean_age_is_refused() -> None:
    assert errors({**PATIENT, "age": True}) == [("float_type", "age")]


def test_integers_and_decimals_are_numbers() -> None:
    request = ScoreRequest.model_validate_json(json.dumps(with_crp(14)))
    assert request.age == 71.0 and isinstance(request.age, float)
    assert request.analytes["crp"].value == 14.0 and isinstance(
        request.analytes["crp"].value, float
    )
    assert ScoreRequest.model_validate(with_crp(0.25)).analytes["crp"].value == 0.25
    assert errors(with_crp(float("inf"))) == [("finite_number", "analytes.crp.value")]


def test_python_dicts_validate_like_json() -> None:
    """A batch route validates each item from the parsed body (Python mode), not from JSON."""
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate({**PATIENT, "age": True})
    parsed = ScoreRequest.model_validate({**PATIENT, "sample_date": "2026-11-23"})
    assert parsed.sample_date == date(2026, 11, 23), "an ISO string is a date in both modes"


# --- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [0, 20261123, True, "2026", "2026-11", "23/11/2026", "2026-11-23T00:00:00", "1700000000"],
)
def test_a_sample_date_is_a_full_iso_date(given: Any) -> None:
    (error,) = errors({**PATIENT, "sample_date": given})
    assert error == ("date_type", "sample_date"), error


def test_a_sample_date_is_kept_as_a_date() -> None:
    request = ScoreRequest.model_validate_json(json.dumps({**PATIENT, "sample_date": "2026-11-23"}))
    assert request.sample_date == date(2026, 11, 23)
    assert ScoreRequest.model_validate(PATIENT).sample_date is None


# --- request ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("Lab-2026.11.23-0001", True),
        ("9" * 64, True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("", False),
        ("a" * 65, False),
        ("int_fhir_24761", False),
        ("int:fhir:23955", False),
        ("sp ace", False),
        ("line\n", False),
        ("é", False),
        (None, False),
        (12, False),
    ],
)
def test_the_fhir_id_rule(value: Any, valid: bool) -> None:
    assert valid_request_id(value) is valid, repr(value)
    if not isinstance(value, str):
        return
    body = json.dumps({**PATIENT, "request_id": value})
    if valid:
        assert ScoreRequest.model_validate_json(body).request_id == value
    else:
        assert errors(json.loads(body)) == [("invalid_request_id", "request_id")], value


def test_the_pattern_is_fhirs() -> None:
    assert REQUEST_ID_PATTERN == r"^[A-Za-z0-9\-.]{1,64}$"


# --- batches -------------------------------------------------------------------------------------


def test_a_batch_takes_any_items_so_that_each_is_judged_alone() -> None:
    items = [PATIENT, {**PATIENT, "age": "x"}, 1, None, {**PATIENT, "request_id": "a_b"}]
    batch = BatchRequest.model_validate_json(json.dumps({"patients": items}))
    assert batch.patients == items, "nothing validated (or changed) at the batch level"
    judged = []
    for item in batch.patients:
        try:
            ScoreRequest.model_validate(item)
            judged.append("ok")
        except ValidationError as error:
            judged.append(error.errors()[0]["type"])
    assert judged == ["ok", "float_type", "model_type", "model_type", "invalid_request_id"]
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"patients": []})
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"patients": [PATIENT], "extra": 1})


# --- the OpenAPI document ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    app = FastAPI()

    @app.post("/score")
    def score(body: ScoreRequest) -> None: ...

    @app.post("/score/batch")
    def batch(body: BatchRequest) -> None: ...

    @app.post("/fhir/score")
    def fhir(bundle: FhirBundleBody) -> None: ...

    return app.openapi()


def test_openapi_shows_batch_items_as_score_requests(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["patients"]["items"] == {
        "$ref": "#/components/schemas/ScoreRequest"
    }
    request = schemas["ScoreRequest"]["properties"]
    assert request["request_id"]["anyOf"][0]["pattern"] == REQUEST_ID_PATTERN
    assert request["age"]["type"] == "number"
    assert schemas["AnalyteValue"]["properties"]["value"]["type"] == "number"
    assert request["sample_date"]["anyOf"][0] == {"type": "string", "format": "date"}


def test_openapi_shows_a_typed_fhir_bundle(openapi: dict[str, Any]) -> None:
    content = openapi["paths"]["/fhir/score"]["post"]["requestBody"]["content"]
    assert list(content) == ["application/fhir+json"]
    assert content["application/fhir+json"]["schema"]["$ref"] == "#/components/schemas/FhirBundle"
    bundle = openapi["components"]["schemas"]["FhirBundle"]
    assert bundle["properties"]["resourceType"]["const"] == "Bundle"
    assert "collection" in bundle["properties"]["type"]["enum"]
    assert set(bundle["required"]) == {"resourceType", "type"}
    entry = openapi["components"]["schemas"]["FhirBundleEntry"]["properties"]
    assert set(entry) == {"fullUrl", "resource"}, "FHIR's own (camelCase) names"


def test_the_bundle_model_reads_an_ehr_bundle() -> None:
    sent = fhir_bundle()
    sent["meta"] = {"lastUpdated": "2026-11-23T10:00:00+00:00"}  # elements it does not name
    bundle = FhirBundle.model_validate(sent)
    assert bundle.resource_type == "Bundle" and len(bundle.entry) == len(sent["entry"])
    assert bundle.entry[0].resource.resource_type == "Patient"
    assert bundle.model_dump(by_alias=True, exclude_unset=True) == sent, "nothing lost"
    with pytest.raises(ValidationError):
        FhirBundle.model_validate({"resourceType": "Patient", "type": "collection"})


# --- the error envelope --------------------------------------------------------------------------


def test_the_error_envelope_keeps_its_shape() -> None:
    issue = IssueOut(severity="error", code="out_of_limits", field="crp", message="implausible")
    body = json.loads(error_payload("req-1", "ineligible", "cannot be scored", [issue]))
    assert body == {
        "request_id": "req-1",
        "error": {
            "code": "ineligible",
            "message": "cannot be scored",
            "issues": [
                {
                    "severity": "error",
                    "code": "out_of_limits",
                    "field": "crp",
                    "message": "implausible",
                }
            ],
        },
    }
    assert set(ErrorResponse.model_fields) == {"request_id", "error"}


def test_the_fhir_error_is_a_valid_operation_outcome() -> None:
    issue = IssueOut(severity="warning", code="observation_ignored", field="entry[3]", message="x")
    raw = json.loads(error_payload("req-1", "rate_limited", "slow down", [issue], fhir=True))
    outcome = OperationOutcome.model_validate(raw)
    assert outcome.id == "req-1"
    assert [i["details"]["coding"][0]["code"] for i in raw["issue"]] == [
        "rate_limited",
        "observation_ignored",
    ]
    assert [i["code"] for i in raw["issue"]] == ["throttled", "informational"]


def test_every_code_a_middleware_answers_is_documented() -> None:
    """Codes passed as literals to `send_error` / `error_response` are all in ERROR_CODES."""
    tree = ast.parse(Path(serving.middleware.__file__).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            position = {"send_error": 3, "error_response": 2}.get(node.func.id)
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant):
                    used.add(argument.value)
    assert used >= {"invalid_request_id", "body_too_large", "unauthorised", "rate_limited"}
    assert used <= set(ERROR_CODES), used - set(ERROR_CODES)
    for code, (status, meaning) in ERROR_CODES.items():
        assert 400 <= status < 600 and meaning, code
