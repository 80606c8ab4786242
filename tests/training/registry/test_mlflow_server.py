"""The whole path against a real `mlflow server` over HTTP (slow tier; `.ci/run` starts the
server, with PostgreSQL as its backend store and a local artifact root it proxies):
train -> register -> promote -> release -> serve -> replay, each step a `triage` command in a
process of its own with only `MLFLOW_TRACKING_URI` pointing at the server. The run, version,
aliases and artifacts must live on the server, and no local MLflow store may appear."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from serving.examples import EXAMPLE_PATIENT
from serving.server import Server

SERVER_ENV = "TRIAGE_TEST_MLFLOW_SERVER"
SERVER = os.environ.get(SERVER_ENV)
ROOT = Path(__file__).resolve().parents[3]
LOG_DIR = Path(os.environ["TRIAGE_TEST_LOG_DIR"])

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SERVER,
        reason=f"{SERVER_ENV} is unset: no MLflow tracking server to test against "
        "(.ci/run starts one; locally: source .ci/postgres.sh && source .ci/mlflow.sh)",
    ),
]


def triage(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run one `triage` command in its own process; its output (fails the test on an error)."""
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, f"triage {' '.join(args)} failed:\n{said}"
    return said


def test_train_promote_release_serve_replay_through_a_tracking_server(tmp_path: Path) -> None:
    assert SERVER is not None
    name = f"server_check_{uuid.uuid4().hex[:8]}"  # the server may outlive this run: a new name
    shipped = yaml.safe_load((ROOT / "models" / "specs" / "any_cancer.yaml").read_text())
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump({**shipped, "name": name}))
    elsewhere = tmp_path / "elsewhere"  # the current directory of every command
    elsewhere.mkdir()
    home, bento = tmp_path / "var", tmp_path / "bentoml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_REGISTRY")}
    env |= {
        "MLFLOW_TRACKING_URI": SERVER,
        "TRIAGE_HOME": str(home),
        "BENTOML_HOME": str(bento),  # a store of its own: other tests' releases stay apart
        "PYTHONPATH": str(ROOT),
    }
    cohort = tmp_path / "cohort"

    triage(env, elsewhere, "simulate", "--n", "16000", "--seed", "9", "--out", str(cohort))
    trained = triage(
        env, elsewhere, "train", "--spec", str(spec_file), "--cohort", str(cohort),
        "--n-boot", "20",
    )  # fmt: skip
    assert "registered version 1 (alias challenger)" in trained, trained
    spec_file.unlink()  # from now on only the registry (the server) knows the spec
    promoted = triage(
        env, elsewhere, "promote", "--model", name, "--version", "1", "--override-reason",
        "server check",
    )  # fmt: skip
    assert f"{name} v1 is now champion" in promoted and "released" in promoted, promoted
    assert "Downloading artifacts" not in promoted
    compared = triage(env, elsewhere, "compare", "--model", name, "--n-boot", "20")
    assert "champion" in compared, compared
    listed = triage(env, elsewhere, "models", "--tracking-uri", SERVER)
    assert name in listed, listed
    triage(env, elsewhere, "report", "--model", name, "--out", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10_000

    server = Server(
        {**env, "TRIAGE_HMAC_KEY": "test-hmac-key-not-a-secret"},
        log=LOG_DIR / "mlflow-server-check-serve.log",
    )
    try:
        server.start(timeout=120)
        response = httpx.post(
            f"{server.url}/v1/score",
            json={**EXAMPLE_PATIENT, "model": name, "pathway": "lower_gi"},
            timeout=30,
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == name and body["model"]["version"] == "1", body
    assert 0 < body["probability"] < 1

    replayed = triage(
        env, elsewhere, "replay", "--model", f"{name}@champion", "--cohort", str(cohort),
        "--out", str(tmp_path / "replay"), "--n-boot", "20",
    )  # fmt: skip
    assert (tmp_path / "replay" / "scores.parquet").is_file(), replayed

    client = MlflowClient(tracking_uri=SERVER, registry_uri=SERVER)
    model = client.get_registered_model(name)
    assert model.aliases == {"challenger": "1", "champion": "1"}
    version = client.get_model_version(name, "1")
    assert version.tags["validation_status"] == "overridden"
    run = client.get_run(str(version.run_id))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), (
        "the server's artifact root applies, never a path on this machine"
    )
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"triage/{name}"
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "spec.yaml", "report.html", "evaluation_predictions.parquet"} <= logged
    local_stores = [
        p for pattern in ("mlflow.db", "mlruns", "mlartifacts") for p in tmp_path.rglob(pattern)
    ]
    assert local_stores == [], f"nothing may be written to a local MLflow store: {local_stores}"
    assert not (elsewhere / "var").exists() and not (elsewhere / "mlruns").exists()
