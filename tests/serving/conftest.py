"""Two small champions (any_cancer, lower_gi) trained, registered, promoted and released once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.middleware import current_config
from serving.release import release_champions
from serving.server import Server
from tests.small_specs import small_cohort_spec
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import Tracking


@dataclass
class Released:
    tracking: Tracking
    results: dict[str, TrainResult]
    cohort: pd.DataFrame  # the wide simulated cohort (canonical units, with metadata)


@pytest.fixture(scope="session")
def released(tmp_path_factory: pytest.TempPathFactory) -> Released:
    root = tmp_path_factory.mktemp("serving")
    run_simulation(cohort="referrals", n=20_000, seed=21, out=root / "cohort")
    tracking = Tracking(root / "var")
    results = {}
    for name in ("any_cancer", "lower_gi"):
        result = train_model(small_cohort_spec(name), TrainOptions(root / "cohort", n_boot=10))
        logged = log_training(result, tracking)
        promote(tracking, result.spec, str(logged.version), override_reason="test fixture")
        results[name] = result
    release_champions(tracking.uri)
    cohort = pd.read_parquet(next((root / "cohort").glob("*_wide.parquet")))
    return Released(tracking, results, cohort)


@pytest.fixture(scope="session")
def asgi_app(released: Released) -> Any:
    """The service as an ASGI app, built once: BentoML registers its metrics per app, and a
    process holds one Prometheus registry. Each TestClient context starts a fresh Triage."""
    from serving.service import Triage

    return Triage.to_asgi()


@pytest.fixture
def serving_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh work folder (audit store, HMAC key) and configuration for one test."""
    monkeypatch.setenv("TRIAGE_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("TRIAGE_HMAC_KEY", "test-hmac-key-not-a-secret")
    current_config.cache_clear()
    yield tmp_path / "var"
    current_config.cache_clear()


API_KEY = "server-test-key-7f3a9c"
LOG_DIR = Path(os.environ["TRIAGE_TEST_LOG_DIR"])


@pytest.fixture(scope="session")
def live_server(released: Released, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    """One real `bentoml serve` (two workers) on a free loopback port, with an API key."""
    home = tmp_path_factory.mktemp("server-var")
    env = {**os.environ, "TRIAGE_HOME": str(home), "TRIAGE_API_KEYS": API_KEY,
           "TRIAGE_HMAC_KEY": "server-test-hmac-91b2e4"}  # fmt: skip
    server = Server(env, log=LOG_DIR / "live-server.log")
    try:
        ready = server.start()
        yield {"url": server.url, "env": env, "ready_seconds": ready}
    finally:
        server.stop()
