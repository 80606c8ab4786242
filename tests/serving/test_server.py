"""One real `bentoml serve` on a free loopback port: readiness, parity, auth, metrics, audit."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx

from benchmarks.drills import RawHttp, http_request
from serving.audit import AuditStore
from serving.config import ServingConfig
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from tests.serving.conftest import API_KEY, Released


def test_real_server_scores_like_the_predictor(live_server: dict, released: Released) -> None:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{live_server['url']}/v1/score", json=EXAMPLE_PATIENT, headers=headers)
    assert response.status_code == 200, response.text
    expected = released.results["lower_gi"].predictor.score(EXAMPLE_PATIENT, pathway="lower_gi")
    assert response.json()["probability"] == expected.probability, "served == predictor, exactly"
    fhir = httpx.post(f"{live_server['url']}/v1/fhir/score", json=fhir_bundle(), headers=headers,
                      params={"model": "lower_gi"})  # fmt: skip
    assert fhir.status_code == 200 and fhir.json()["resourceType"] == "RiskAssessment"


def test_real_server_auth_probes_and_metrics(live_server: dict) -> None:  # type: ignore[type-arg]
    url = live_server["url"]
    assert httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT).status_code == 401
    assert httpx.get(f"{url}/livez").status_code == 200
    headers = {"X-API-Key": API_KEY}
    bad = {**EXAMPLE_PATIENT, "age": 12}
    assert httpx.post(f"{url}/v1/score", json=bad, headers=headers).status_code == 422
    metrics = httpx.get(f"{url}/metrics").text
    assert "triage_scores_total{band=" in metrics, "scores counted by model and band"
    assert "triage_probability_bucket" in metrics, "probability histogram exported"
    assert 'triage_refusals_total{code="age_out_of_range"' in metrics


def test_real_server_audit_rows_match_successes(live_server: dict) -> None:  # type: ignore[type-arg]
    url, headers = live_server["url"], {"X-API-Key": API_KEY}
    store = AuditStore(ServingConfig.from_env(live_server["env"]).audit_url)
    before = store.count()
    ok = sum(
        httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT, headers=headers).status_code == 200
        for _ in range(20)
    )
    assert store.count() - before == ok == 20, "every 200 has its audit row, written first"
    assert store.integrity_problems() == []


def test_real_server_outlasts_a_clients_keep_alive(live_server: dict) -> None:  # type: ignore[type-arg]
    """An idle connection stays open past httpx's 5 s keep-alive expiry, so the client always
    closes first: with uvicorn's default (5 s, the same) a request sent as the server's timer
    fired found the connection reset (seen once in a CI load drill)."""
    request = http_request("POST", "/v1/score", EXAMPLE_PATIENT, {"X-API-Key": API_KEY})
    client = RawHttp(int(urlsplit(live_server["url"]).port or 0))
    try:
        assert client.send(request)[0] == 200
        time.sleep(6)
        assert client.send(request)[0] == 200, "the same connection, 6 s idle, still serves"
    finally:
        client.close()
