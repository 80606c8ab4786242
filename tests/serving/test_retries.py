"""Interface engines retry: a repeated request id is answered from the store, never a 5xx.

The contract (IETF Idempotency-Key draft): the same id with the same request returns the stored
response, byte for byte, with no second audit row; the same id with a different request is 422
`request_id_reused`; while the first is still being answered, 409 `request_in_progress`. Request
ids follow FHIR's id rule (`[A-Za-z0-9-.]{1,64}`) on every route, checked before anything is
audited. A Hypothesis state machine interleaves new, repeated and altered requests over the three
scoring routes and checks the audit trail against a model of what was acknowledged.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from starlette.testclient import TestClient

from serving.audit import AuditStore
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from serving.middleware import current_config
from tests.serving.conftest import API_KEY

ROUTES = ("score", "batch", "fhir")


def _send(client: Any, route: str, request_id: str | None, body: dict[str, Any],
          header: str = "x-request-id") -> Any:  # fmt: skip
    headers = {header: request_id} if request_id is not None else {}
    if route == "score":
        return client.post("/v1/score", json=body, headers=headers)
    if route == "batch":
        return client.post("/v1/score/batch", json={"patients": [body]}, headers=headers)
    return client.post("/v1/fhir/score", json=fhir_bundle(body), headers=headers,
                       params={"model": "lower_gi"})  # fmt: skip


def _patient(crp: float = 14.0) -> dict[str, Any]:
    patient = copy.deepcopy(EXAMPLE_PATIENT)
    patient["analytes"]["crp"] = {"value": crp, "unit": "mg/L"}
    return patient


@pytest.fixture
def client(asgi_app: Any, serving_env: Path) -> Iterator[TestClient]:
    with TestClient(asgi_app) as test_client:
        yield test_client


def _rows(request_id: str) -> list[dict[str, Any]]:
    store = AuditStore(current_config().audit_url)
    return [r for r in store.rows() if r["request_id"] == request_id]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("header", ["x-request-id", "idempotency-key"])
def test_a_retry_gets_the_stored_answer_and_no_second_row(
    client: TestClient, route: str, header: str
) -> None:
    request_id = f"retry-{route}-{header}"
    first = _send(client, route, request_id, _patient(), header)
    again = _send(client, route, request_id, _patient(), header)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.content == first.content, "the same bytes: same probability, same ids"
    assert again.headers["x-request-id"] == request_id
    assert len(_rows(request_id)) == 1, "one audit row, however many retries"


def test_the_json_body_request_id_is_the_same_key(client: TestClient) -> None:
    body = {**_patient(), "request_id": "body-id-1"}
    first = client.post("/v1/score", json=body)
    again = client.post("/v1/score", json=body)
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert len(_rows("body-id-1")) == 1


@pytest.mark.parametrize("route", ROUTES)
def test_the_same_id_with_a_different_request_is_422(client: TestClient, route: str) -> None:
    request_id = f"changed-{route}"
    assert _send(client, route, request_id, _patient(14)).status_code == 200
    changed = _send(client, route, request_id, _patient(55))
    assert changed.status_code == 422, changed.text
    body = changed.json()
    fhir = body.get("issue", [{}])[0].get("details", {}).get("coding", [{}])[0].get("code")
    code = body["error"]["code"] if "error" in body else fhir
    assert code == "request_id_reused"
    assert len(_rows(request_id)) == 1, "the altered request is not scored or audited"


def test_a_refusal_is_also_answered_from_the_store(client: TestClient) -> None:
    refused = {**_patient(), "age": 12}
    first = client.post("/v1/score", json=refused, headers={"x-request-id": "refused-1"})
    again = client.post("/v1/score", json=refused, headers={"x-request-id": "refused-1"})
    assert first.status_code == again.status_code == 422 and first.content == again.content
    (row,) = _rows("refused-1")
    assert row["outcome"] == "refused" and row["probability"] is None


@pytest.mark.parametrize("request_id", ["int_fhir_24761", "int:fhir:23955", "a" * 65, "sp ace", ""])
@pytest.mark.parametrize("route", ROUTES)
def test_request_ids_outside_the_fhir_id_rule_are_refused_before_audit(
    client: TestClient, route: str, request_id: str
) -> None:
    before = AuditStore(current_config().audit_url).count()
    response = _send(client, route, request_id, _patient())
    assert response.status_code == 400, response.text
    assert "invalid_request_id" in response.text
    assert AuditStore(current_config().audit_url).count() == before, "nothing audited"


def test_a_64_character_id_is_accepted_everywhere(client: TestClient) -> None:
    for route in ROUTES:
        request_id = f"{route}-" + "9" * (63 - len(route))
        assert len(request_id) == 64
        response = _send(client, route, request_id, _patient())
        assert response.status_code == 200, response.text


class Retries(RuleBasedStateMachine):
    """New, repeated and altered requests in any order; the store must match what was answered."""

    machines = 0

    def __init__(self) -> None:
        super().__init__()
        self.client = TestClient(_APP)
        self.client.__enter__()
        self.sent: dict[str, tuple[str, dict[str, Any], int, bytes]] = {}
        self.counter = 0
        Retries.machines += 1
        self.prefix = f"sm-{_RUN}-{Retries.machines}-"  # the store outlives one machine

    def teardown(self) -> None:
        self.client.__exit__(None, None, None)

    @rule(route=st.sampled_from(ROUTES), crp=st.sampled_from([3.0, 14.0, 80.0]),
          age=st.sampled_from([71, 45, 12]))  # fmt: skip
    def new_request(self, route: str, crp: float, age: int) -> None:
        self.counter += 1
        request_id = f"{self.prefix}{self.counter}"
        body = {**_patient(crp), "age": age}
        response = _send(self.client, route, request_id, body)
        assert response.status_code < 500, response.text
        self.sent[request_id] = (route, body, response.status_code, response.content)

    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        if not self.sent:
            return
        request_id = data.draw(st.sampled_from(sorted(self.sent)))
        route, body, status, content = self.sent[request_id]
        response = _send(self.client, route, request_id, body)
        assert (response.status_code, response.content) == (status, content)

    @rule(data=st.data())
    def alter(self, data: st.DataObject) -> None:
        if not self.sent:
            return
        request_id = data.draw(st.sampled_from(sorted(self.sent)))
        route, body, _, _ = self.sent[request_id]
        response = _send(self.client, route, request_id, {**body, "age": body["age"] + 1})
        assert response.status_code == 422 and "request_id_reused" in response.text

    @invariant()
    def one_row_per_acknowledged_request(self) -> None:
        rows = AuditStore(current_config().audit_url).rows()
        ids = {r["request_id"] for r in rows if r["request_id"].startswith(self.prefix)}
        answered = {i for i, (_, _, status, _) in self.sent.items() if status in (200, 422)}
        assert answered <= ids, "every answered (scored or refused) request is audited"
        assert ids <= set(self.sent), "nothing is audited that was not sent"


_APP: Any = None
_RUN = 0


def test_stateful_retries_never_5xx_and_keep_the_audit_exact(
    asgi_app: Any, serving_env: Path
) -> None:
    global _APP, _RUN
    _APP, _RUN = asgi_app, _RUN + 1
    Retries.TestCase.settings = settings(
        max_examples=15, stateful_step_count=12, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    Retries.TestCase().runTest()


def test_concurrent_duplicates_on_a_live_server(live_server: dict[str, Any]) -> None:
    """Eight copies of one request at once on a two-worker server: one is scored; each other copy
    gets the stored answer or 409 while the first is in flight; never a 5xx; one audit row."""
    url, headers = live_server["url"], {"x-api-key": API_KEY, "x-request-id": "concurrent-dup-1"}
    start = threading.Barrier(8)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as http:
            start.wait()
            return http.post("/v1/score", json=_patient(), headers=headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    bodies = {r.content for r in responses if r.status_code == 200}
    assert len(bodies) == 1, "every 200 is the same stored answer"
    conflicts = [r.json()["error"]["code"] for r in responses if r.status_code == 409]
    assert set(conflicts) <= {"request_in_progress"}
    store = AuditStore(
        f"sqlite:///{Path(live_server['env']['TRIAGE_HOME']).resolve() / 'serving' / 'audit.db'}"
    )
    assert len([r for r in store.rows() if r["request_id"] == "concurrent-dup-1"]) == 1
    retry = httpx.post(f"{url}/v1/score", json=_patient(), headers=headers, timeout=30)
    assert retry.status_code == 200 and retry.content in bodies


def test_a_retry_to_another_server_sharing_the_store_gets_the_stored_answer(
    live_server: dict[str, Any], tmp_path: Path
) -> None:
    """Two servers on one audit store (the several-servers set-up): a retry sent to the other
    server gets the first answer byte for byte; an altered request under the same id gets 422."""
    from serving.server import Server
    from tests.serving.conftest import LOG_DIR

    env = live_server["env"]
    store = f"sqlite:///{(Path(env['TRIAGE_HOME']) / 'serving' / 'audit.db').resolve()}"
    other = Server({**env, "TRIAGE_HOME": str(tmp_path / "other"), "TRIAGE_AUDIT_URL": store},
                   log=LOG_DIR / "second-server.log")  # fmt: skip
    headers = {"x-api-key": API_KEY, "x-request-id": "across-servers-1"}
    try:
        other.start()
        first = httpx.post(f"{live_server['url']}/v1/score", json=_patient(), headers=headers,
                           timeout=30)  # fmt: skip
        again = httpx.post(f"{other.url}/v1/score", json=_patient(), headers=headers, timeout=30)
        changed = httpx.post(f"{other.url}/v1/score", json=_patient(55), headers=headers,
                             timeout=30)  # fmt: skip
    finally:
        other.stop()
    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert changed.status_code == 422 and "request_id_reused" in changed.text
    rows = [r for r in AuditStore(store).rows() if r["request_id"] == "across-servers-1"]
    assert len(rows) == 1, "one audit row across both servers"
