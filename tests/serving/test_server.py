"""One real `bentoml serve` on a free loopback port: readiness, parity, auth, metrics, audit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from serving.audit import AuditStore
from serving.config import ServingConfig
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from tests.serving.conftest import Released

API_KEY = "server-test-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(released: Released, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    home = tmp_path_factory.mktemp("server-var")
    env = {**os.environ, "TRIAGE_HOME": str(home), "TRIAGE_API_KEYS": API_KEY,
           "TRIAGE_HMAC_KEY": "server-test-hmac"}  # fmt: skip
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:Triage",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while time.monotonic() - started < 90:
            assert process.poll() is None, "the server exited during start-up"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become ready in 90 s")
        yield {"url": url, "env": env, "ready_seconds": time.monotonic() - started}
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_server_scores_like_the_predictor(server: dict, released: Released) -> None:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{server['url']}/v1/score", json=EXAMPLE_PATIENT, headers=headers)
    assert response.status_code == 200, response.text
    expected = released.results["lower_gi"].predictor.score(EXAMPLE_PATIENT, pathway="lower_gi")
    assert response.json()["probability"] == expected.probability, "served == predictor, exactly"
    fhir = httpx.post(f"{server['url']}/v1/fhir/score", json=fhir_bundle(), headers=headers,
                      params={"model": "lower_gi"})  # fmt: skip
    assert fhir.status_code == 200 and fhir.json()["resourceType"] == "RiskAssessment"


def test_real_server_auth_probes_and_metrics(server: dict) -> None:  # type: ignore[type-arg]
    url = server["url"]
    assert httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT).status_code == 401
    assert httpx.get(f"{url}/livez").status_code == 200
    headers = {"X-API-Key": API_KEY}
    bad = {**EXAMPLE_PATIENT, "age": 12}
    assert httpx.post(f"{url}/v1/score", json=bad, headers=headers).status_code == 422
    metrics = httpx.get(f"{url}/metrics").text
    assert "triage_scores_total{band=" in metrics, "scores counted by model and band"
    assert "triage_probability_bucket" in metrics, "probability histogram exported"
    assert 'triage_refusals_total{code="age_out_of_range"' in metrics


def test_real_server_audit_rows_match_successes(server: dict) -> None:  # type: ignore[type-arg]
    url, headers = server["url"], {"X-API-Key": API_KEY}
    store = AuditStore(ServingConfig.from_env(server["env"]).audit_url)
    before = store.count()
    ok = sum(
        httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT, headers=headers).status_code == 200
        for _ in range(20)
    )
    assert store.count() - before == ok == 20, "every 200 has its audit row, written first"
    assert store.integrity_problems() == []
