"""Property tests over the request space: whatever is accepted is a coherent answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from models.analytes import CATALOGUE
from models.spec import load_spec
from tests.additivity import assert_additive

CODES = load_spec("lower_gi").features.analytes


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Plausible-to-odd patients: any subset of analytes, any accepted unit, values in limits."""
    chosen = draw(st.lists(st.sampled_from(CODES), min_size=0, max_size=len(CODES), unique=True))
    analytes = {}
    for code in {"haemoglobin", "wbc", "platelets", *chosen}:
        analyte = CATALOGUE[code]
        unit = draw(st.sampled_from(list(analyte.units)))
        conversion = analyte.units[unit]
        low, high = analyte.limits.low or 0.0, analyte.limits.high or 1.0
        canonical = draw(st.floats(min_value=low, max_value=high))
        analytes[code] = {"value": conversion.from_canonical(canonical), "unit": unit}
    return {
        "model": "lower_gi",
        "age": draw(st.floats(min_value=0, max_value=120)),
        "sex": draw(st.sampled_from(["male", "female", "F", "m"])),
        "analytes": analytes,
    }


@pytest.fixture(scope="module")
def client(asgi_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from serving.middleware import current_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIAGE_HOME", str(tmp_path_factory.mktemp("props")))
        current_config.cache_clear()
        with TestClient(asgi_app) as test_client:
            yield test_client
    current_config.cache_clear()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_accepted_requests_are_coherent(client: TestClient, request: dict[str, Any]) -> None:
    response = client.post("/v1/score", json=request)
    assert response.status_code in (200, 422), response.text
    body = response.json()
    if response.status_code == 422:
        assert body["error"]["issues"], "a refusal always says why"
        assert any(i["severity"] == "error" for i in body["error"]["issues"]), "an error refuses"
        return
    p = body["probability"]
    assert 0.0 <= p <= 1.0
    if 0.0 < p < 1.0:
        assert_additive(body["base"], body["contributions"].values(), p)
    t = body["thresholds"]
    expected = (
        "red" if t["rule_in"] is not None and p >= t["rule_in"]
        else "green" if t["rule_out"] is not None and p < t["rule_out"]
        else "amber"
    )  # fmt: skip
    assert body["band"] == expected, "the band agrees with the stored thresholds"


def test_property_module_uses_the_served_model(client: TestClient, tmp_path: Path) -> None:
    assert "lower_gi" in {m["name"] for m in client.get("/v1/models").json()["models"]}
