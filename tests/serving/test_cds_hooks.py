"""CDS Hooks 2.0 (STU2 2.0.1): discovery, hook requests and cards, checked against the spec's text.

The conformance checks below are written from the published spec (HL7/cds-hooks, tag v2.0.1,
input/pagecontent/index.md: "Discovery" > "Response", "Calling a CDS Service" > "HTTP Request",
"CDS Service Response" > "Card Attributes", "Source", "Link"; hook contexts from the patient-view
and order-sign pages of the same release).
"""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.analytes import CATALOGUE
from models.spec import load_spec
from serving.cds_hooks import (
    ORDER_SIGN,
    PATHWAY_SYSTEM,
    PATIENT_VIEW,
    HookProblem,
    HookRequest,
    cards_for_problem,
    cards_for_score,
    discovery,
    parse_hook_request,
    problem_for_refusal,
)
from serving.fhir import parse_bundle
from serving.schemas import ScoreResponse

SECRET_TOKEN = "some-opaque-fhir-access-token"


def described(name: str) -> dict[str, Any]:
    """A model description as /v1/models lists it (TriagePredictor.describe() + version), built
    from the shipped spec and catalogue, with the outcome the result wording needs."""
    spec = load_spec(name)
    return {
        "name": spec.name,
        "version": "3",
        "title": spec.title,
        "intended_use": spec.intended_use,
        "not_for": list(spec.not_for),
        "outcome": spec.outcome.model_dump(),
        "inputs": [
            {"code": a.code, "name": a.name, "loinc": a.loinc, "unit": a.unit, "required": False}
            for a in (CATALOGUE[c] for c in spec.features.analytes)
        ],
    }


# --- the spec's required fields, as checks ------------------------------------------------------

SERVICE_FIELDS = {"hook", "title", "description", "id", "prefetch", "usageRequirements"}
CARD_FIELDS = {
    "uuid",
    "summary",
    "detail",
    "indicator",
    "source",
    "suggestions",
    "selectionBehavior",
    "overrideReasons",
    "links",
}


def assert_discovery_conforms(document: dict[str, Any]) -> None:
    assert set(document) == {"services"} and isinstance(document["services"], list), document
    for service in document["services"]:
        assert set(service) <= SERVICE_FIELDS, f"fields the spec does not define: {service}"
        for required in ("hook", "description", "id"):
            assert isinstance(service[required], str) and service[required], required
        for key, template in service.get("prefetch", {}).items():
            assert isinstance(key, str) and isinstance(template, str), (key, template)
            tokens = re.findall(r"\{\{([^}]*)\}\}", template)
            # Prefetch tokens: root-level context fields only ("Prefetch tokens").
            assert set(tokens) <= {"context.patientId", "context.userId"}, tokens


def assert_card_conforms(card: dict[str, Any]) -> None:
    assert set(card) <= CARD_FIELDS, f"fields the spec does not define: {set(card) - CARD_FIELDS}"
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140, card["summary"]
    assert card["indicator"] in ("info", "warning", "critical"), card["indicator"]
    assert isinstance(card["source"]["label"], str) and card["source"]["label"], card["source"]
    assert isinstance(card.get("detail", ""), str)
    if "uuid" in card:
        uuid.UUID(card["uuid"])
    if "suggestions" in card:
        assert card.get("selectionBehavior") in ("at-most-one", "any"), "suggestions need it"
    for link in card.get("links", []):
        assert {"label", "url", "type"} <= set(link) and link["type"] in ("absolute", "smart")
        if link["type"] == "absolute":
            assert re.match(r"^https?://", link["url"]) and "appContext" not in link, link


def assert_response_conforms(response: dict[str, Any]) -> None:
    assert isinstance(response["cards"], list), "cards is REQUIRED"
    assert set(response) <= {"cards", "systemActions"}, response
    for card in response["cards"]:
        assert_card_conforms(card)
    json.dumps(response)  # plain JSON, nothing a client cannot decode


# --- requests built by hand from the spec's example --------------------------------------------

# "Calling a CDS Service" > "Example", as published (its prefetch key is that example service's).
SPEC_EXAMPLE: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": SECRET_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}
AS_OF = date(2026, 3, 2)
RESULTS = [  # LOINC, value, UCUM unit
    ("718-7", 109, "g/L"),
    ("4544-3", 0.33, "L/L"),
    ("789-8", 4.1, "10*12/L"),
    ("787-2", 78, "fL"),
    ("785-6", 26.6, "pg"),
    ("786-4", 330, "g/L"),
    ("788-0", 15.1, "%"),
    ("777-3", 455, "10*9/L"),
    ("32623-1", 10.1, "fL"),
    ("6690-2", 7.9, "10*9/L"),
    ("751-8", 5.2, "10*9/L"),
    ("731-0", 1.8, "10*9/L"),
    ("742-7", 0.6, "10*9/L"),
    ("711-2", 0.2, "10*9/L"),
    ("704-7", 0.05, "10*9/L"),
    ("2951-2", 139, "mmol/L"),
    ("2823-3", 4.4, "mmol/L"),
    ("3094-0", 14, "mg/dL"),
    ("14682-9", 88, "umol/L"),
]


def observation(index: int, loinc: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "fullUrl": f"http://hooks.smarthealthit.org:9080/Observation/lab-{index}",
        "resource": {
            "resourceType": "Observation",
            "id": f"lab-{index}",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": {"reference": "Patient/1288992"},
            "effectiveDateTime": "2026-02-20T09:30:00+00:00",
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        },
    }


def hook_request(hook: str = "patient-view", **changes: Any) -> dict[str, Any]:
    """The spec's example with this service's prefetch keys satisfied (Patient + a searchset)."""
    body = copy.deepcopy(SPEC_EXAMPLE)
    body["hook"] = hook
    body["prefetch"] = {
        "patient": body["prefetch"]["patientToGreet"],
        "observations": {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(RESULTS),
            "entry": [observation(i, *r) for i, r in enumerate(RESULTS)],
        },
    }
    body.update(changes)
    return body


def referral(**changes: Any) -> dict[str, Any]:
    """A draft urgent referral (R4 ServiceRequest) coded with the lower-GI pathway."""
    resource = {
        "resourceType": "ServiceRequest",
        "id": "referral-1",
        "status": "draft",
        "intent": "order",
        "priority": "urgent",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "3457005",
                        "display": "Patient referral",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": PATHWAY_SYSTEM, "code": "lower_gi"}]},
        "subject": {"reference": "Patient/1288992"},
    }
    resource.update(changes)
    return resource


def order_sign(*orders: dict[str, Any]) -> dict[str, Any]:
    body = hook_request("order-sign")
    medication = {
        "resourceType": "MedicationRequest",
        "id": "smart-MedicationRequest-103",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/1288992"},
    }
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [{"resource": medication}, *({"resource": o} for o in orders)],
    }
    return body


# --- discovery ----------------------------------------------------------------------------------


def test_discovery_lists_both_hooks_with_prefetch_for_the_patient_and_every_input_loinc() -> None:
    models = [described("lower_gi"), described("any_cancer")]
    document = discovery(models, CATALOGUE)
    assert_discovery_conforms(document)
    services = {s["id"]: s for s in document["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-sign"}
    assert set(services) == {PATIENT_VIEW, ORDER_SIGN}
    prefetch = services[PATIENT_VIEW]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}", "a read of the Patient"
    query = prefetch["observations"]
    path, _, params = query.partition("?")
    fields = dict(p.split("=", 1) for p in params.split("&"))
    assert path == "Observation" and fields["patient"] == "{{context.patientId}}"
    # Only the spec's recommended query subset: reference, token equality, _sort, _count.
    assert set(fields) == {"patient", "code", "_sort", "_count"} and fields["_sort"] == "-date"
    codes = fields["code"].split(",")
    assert all(c.startswith("http://loinc.org|") for c in codes)
    loincs = {c.split("|")[1] for c in codes}
    wanted = {i["loinc"] for m in models for i in m["inputs"]}
    assert wanted <= loincs, f"input LOINCs not prefetched: {wanted - loincs}"
    assert {"3094-0", "3091-6", "2160-0"} <= loincs, "the catalogue's alternative codes too"
    assert len(codes) == len(loincs), "each code once"
    assert int(fields["_count"]) >= 10 * len(codes), "room for the latest of each code"
    assert services[ORDER_SIGN]["prefetch"] == prefetch


def test_discovery_without_a_served_model_lists_no_service() -> None:
    document = discovery([])
    assert document == {"services": []}, "the spec: no services -> an empty array, still 200"


# --- hook requests -----------------------------------------------------------------------------


def test_the_spec_example_with_our_prefetch_becomes_a_bundle_the_fhir_parser_scores() -> None:
    result = parse_hook_request(hook_request(), PATIENT_VIEW)
    assert isinstance(result, HookRequest), result
    assert (result.hook, result.patient_id) == ("patient-view", "1288992")
    assert result.hook_instance == SPEC_EXAMPLE["hookInstance"]
    Bundle.model_validate(result.bundle)  # a valid R4B Bundle
    assert SECRET_TOKEN not in repr(result), "the fhirAuthorization token is dropped unread"
    assert "smarthealthit" not in json.dumps(result.bundle["entry"][0]), "no server is named"
    parsed = parse_bundle(result.bundle, CATALOGUE, as_of=AS_OF)
    assert parsed.record["sex"] == "male" and parsed.record["age"] == 100, parsed.record
    assert parsed.subject == "Patient/1288992"
    analytes = parsed.record["analytes"]
    assert len(analytes) == len(RESULTS), f"every prefetched result used: {sorted(analytes)}"
    assert len(parsed.basis) == len(RESULTS)
    assert parsed.basis[0].startswith("http://hooks.smarthealthit.org:9080/Observation/")


def test_the_spec_example_as_published_lacks_our_prefetch_keys_so_412() -> None:
    result = parse_hook_request(copy.deepcopy(SPEC_EXAMPLE), PATIENT_VIEW)
    assert isinstance(result, HookProblem), result
    assert (result.status, result.code) == (412, "prefetch_missing"), result
    assert result.missing == ("patient", "observations"), "it names the keys it needed"
    assert "never queries" in result.message


def test_order_sign_with_an_urgent_referral_carries_its_pathway() -> None:
    result = parse_hook_request(order_sign(referral()), ORDER_SIGN)
    assert isinstance(result, HookRequest), result
    assert (result.pathway, result.referral) == ("lower_gi", "ServiceRequest/referral-1")
    assert len(result.bundle["entry"]) == 1 + len(RESULTS), "only Patient + Observations"
    uncoded = referral(code={"text": "2WW lower GI"})
    result = parse_hook_request(order_sign(uncoded), ORDER_SIGN)
    assert isinstance(result, HookRequest) and result.pathway is None, "any_cancer will answer"
    assert result.referral == "ServiceRequest/referral-1"


def test_order_sign_without_an_urgent_referral_gets_no_card() -> None:
    routine = referral(priority="routine", code={"text": "dermatology"})
    for body in (order_sign(), order_sign(routine)):
        result = parse_hook_request(body, ORDER_SIGN)
        assert isinstance(result, HookProblem) and (result.status, result.code) == (
            200,
            "no_referral",
        ), result
        assert cards_for_problem(result) == {"cards": []}, "nothing to advise on: no card"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"code": {"coding": [{"system": PATHWAY_SYSTEM, "code": "elbow"}]}}, "invalid_pathway"),
        ({"subject": {"reference": "Patient/someone-else"}}, "invalid_request"),
    ],
)
def test_order_sign_refuses_an_unknown_pathway_or_another_patients_referral(
    change: dict[str, Any], code: str
) -> None:
    result = parse_hook_request(order_sign(referral(**change)), ORDER_SIGN)
    assert isinstance(result, HookProblem) and result.status == 400, result
    assert result.issues[0].code == code and result.issues[0].field == "context.draftOrders"


@pytest.mark.parametrize("service", [PATIENT_VIEW, ORDER_SIGN])
@pytest.mark.parametrize(
    ("prefetch", "code", "said"),
    [
        ({"patient": None}, "no_patient", "the Patient"),
        ({"observations": None}, "no_observations", "laboratory results"),
        (
            {"observations": {"resourceType": "Bundle", "type": "searchset", "total": 0}},
            "no_observations",
            "laboratory results",
        ),
        (
            {
                "observations": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "timeout",
                            "diagnostics": "lab system offline",
                        }
                    ],
                }
            },
            "no_observations",
            "lab system offline",
        ),
    ],
)
def test_prefetch_without_data_answers_a_card_saying_what_is_missing(
    service: str, prefetch: dict[str, Any], code: str, said: str
) -> None:
    body = order_sign(referral()) if service == ORDER_SIGN else hook_request()
    body["prefetch"].update(prefetch)
    result = parse_hook_request(body, service)
    assert isinstance(result, HookProblem) and (result.status, result.code) == (200, code), result
    response = cards_for_problem(result, described("lower_gi"), key="req-1")
    assert_response_conforms(response)
    (card,) = response["cards"]
    assert said in card["summary"] + card["detail"], card
    expected = "warning" if service == ORDER_SIGN else "info"
    assert card["indicator"] == expected, "info on chart opening, warning when signing"
    assert card["uuid"] == cards_for_problem(result, key="req-1")["cards"][0]["uuid"], "stable"


def hook_with(**changes: Any) -> dict[str, Any]:
    body = hook_request()
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return body


GARBAGE: list[tuple[Any, int, str]] = [
    (None, 400, "invalid_request"),
    ([], 400, "invalid_request"),
    ("patient-view", 400, "invalid_request"),
    (1e308, 400, "invalid_request"),
    ({}, 400, "invalid_request"),
    (hook_with(hook="order-sign"), 400, "invalid_request"),
    (hook_with(hook=...), 400, "invalid_request"),
    (hook_with(hookInstance="not-a-uuid"), 400, "invalid_request"),
    (hook_with(hookInstance=12), 400, "invalid_request"),
    (hook_with(context=["1288992"]), 400, "invalid_request"),
    (hook_with(context__patientId=...), 400, "invalid_request"),
    (hook_with(context__patientId="Patient/1288992"), 400, "invalid_request"),
    (hook_with(context__patientId="x" * 65), 400, "invalid_request"),
    (hook_with(fhirServer=...), 400, "invalid_request"),  # fhirAuthorization needs it
    (hook_with(prefetch=["patient"]), 400, "invalid_request"),
    (hook_with(prefetch=None), 412, "prefetch_missing"),
    (hook_with(prefetch__observations=...), 412, "prefetch_missing"),
    (hook_with(prefetch__patient="1288992"), 400, "invalid_prefetch"),
    (hook_with(prefetch__patient__resourceType="Practitioner"), 400, "invalid_prefetch"),
    (hook_with(prefetch__patient__id="999"), 400, "invalid_prefetch"),
    (hook_with(prefetch__observations=[]), 400, "invalid_prefetch"),
    (hook_with(prefetch__observations__entry=[1, 2]), 400, "invalid_prefetch"),
    (hook_with(prefetch__observations__entry="x"), 400, "invalid_prefetch"),
    (hook_with(prefetch__observations__resourceType="Patient"), 400, "invalid_prefetch"),
]


@pytest.mark.parametrize(("body", "status", "code"), GARBAGE)
def test_garbage_bodies_become_coded_problems_never_exceptions(
    body: Any, status: int, code: str
) -> None:
    result = parse_hook_request(body, PATIENT_VIEW)
    assert isinstance(result, HookProblem), f"accepted: {body!r:.200}"
    assert (result.status, result.code) == (status, code), result
    assert result.issues and all(i.code in (code, "invalid_pathway") for i in result.issues)


def test_order_sign_without_draft_orders_is_refused() -> None:
    body = order_sign(referral())
    shapes: list[Any] = [..., None, [], {"resourceType": "Bundle", "entry": {}}]
    for orders in shapes:
        if orders is ...:
            del body["context"]["draftOrders"]
        else:
            body["context"]["draftOrders"] = orders
        result = parse_hook_request(body, ORDER_SIGN)
        assert isinstance(result, HookProblem) and result.status == 400, (orders, result)
        assert result.issues[0].field == "context.draftOrders"


def test_an_unknown_service_is_404() -> None:
    result = parse_hook_request(hook_request(), "pgx-on-order-sign")
    assert isinstance(result, HookProblem) and (result.status, result.code) == (
        404,
        "unknown_service",
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "hook",
        "hookInstance",
        "context",
        "prefetch",
        "fhirServer",
        "context__patientId",
        "context__draftOrders",
        "prefetch__patient",
        "prefetch__observations",
        "prefetch__observations__entry",
        "prefetch__patient__id",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service=st.sampled_from([PATIENT_VIEW, ORDER_SIGN]), path=FIELDS, value=JSON)
def test_any_json_anywhere_gives_a_request_or_a_coded_problem(
    service: str, path: str, value: Any
) -> None:
    body = order_sign(referral()) if service == ORDER_SIGN else hook_request()
    target = body
    *parents, last = path.split("__")
    for parent in parents:
        target = target[parent]
    target[last] = value
    result = parse_hook_request(body, service)
    assert isinstance(result, HookRequest | HookProblem)
    if isinstance(result, HookProblem) and result.status == 200:
        assert_response_conforms(cards_for_problem(result))
    elif isinstance(result, HookProblem):
        assert result.status in (400, 412) and result.issues, result
    else:  # the parser reads the resources; here only the Bundle's shape is promised
        kinds = [e["resource"]["resourceType"] for e in result.bundle["entry"]]
        assert kinds[0] == "Patient" and set(kinds[1:]) == {"Observation"}, kinds


# --- cards --------------------------------------------------------------------------------------


CONTRIBUTIONS = {
    "crp": 0.2309,
    "platelets": 0.2125,
    "mch": 0.1315,
    "albumin": -0.0965,
    "sex": 0.1313,
    "mcv": 0.1144,
}


def score_response(band: str = "amber", probability: float = 0.05676168215169888) -> dict[str, Any]:
    """A ScoreResponse as the service sends it (validated against the schema)."""
    drivers = [
        (
            "crp",
            0.2309,
            "C-reactive protein 14 mg/L, above the reference interval 0-5 mg/L, "
            "increased the estimated risk",
        ),
        (
            "platelets",
            0.2125,
            "Platelet count 455 ×10⁹/L, above the reference interval "
            "150-400 ×10⁹/L, increased the estimated risk",
        ),
        (
            "mch",
            0.1315,
            "Mean cell haemoglobin 24.8 pg, below the reference interval 27-33 pg, "
            "increased the estimated risk",
        ),
        (
            "albumin",
            -0.0965,
            "Albumin 41 g/L, within the reference interval 35-50 g/L, decreased the estimated risk",
        ),
    ]
    response = {
        "request_id": "req-7f3a",
        "model": {"name": "lower_gi", "version": "3", "run_id": "c4e7"},
        "probability": probability,
        "band": band,
        "recommendation": "Intermediate estimated risk: proceed with the urgent referral as usual.",
        "thresholds": {"rule_out": 0.004955792098431423, "rule_in": 0.10292843789466483},
        "base": math.log(probability / (1 - probability)) - sum(CONTRIBUTIONS.values()),
        "contributions": CONTRIBUTIONS,
        "contributions_by_panel": {"fbc": 0.4584, "inflammatory": 0.2309},
        "log_odds": math.log(probability / (1 - probability)),
        "drivers": [{"feature": f, "contribution": c, "text": t} for f, c, t in drivers],
        "warnings": [
            {
                "severity": "warning",
                "code": "unit_converted",
                "field": "haemoglobin",
                "message": "Haemoglobin converted from g/dL to g/L (x10)",
            },
            {
                "severity": "warning",
                "code": "unit_assumed",
                "field": "crp",
                "message": "CRP unit [see](http://evil.example) assumed",
            },
        ],
    }
    return ScoreResponse.model_validate(response).model_dump(mode="json")


def test_a_score_card_shows_band_probability_top_drivers_warnings_and_a_result_link() -> None:
    model = described("lower_gi")
    url = "https://triage.example.org/v1/result/req-7f3a"
    response = cards_for_score(score_response(), model, url)
    assert_response_conforms(response)
    (card,) = response["cards"]
    assert card["indicator"] == "warning", "amber -> warning"
    assert "Amber" in card["summary"] and "5.7%" in card["summary"], card["summary"]
    assert "**Amber band.** About 57 in 1,000 patients like this" in card["detail"]
    assert "within 12 months" in card["detail"], "lower_gi's horizon is 365 days"
    plain = card["detail"].replace("\\", "")
    for driver in score_response()["drivers"][:3]:
        assert driver["text"] in plain, driver["text"]
    assert "Albumin 41" not in plain, "only the top three drivers"
    assert "Haemoglobin converted from g/dL to g/L" in plain
    assert "](http" not in card["detail"] and "http://" not in card["detail"], (
        "text from a request never becomes a link (GFM autolinks a bare http://)"
    )
    assert card["source"]["label"] == "cancer-triage model lower_gi version 3"
    assert card["links"] == [
        {"label": "Full result and explanation", "url": url, "type": "absolute"}
    ]
    again = cards_for_score(score_response(), model, url)["cards"][0]["uuid"]
    assert card["uuid"] == again, "a retried hook gets the same card id"


@pytest.mark.parametrize(
    ("band", "probability", "indicator", "shown"),
    [
        ("green", 0.0031, "info", "0.31%"),
        ("amber", 0.05, "warning", "5.0%"),
        ("red", 0.2345, "critical", "23.4%"),
    ],
)
def test_the_indicator_follows_the_band(
    band: str, probability: float, indicator: str, shown: str
) -> None:
    (card,) = cards_for_score(score_response(band, probability), described("lower_gi"), None)[
        "cards"
    ]
    assert card["indicator"] == indicator and shown in card["summary"], card
    assert "links" not in card, "no result link without a URL"


def test_a_long_title_still_gives_a_summary_under_140_characters() -> None:
    model = {**described("lower_gi"), "title": "A very long model title " * 10}
    card = cards_for_score(score_response(), model, "/v1/result/req-7f3a")["cards"][0]
    assert_card_conforms(card)
    assert card["summary"].endswith("…") and "links" not in card, "a relative URL is not linked"


@pytest.mark.parametrize(
    ("issues", "code", "indicator"),
    [
        (
            [("missing_required_analyte", "haematocrit", "Haematocrit is required")],
            "missing_data",
            "warning",
        ),
        (
            [("age_out_of_range", "age", "age 16 is below the model's minimum 18")],
            "not_for_patient",
            "info",
        ),
        (
            [("out_of_limits", "haemoglobin", "Haemoglobin 131 g/dL is implausible")],
            "unreadable_results",
            "warning",
        ),
    ],
)
def test_a_refusal_becomes_a_card_that_says_why(
    issues: list[tuple[str, str, str]], code: str, indicator: str
) -> None:
    error = {
        "code": "ineligible",
        "message": "the record cannot be scored",
        "issues": [
            {"severity": "error", "code": c, "field": f, "message": m} for c, f, m in issues
        ],
    }
    problem = problem_for_refusal(error, ORDER_SIGN)
    assert (problem.status, problem.code) == (200, code), problem
    response = cards_for_problem(problem, described("lower_gi"), key="req-9")
    assert_response_conforms(response)
    (card,) = response["cards"]
    assert card["indicator"] == indicator, card
    assert issues[0][2] in card["summary"] + card["detail"].replace("\\", ""), card


def test_a_refusal_card_keeps_the_warnings_that_explain_the_missing_input() -> None:
    error = {
        "code": "ineligible",
        "message": "the record cannot be scored",
        "issues": [
            {
                "severity": "error",
                "code": "missing_required_panel",
                "field": "fbc",
                "message": "the full blood count is required",
            },
            {
                "severity": "warning",
                "code": "observation_ignored",
                "field": "Observation/lab-1",
                "message": "Observation/lab-1 (Haemoglobin) is older than the 90-day look-back",
            },
        ],
    }
    problem = problem_for_refusal(error, PATIENT_VIEW)
    assert problem.code == "missing_data" and problem.missing == (
        "the full blood count is required",
    )
    (card,) = cards_for_problem(problem, key="req-3")["cards"]
    assert card["indicator"] == "info", "missing data on chart opening: info, not a warning"
    assert "the full blood count is required" in card["summary"]
    assert "older than the 90-day look-back" in card["detail"], "why it is missing"
    birth = {
        "severity": "error",
        "code": "missing_birth_date",
        "field": "Patient.birthDate",
        "message": "Patient.birthDate is missing; age is needed to score",
    }
    assert problem_for_refusal({"issues": [birth]}, ORDER_SIGN).code == "missing_data"
