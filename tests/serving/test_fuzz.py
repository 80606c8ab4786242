"""Fuzzing the served OpenAPI document with schemathesis: no 5xx, no off-schema response.

Every operation in the live server's /docs.json (the triage routes and BentoML's probes) gets
schema-generated requests over loopback HTTP; at least 1,000 cases run in total. (schemathesis'
pytest plugin does not run under pytest 9, so the operations' strategies are driven directly.)
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import SECRETS
from tests.serving.conftest import API_KEY

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 400
MIN_CASES = 1000


def fuzz_operation(operation: Any, ran: dict[str, int], headers: dict[str, str]) -> None:
    """Run schema-generated cases of one operation through every check."""
    label = f"{operation.method.upper()} {operation.path}"
    ran[label] = 0

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        # The server's access log records each request's path, as it should; schemathesis draws
        # strings from the schema's examples, and once sent the example patient reference as a
        # CDS service id (`/v1/cds-services/example-patient-0001`), which the log scan then
        # found. A path is not where a patient reference goes: such draws are skipped, so the
        # scan stays strict for everything the server writes on its own.
        assume(not any(s in str(v) for v in (case.path_parameters or {}).values() for s in SECRETS))
        ran[label] += 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()


def test_every_operation_conforms_to_the_served_schema(live_server: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server['url']}/docs.json")
    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        fuzz_operation(result.ok(), ran, {"Authorization": f"Bearer {API_KEY}"})
    assert {"POST /v1/score", "POST /v1/score/batch", "POST /v1/fhir/score"} <= set(ran), ran
    assert sum(ran.values()) >= MIN_CASES, f"only {sum(ran.values())} cases ran: {ran}"
    print(ran)
