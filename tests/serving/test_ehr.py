"""The EHR-facing routes end to end: FHIR as EHRs send it (validated with fhir.resources on every
answer), the CapabilityStatement, CDS Hooks built by hand from the spec's example, the result page
in a real browser, pinned versions, the index page and the JSON route's sample date."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from tests.serving.conftest import API_KEY, Released
from tests.serving.test_result_page import artifact, browser  # noqa: F401 (a fixture)

TODAY = datetime.now(UTC).date()


@pytest.fixture
def client(asgi_app: Any, serving_env: Path) -> Iterator[TestClient]:
    with TestClient(asgi_app) as test_client:
        yield test_client


def _fhir(client: TestClient, bundle: Any, **params: str) -> tuple[int, dict[str, Any]]:
    """POST a bundle; the answer validated as the R4B resource it claims to be."""
    response = client.post("/v1/fhir/score", json=bundle, params={"model": "lower_gi", **params})
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    kind = {"RiskAssessment": RiskAssessment, "OperationOutcome": OperationOutcome}
    kind[body["resourceType"]].model_validate(body)
    for contained in body.get("contained", []):
        OperationOutcome.model_validate(contained)
    return response.status_code, body


def _observation(bundle: dict[str, Any], loinc: str) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == loinc
    )


def _ignored(body: dict[str, Any]) -> dict[str, str]:
    """Observation reference -> the reason it was not used, from the contained OperationOutcome."""
    outcome = next(iter(body.get("contained", [])), body)
    return {
        issue["diagnostics"].removeprefix("about "): issue["details"]["coding"][1]["code"]
        for issue in outcome.get("issue", [])
        if issue["details"]["coding"][0]["code"] == "observation_ignored"
    }


def test_what_ehrs_send_is_never_scored_silently(client: TestClient) -> None:
    """Another patient's CRP, a future-dated CRP, an old platelet count, a `<` comparator and a
    preliminary result: each is left out and named; the age is not moved by the future date."""
    clean = fhir_bundle()
    status, plain = _fhir(client, clean)
    assert status == 200
    bundle = copy.deepcopy(clean)
    crp = _observation(bundle, "1988-5")
    other = copy.deepcopy(crp) | {"id": "other-crp", "subject": {"reference": "Patient/someone"}}
    future = copy.deepcopy(crp) | {"id": "future-crp", "effectiveDateTime": "2036-01-01"}
    future["valueQuantity"] = {**future["valueQuantity"], "value": 300}
    old = copy.deepcopy(_observation(bundle, "777-3"))
    old |= {"id": "old-plt", "effectiveDateTime": "2016-05-01"}
    less = copy.deepcopy(crp) | {"id": "less-crp"}
    less["valueQuantity"] = {**crp["valueQuantity"], "value": 5, "comparator": "<"}
    less["effectiveDateTime"] = f"{TODAY}T08:00:00+00:00"
    early = copy.deepcopy(crp) | {"id": "prelim-crp", "status": "preliminary"}
    early["effectiveDateTime"] = f"{TODAY}T09:00:00+00:00"
    for i, resource in enumerate((other, future, old, less, early)):
        bundle["entry"].append({"fullUrl": f"urn:uuid:extra-{i}", "resource": resource})
    status, body = _fhir(client, bundle)
    assert status == 200
    assert (
        body["prediction"][0]["probabilityDecimal"] == plain["prediction"][0]["probabilityDecimal"]
    )
    assert _ignored(body) == {
        "urn:uuid:extra-0": "other_patient", "urn:uuid:extra-1": "future_dated",
        "urn:uuid:extra-2": "outside_lookback", "urn:uuid:extra-3": "comparator",
        "urn:uuid:extra-4": "status_not_final",
    }  # fmt: skip
    basis = {b["reference"] for b in body["basis"]}
    assert not basis & {f"urn:uuid:extra-{i}" for i in range(5)}, "basis: only what was used"
    extension = body["extension"][0]["valueReference"]["reference"]
    assert extension == f"#{body['contained'][0]['id']}", "dom-3: the contained outcome is cited"


def test_bun_in_mg_dl_is_urea_nitrogen(client: TestClient) -> None:
    bundle = fhir_bundle()
    urea = _observation(bundle, "22664-7")
    urea["code"]["coding"][0]["code"] = "3094-0"
    urea["valueQuantity"] = {"value": 16.5, "unit": "mg/dL", "code": "mg/dL",
                             "system": "http://unitsofmeasure.org"}  # fmt: skip
    status, body = _fhir(client, bundle)
    analytes = {**EXAMPLE_PATIENT["analytes"], "urea": {"value": 16.5 * 10 / 28.014}}
    json_same = {**EXAMPLE_PATIENT, "analytes": analytes}
    expected = client.post("/v1/score", json=json_same).json()["probability"]
    assert status == 200
    assert body["prediction"][0]["probabilityDecimal"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("birth", ["1955", f"1955-{TODAY:%m}", f"{TODAY.year - 71}-01"])
def test_partial_dates_are_read_not_500(client: TestClient, birth: str) -> None:
    """A year (or this month) of birth leaves the age uncertain by one year: scored, with the
    warning; a month of birth already past this year is exact."""
    bundle = fhir_bundle()
    bundle["entry"][0]["resource"]["birthDate"] = birth
    status, body = _fhir(client, bundle)
    assert status == 200, body
    codes = [i["details"]["coding"][0]["code"] for c in body.get("contained", [])
             for i in c["issue"]]  # fmt: skip
    assert ("birth_date_partial" in codes) == (birth[5:] != "01"), codes


@pytest.mark.parametrize(
    ("body", "code"),
    [({"resourceType": "Patient", "id": "p1"}, "invalid_fhir"), ([], "invalid_fhir")],
)
def test_non_bundles_get_an_operation_outcome(client: TestClient, body: Any, code: str) -> None:
    status, outcome = _fhir(client, body)
    assert status == 422 and outcome["resourceType"] == "OperationOutcome"
    codes = {c["code"] for i in outcome["issue"] for c in i["details"]["coding"]}
    assert code in codes
    assert "pydantic" not in str(outcome) and "errors.pydantic.dev" not in str(outcome)


def test_an_empty_or_broken_body_is_an_operation_outcome(client: TestClient) -> None:
    for content in (b"", b"{not json"):
        response = client.post("/v1/fhir/score", content=content,
                               headers={"content-type": "application/fhir+json"})  # fmt: skip
        assert 400 <= response.status_code < 500, response.text
        OperationOutcome.model_validate(response.json())


def test_capability_statement(client: TestClient) -> None:
    response = client.get("/v1/fhir/metadata")
    assert response.status_code == 200
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.3.0"


@st.composite
def odd_bundles(draw: st.DrawFn) -> dict[str, Any]:
    """The example bundle with partial dates, odd but valid ids and mixed subjects."""
    bundle = fhir_bundle()
    date = st.sampled_from(
        ["1955", "1955-11", "1955-11-02", "2026", f"{TODAY:%Y-%m}", "2099-01-01",
         f"{TODAY}T23:59:59+14:00", f"{TODAY}T00:00:00-12:00"]
    )  # fmt: skip
    bundle["entry"][0]["resource"]["birthDate"] = draw(date.filter(lambda d: len(d) <= 10))
    for entry in bundle["entry"][1:]:
        resource = entry["resource"]
        resource["id"] = draw(st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True))
        resource["effectiveDateTime"] = draw(date)
        resource["status"] = draw(st.sampled_from(["final", "amended", "preliminary", "cancelled"]))
        if draw(st.booleans()):
            entry.pop("fullUrl")
        if draw(st.integers(0, 9)) == 0:
            resource["subject"] = {"reference": "Patient/another"}
    return bundle


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(bundle=odd_bundles())
def test_generated_bundles_never_5xx_and_every_answer_is_valid_fhir(
    asgi_app: Any, serving_env: Path, bundle: dict[str, Any]
) -> None:
    with TestClient(asgi_app) as client:
        _fhir(client, bundle)


def test_the_json_sample_date_is_used(client: TestClient) -> None:
    for days, status, code in ((400, 422, "sample_outside_lookback"),
                               (-30, 422, "future_sample_date"), (1, 200, None)):  # fmt: skip
        sampled = (TODAY - timedelta(days=days)).isoformat()
        response = client.post("/v1/score", json={**EXAMPLE_PATIENT, "sample_date": sampled})
        assert response.status_code == status, response.text
        if code:
            assert code in [i["code"] for i in response.json()["error"]["issues"]]


def test_unit_hint_names_the_unit_meant(client: TestClient) -> None:
    patient = copy.deepcopy(EXAMPLE_PATIENT)
    patient["analytes"]["haemoglobin"] = {"value": 131, "unit": "g/dL"}
    issues = client.post("/v1/score", json=patient).json()["error"]["issues"]
    message = next(i["message"] for i in issues if i["code"] == "out_of_limits")
    assert message.endswith("did you mean 131 g/L?"), message


def test_models_lists_required_inputs_truthfully(client: TestClient, released: Released) -> None:
    model = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "lower_gi")
    required = {i["code"] for i in model["inputs"] if i["required"]}
    predictor = released.results["lower_gi"].predictor
    expected = {c for c in predictor.spec.features.analytes if predictor.is_required(c)}
    assert required == expected and "haematocrit" in required
    patient = copy.deepcopy(EXAMPLE_PATIENT)
    del patient["analytes"]["rdw"]
    issues = client.post("/v1/score", json=patient).json()["error"]["issues"]
    assert {"code": "missing_required_analyte", "field": "rdw"} in [
        {"code": i["code"], "field": i["field"]} for i in issues
    ]


def test_versions_can_be_pinned(client: TestClient, released: Released) -> None:
    version = client.post("/v1/score", json=EXAMPLE_PATIENT).json()["model"]["version"]
    pinned = client.post("/v1/score", json={**EXAMPLE_PATIENT, "model": f"lower_gi/{version}"})
    alias = client.post("/v1/score", json={**EXAMPLE_PATIENT, "model": "lower_gi@champion"})
    assert pinned.status_code == alias.status_code == 200, (pinned.text, alias.text)
    missing = client.post("/v1/score", json={**EXAMPLE_PATIENT, "model": "lower_gi/999"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model_version"


def test_the_index_page_loads_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<script" not in page.text and "https://" not in page.text
    assert page.headers["cache-control"] == "no-store"


def _hook(prefetch: dict[str, Any] | None) -> dict[str, Any]:
    """A patient-view request as the CDS Hooks 2.0 spec's example writes it."""
    request: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": "http://hooks.smarthealthit.org:9080",
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": "patient-0001"},
    }
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


def _prefetch() -> dict[str, Any]:
    bundle = fhir_bundle()
    patient = bundle["entry"][0]["resource"]
    observations = [e | {"resource": e["resource"] | {"subject": {
        "reference": "Patient/patient-0001"}}} for e in bundle["entry"][1:]]  # fmt: skip
    return {"patient": patient,
            "observations": {"resourceType": "Bundle", "type": "searchset",
                             "entry": observations}}  # fmt: skip


def _referral(pathway: str) -> dict[str, Any]:
    """An order being signed: an urgent referral on a pathway (the spec's order-sign context)."""
    order = {
        "resourceType": "ServiceRequest", "id": "referral-1", "status": "draft",
        "intent": "order", "priority": "urgent",
        "code": {"coding": [{"system": "urn:cancer-triage:pathway", "code": pathway}]},
        "subject": {"reference": "Patient/patient-0001"},
    }  # fmt: skip
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}


def test_cds_hooks_discovery_and_an_order_sign_card(client: TestClient) -> None:
    services = client.get("/v1/cds-services").json()["services"]
    view = next(s for s in services if s["hook"] == "patient-view")
    assert set(view["prefetch"]) == {"patient", "observations"}
    unrouted = client.post(f"/v1/cds-services/{view['id']}", json=_hook(_prefetch())).json()
    (card,) = unrouted["cards"]
    assert "pathway" in str(card).lower(), "without a referral pathway: what is missing"
    sign = next(s for s in services if s["hook"] == "order-sign")
    request = _hook(_prefetch()) | {"hook": "order-sign"}
    request["context"]["draftOrders"] = _referral("lower_gi")
    answer = client.post(f"/v1/cds-services/{sign['id']}", json=request)
    assert answer.status_code == 200, answer.text
    (card,) = answer.json()["cards"]
    json_score = client.post("/v1/score", json=EXAMPLE_PATIENT).json()
    assert json_score["band"] in card["summary"].lower() and len(card["summary"]) < 140
    assert (
        card["indicator"]
        == {"green": "info", "amber": "warning", "red": "critical"}[json_score["band"]]
    )
    assert card["source"]["label"].startswith("cancer-triage model lower_gi")
    link = card["links"][0]["url"]
    assert link.endswith(f"/v1/result/{request['hookInstance']}")
    again = client.post(f"/v1/cds-services/{sign['id']}", json=request)
    assert again.content == answer.content, "a retried hook gets the same cards"


def test_cds_hooks_without_the_results_says_what_is_missing(client: TestClient) -> None:
    prefetch = _prefetch()
    prefetch["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    services = client.get("/v1/cds-services").json()["services"]
    view = next(s for s in services if s["hook"] == "patient-view")
    answer = client.post(f"/v1/cds-services/{view['id']}", json=_hook(prefetch))
    assert answer.status_code == 200
    (card,) = answer.json()["cards"]
    assert "not available" in card["summary"].lower() or "missing" in card["summary"].lower()
    missing = client.post(f"/v1/cds-services/{view['id']}", json=_hook(None))
    assert missing.status_code == 412, "no prefetch and no FHIR calls of our own"


def test_the_result_page_of_a_stored_score(client: TestClient) -> None:
    scored = client.post("/v1/score", json=EXAMPLE_PATIENT, headers={"x-request-id": "page-1"})
    page = client.get("/v1/result/page-1")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"{100 * scored.json()['probability']:.1f}%" in page.text
    assert "example-patient-0001" not in page.text, "no patient identifier"
    assert client.get("/v1/result/never-sent").status_code == 404


def test_the_served_result_page_in_chromium(browser: Any, live_server: dict[str, Any]) -> None:  # noqa: F811
    """The page as an EHR iframe gets it: from the live server, behind the API key."""
    headers = {"x-api-key": API_KEY, "x-request-id": f"browser-{uuid.uuid4().hex[:8]}"}
    url = live_server["url"]
    response = httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT, headers=headers, timeout=30)
    assert response.status_code == 200
    context = browser.new_context(viewport={"width": 400, "height": 900},
                                  extra_http_headers={"x-api-key": API_KEY})  # fmt: skip
    tab = context.new_page()
    elsewhere: list[str] = []
    tab.on("request", lambda r: None if r.url.startswith(url) else elsewhere.append(r.url))
    loaded = tab.goto(f"{url}/v1/result/{headers['x-request-id']}")
    assert loaded is not None and loaded.status == 200
    assert tab.locator(".band").is_visible()
    assert tab.get_by_role("img", name="How each result moved the estimate").count() == 1
    shot = artifact("served_result_page_400px.png")
    tab.screenshot(path=str(shot), full_page=True)
    context.close()
    assert shot.stat().st_size > 10_000 and elsewhere == [], elsewhere
    denied = httpx.get(f"{url}/v1/result/{headers['x-request-id']}", timeout=30)
    assert denied.status_code == 401, "behind the same key as the scoring routes"
