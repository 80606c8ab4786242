"""The triage API through the in-process ASGI app: parity, additivity, FHIR, errors, audit."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from models.analytes import CATALOGUE
from serving.audit import AuditStore
from serving.config import ServingConfig
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from serving.middleware import current_config
from tests.serving.conftest import Released

FBC_RENAL = ("haemoglobin", "wbc", "platelets", "sodium", "potassium", "creatinine")


@pytest.fixture
def client(asgi_app: Any, serving_env: Path) -> Iterator[TestClient]:
    with TestClient(asgi_app) as test_client:
        yield test_client


def _request(row: pd.Series, model: str) -> dict[str, Any]:
    """An API request for one cohort row: every result it has (canonical units; Hb in its
    reported unit), as the models require each input they never saw missing."""
    analytes = {}
    for code in (c for c in row.index if c in CATALOGUE):
        if pd.notna(row[code]):
            unit = row.get("haemoglobin_unit") if code == "haemoglobin" else None
            analytes[code] = {"value": float(row[code]), "unit": unit}
    return {"model": model, "pathway": row["pathway"], "age": float(row["age"]),
            "sex": row["sex"], "analytes": analytes}  # fmt: skip


def _eligible_rows(released: Released, pathway: str, n: int) -> pd.DataFrame:
    rows = released.cohort[released.cohort["pathway"] == pathway]
    rows = rows[rows[list(FBC_RENAL)].notna().all(axis=1) & ~rows["artefact_wrong_unit"]]
    return rows.head(n)


def test_api_probability_equals_the_predictor_exactly(
    client: TestClient, released: Released
) -> None:
    predictor = released.results["lower_gi"].predictor
    for _, row in _eligible_rows(released, "lower_gi", 40).iterrows():
        request = _request(row, "lower_gi")
        response = client.post("/v1/score", json=request)
        assert response.status_code == 200, response.text
        body = response.json()
        values = predictor.score(request, pathway="lower_gi").values
        frame = pd.DataFrame([{**values, "age": request["age"], "sex": request["sex"]}])
        expected = predictor.predict(frame)["probability"].iloc[0]
        assert body["probability"] == expected, "API and TriagePredictor.predict agree exactly"
        logit = math.log(body["probability"] / (1 - body["probability"]))
        total = body["base"] + sum(body["contributions"].values())
        assert abs(total - logit) < 1e-9, "base + sum(contributions) == logit(probability)"
        assert abs(sum(body["contributions_by_panel"].values()) - (total - body["base"])) < 1e-9
        band = body["band"]
        t = body["thresholds"]
        assert (band == "green") == (
            t["rule_out"] is not None and body["probability"] < t["rule_out"]
        )


def test_same_patient_in_g_per_dl_and_g_per_l_scores_the_same(client: TestClient) -> None:
    in_g_dl = copy.deepcopy(EXAMPLE_PATIENT)
    in_g_l = copy.deepcopy(EXAMPLE_PATIENT)
    in_g_l["analytes"]["haemoglobin"] = {"value": 109, "unit": "g/L"}
    a, b = client.post("/v1/score", json=in_g_dl), client.post("/v1/score", json=in_g_l)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["probability"] == b.json()["probability"], "units never change the score"
    warnings = {w["code"] for w in a.json()["warnings"]}
    assert "unit_converted" in warnings, "the conversion is reported"


def test_any_cancer_needs_a_pathway_and_uses_it(client: TestClient) -> None:
    request = {**EXAMPLE_PATIENT, "model": "any_cancer"}
    missing = client.post("/v1/score", json=request)
    assert missing.status_code == 422
    assert missing.json()["error"]["issues"][0]["code"] == "missing_pathway"
    scored = client.post("/v1/score", json={**request, "pathway": "lower_gi"})
    assert scored.status_code == 200 and scored.json()["model"]["name"] == "any_cancer"


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.post("/v1/score", json={**EXAMPLE_PATIENT, "request_id": "req-123"})
    assert given.json()["request_id"] == "req-123"
    generated = client.post("/v1/score", json=EXAMPLE_PATIENT).json()["request_id"]
    assert len(generated) == 32, "a fresh id when the client gives none"


def _with(**analytes: Any) -> dict[str, Any]:
    request = copy.deepcopy(EXAMPLE_PATIENT)
    request["analytes"].update(analytes)
    return request


@pytest.mark.parametrize(
    ("request_body", "status", "code", "field"),
    [
        (_with(haemoglobin={"value": 10.9, "unit": "mg/L"}), 422, "unknown_unit", "haemoglobin"),
        (_with(haemoglobin={"value": 9.8, "unit": "g/L"}), 422, "out_of_limits", "haemoglobin"),
        ({**EXAMPLE_PATIENT, "analytes": {"crp": {"value": 3, "unit": "mg/L"}}}, 422,
         "missing_required_panel", "fbc"),
        ({**EXAMPLE_PATIENT, "age": 16}, 422, "age_out_of_range", "age"),
        ({**EXAMPLE_PATIENT, "sex": "unknown"}, 422, "invalid_sex", "sex"),
        ({**EXAMPLE_PATIENT, "colour": "red"}, 422, "extra_forbidden", "colour"),
        ({**EXAMPLE_PATIENT, "age": "old"}, 422, "float_type", "age"),
        ({**EXAMPLE_PATIENT, "age": True}, 422, "float_type", "age"),
        (_with(crp={"value": True, "unit": "mg/L"}), 422, "float_type", "analytes.crp.value"),
        ({**EXAMPLE_PATIENT, "model": "pancreas"}, 404, None, None),
        ({**EXAMPLE_PATIENT, "pathway": "brain"}, 422, "invalid_pathway", "pathway"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_coded_4xx(
    client: TestClient, request_body: dict[str, Any], status: int, code: str | None,
    field: str | None,
) -> None:  # fmt: skip
    response = client.post("/v1/score", json=request_body)
    assert response.status_code == status, response.text
    if code is not None:
        issues = response.json()["error"]["issues"]
        assert any(i["code"] == code and i["field"] == field for i in issues), issues


def test_out_of_limits_carries_the_unit_hint(client: TestClient) -> None:
    body = client.post("/v1/score", json=_with(haemoglobin={"value": 9.8, "unit": "g/L"})).json()
    (issue,) = [i for i in body["error"]["issues"] if i["code"] == "out_of_limits"]
    assert "9.8 g/dL = 98 g/L" in issue["message"]


def test_outside_training_range_is_worded_at_the_analytes_precision(client: TestClient) -> None:
    body = client.post("/v1/score", json=_with(haemoglobin={"value": 31, "unit": "g/L"})).json()
    (warning,) = [
        w for w in body["warnings"]
        if w["code"] == "outside_training_range" and w["field"] == "haemoglobin"
    ]  # fmt: skip
    expected = r"Haemoglobin 31 g/L is beyond the range seen in training \(\d+-\d+\);"
    assert re.match(expected, warning["message"]), warning["message"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/score", content=b'{"age": 70,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"


def test_body_over_the_limit_is_413(
    asgi_app: Any, serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_MAX_BODY_BYTES", "2048")
    current_config.cache_clear()
    with TestClient(asgi_app) as client:
        padded = {**EXAMPLE_PATIENT, "patient_reference": "x" * 100}
        big = {"patients": [padded] * 20}
        assert client.post("/v1/score/batch", json=big).status_code == 413
        assert client.post("/v1/score", json=EXAMPLE_PATIENT).status_code == 200


def test_batch_scores_and_refuses_item_by_item(client: TestClient) -> None:
    bad = _with(haemoglobin={"value": 9.8, "unit": "g/L"})
    response = client.post("/v1/score/batch", json={"patients": [EXAMPLE_PATIENT, bad]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["scored", "refused"]
    assert results[1]["error"]["issues"][0]["code"] == "out_of_limits"


def test_batch_is_bounded(client: TestClient) -> None:
    limit = current_config().max_batch
    response = client.post("/v1/score/batch", json={"patients": [EXAMPLE_PATIENT] * (limit + 1)})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "batch_too_large"


def test_fhir_round_trip(client: TestClient) -> None:
    bundle = fhir_bundle()
    response = client.post("/v1/fhir/score", json=bundle, params={"model": "lower_gi"})
    assert response.status_code == 200, response.text
    assessment = response.json()
    assert assessment["resourceType"] == "RiskAssessment"
    assert assessment["subject"]["reference"] == "urn:uuid:patient-0001"
    observations = {e["fullUrl"] for e in bundle["entry"][1:]}
    assert {b["reference"] for b in assessment["basis"]} == observations, "basis cites inputs"
    prediction = assessment["prediction"][0]
    json_score = client.post("/v1/score", json=EXAMPLE_PATIENT).json()
    assert prediction["probabilityDecimal"] == pytest.approx(json_score["probability"], abs=1e-9)
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == json_score["band"]
    notes = [note["text"] for note in assessment["note"]]
    assert notes == [json_score["recommendation"], *(d["text"] for d in json_score["drivers"])], (
        "the note carries the recommendation and the top drivers in words"
    )


def test_fhir_errors_are_operation_outcomes(client: TestClient) -> None:
    bundle = fhir_bundle()
    bundle["entry"][0]["resource"]["gender"] = "unknown"
    response = client.post("/v1/fhir/score", json=bundle, params={"model": "lower_gi"})
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    codes = [i["details"]["coding"][0]["code"] for i in outcome["issue"]]
    assert "unsupported_sex" in codes
    broken = client.post("/v1/fhir/score", json={"resourceType": "Bundle", "type": "nonsense"})
    assert broken.status_code == 422


def test_discovery_lists_each_model(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"any_cancer", "lower_gi"}
    hb = next(i for i in models["lower_gi"]["inputs"] if i["code"] == "haemoglobin")
    assert hb["loinc"] == "718-7" and "g/dL" in hb["accepted_units"]
    assert set(models["lower_gi"]["thresholds"]) >= {"rule_out", "rule_in"}, "None: not set"


def test_audit_rows_equal_answered_requests(asgi_app: Any, serving_env: Path) -> None:
    """One row per scored patient and one per refused patient (a clinical decision point too,
    with its reason codes and no score); none for a request that never reached a model."""
    config = current_config()
    scored = refused = 0
    with TestClient(asgi_app) as client:
        requests = [EXAMPLE_PATIENT, _with(haemoglobin={"value": 9.8, "unit": "g/L"}),
                    {**EXAMPLE_PATIENT, "patient_reference": "NHS-943-476-5919"}]  # fmt: skip
        for request in requests:
            status = client.post("/v1/score", json=request).status_code
            scored, refused = scored + (status == 200), refused + (status == 422)
        batch = client.post("/v1/score/batch", json={"patients": requests}).json()
        scored += sum(r["status"] == "scored" for r in batch["results"])
        refused += sum(r["status"] == "refused" for r in batch["results"])
        fhir = client.post("/v1/fhir/score", json=fhir_bundle(), params={"model": "lower_gi"})
        scored += fhir.status_code == 200
        assert client.post("/v1/score", content=b"{", headers={"content-type": "application/json"}
                           ).status_code == 400, "not audited: no patient was read"  # fmt: skip
    store = AuditStore(config.audit_url, config.hmac_key.get_secret_value())
    rows = list(store.rows())
    assert (scored, refused) == (5, 2)
    assert sum(r["outcome"] == "scored" for r in rows) == scored
    refusals = [r for r in rows if r["outcome"] == "refused"]
    assert len(refusals) == refused and all(r["probability"] is None for r in refusals)
    assert all("out_of_limits" in r["reason_codes"] for r in refusals), "with its reasons"
    assert store.verify().ok and store.integrity_problems() == []
    pseudonyms = {r["patient_pseudonym"] for r in rows}
    assert "NHS-943-476-5919" not in str(rows), "the raw reference is never stored"
    assert any(p and len(p) == 64 for p in pseudonyms), "a keyed HMAC is stored instead"
    exported = store.export_parquet(serving_env / "audit.parquet")
    assert exported == 7 and len(pd.read_parquet(serving_env / "audit.parquet")) == 7


def test_api_keys_are_required_when_configured(
    asgi_app: Any, serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_API_KEYS", "s3cret-key-1,other-key-2")
    current_config.cache_clear()
    config = ServingConfig.from_env()
    assert "s3cret-key-1" not in config.model_dump_json(), "keys are held hashed only"
    with TestClient(asgi_app) as client:
        assert client.post("/v1/score", json=EXAMPLE_PATIENT).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/score", json=EXAMPLE_PATIENT, headers=wrong).status_code == 401
        good = {"Authorization": "Bearer s3cret-key-1"}
        assert client.post("/v1/score", json=EXAMPLE_PATIENT, headers=good).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "other-key-2"}).status_code == 200
        assert client.get("/livez").status_code == 200, "probes stay open"
        assert client.get("/readyz").status_code == 200


def test_openapi_documents_every_route_and_error(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    for path in ("/v1/score", "/v1/score/batch", "/v1/fhir/score", "/v1/models"):
        assert path in spec["paths"], f"{path} is documented"
    responses = spec["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "415", "422", "429", "504"} <= set(responses)
    from serving.api import package_version

    assert spec["info"]["title"] == "Cancer triage API"
    assert spec["info"]["version"] == package_version() != "None"
    assert "request_id_reused" in spec["info"]["description"], "the error codes are documented"
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path in (
        "/v1/fhir/score",
        "/v1/fhir/metadata",
        "/v1/cds-services",
        "/v1/result/{request_id}",
    ):
        for operation in spec["paths"][path].values():
            assert "504" in operation["responses"], f"{path}: every route may time out"
    assert spec["paths"]["/livez"]["get"]["security"] == [], "probes need no key"
    body = spec["paths"]["/v1/fhir/score"]["post"]["requestBody"]["content"]
    assert "application/fhir+json" in body, "the FHIR body is typed"


def test_predictor_parity_on_numpy_level(released: Released) -> None:
    """The vectorised and per-record paths compute identical margins (what parity rests on)."""
    predictor = released.results["lower_gi"].predictor
    rows = released.results["lower_gi"].periods["evaluate"].head(50)
    frame_p = predictor.predict(rows)["probability"].to_numpy()
    record_p = [
        predictor.score(
            {"age": r["age"], "sex": r["sex"],
             "analytes": {c: {"value": r[c], "unit": None}
                          for c in predictor.spec.features.analytes if pd.notna(r[c])}},
            pathway="lower_gi", explain=False,
        ).probability
        for _, r in rows.iterrows()
    ]  # fmt: skip
    assert np.array_equal(frame_p, np.array(record_p))


def test_per_key_rate_limit_answers_429(
    asgi_app: Any, serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_API_KEYS", "key-a,key-b")
    monkeypatch.setenv("TRIAGE_RATE_LIMIT", "3")
    current_config.cache_clear()
    with TestClient(asgi_app) as client:
        a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
        codes = [client.get("/v1/models", headers=a).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes
        limited = client.get("/v1/models", headers=a)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert client.get("/v1/models", headers=b).status_code == 200, "limits are per key"


def test_fhir_age_is_completed_years_as_in_training() -> None:
    from datetime import date

    from serving.fhir import completed_years

    assert completed_years(date(1955, 11, 2), date(2026, 11, 1)) == 70, "the day before"
    assert completed_years(date(1955, 11, 2), date(2026, 11, 2)) == 71, "the birthday"
    assert completed_years(date(2000, 2, 29), date(2001, 2, 28)) == 0, "leap-day birth"
    assert completed_years(date(2000, 2, 29), date(2001, 3, 1)) == 1
