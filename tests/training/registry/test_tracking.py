"""Which MLflow stores and work folder are used, and registered names everywhere: a model trained
from a user's own spec file is compared, promoted and reported on by its registered name, with
the spec logged with its version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from serving.server import free_port
from training.cli import app
from training.cli.app import WORKDIR
from training.cohorts.simulator import run_simulation
from training.console import default_workdir, no_telemetry, project_workdir
from training.registry.store import (
    RegistryError,
    Tracking,
    model_spec,
    registered_spec,
    resolve_version,
)

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_mlflow_env")
def test_default_store_is_sqlite_in_the_work_folder(tmp_path: Path) -> None:
    tracking = Tracking(tmp_path / "var")
    db = (tmp_path / "var" / "mlflow.db").resolve()
    assert tracking.uri == tracking.registry_uri == f"sqlite:///{db}"
    assert tracking.artifact_root == (tmp_path / "var" / "mlartifacts").resolve().as_uri()
    experiment = tracking.client.get_experiment(tracking.experiment_id("x"))
    assert experiment.artifact_location == f"{tracking.artifact_root}/x"
    assert db.is_file()
    assert "MLFLOW_TRACKING_URI" not in os.environ, (
        "MLflow's setters export the URI; left there, it would pass for the user's choice"
    )
    assert Tracking(tmp_path / "other").uri.endswith("other/mlflow.db")


@pytest.mark.usefixtures("no_mlflow_env")
def test_mlflow_tracking_uri_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "shared" / "team.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    tracking = Tracking(tmp_path / "var")
    assert tracking.uri == tracking.registry_uri == f"sqlite:///{other}"
    experiment_id = tracking.experiment_id("my_model")
    assert other.is_file(), "the store named by MLFLOW_TRACKING_URI is used"
    assert not (tmp_path / "var" / "mlflow.db").exists(), "not the work folder's"
    location = tracking.client.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "shared" / "mlartifacts" / "my_model").as_uri(), (
        "a SQLite store keeps its artifacts beside its file, as the embedded default does"
    )

    registry = tmp_path / "registry.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{registry}")
    assert Tracking(tmp_path / "var").registry_uri == f"sqlite:///{registry}"
    explicit = Tracking(tmp_path / "var", uri=f"sqlite:///{tmp_path / 'flag.db'}")
    assert explicit.uri.endswith("flag.db"), "--tracking-uri wins over the environment"


@pytest.mark.usefixtures("no_mlflow_env")
def test_a_tracking_server_places_the_artifacts(tmp_path: Path) -> None:
    tracking = Tracking(tmp_path / "var", uri="http://127.0.0.1:5000")
    assert tracking.is_server and tracking.artifact_root is None, (
        "through a server, experiments get the server's artifact root, never a local path"
    )
    assert tracking.registry_uri == "http://127.0.0.1:5000"
    assert not (tmp_path / "var").exists()
    secret = Tracking(tmp_path, uri="postgresql+psycopg://u:pw@127.0.0.1/mlflow")
    assert "pw" not in secret.describe() and not secret.is_server


@pytest.mark.usefixtures("no_mlflow_env")
def test_a_server_that_does_not_answer_says_so_at_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match="does not answer"):
        _ = Tracking(tmp_path, uri=url).client
    listed = runner.invoke(app, ["models", "--tracking-uri", url, "--workdir", str(tmp_path)])
    assert listed.exit_code != 0
    said = listed.output + str(listed.exception)
    assert f"the MLflow tracking server {url} does not answer" in said, said


def test_work_folder_is_triage_home_else_the_projects_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert project_workdir() == ROOT / "var", "the folder holding pyproject.toml, not the cwd"
    assert WORKDIR == ROOT / "var", "the CLI's default work folder"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIAGE_HOME", raising=False)
    assert default_workdir() == ROOT / "var"
    monkeypatch.setenv("TRIAGE_HOME", str(tmp_path / "home"))
    assert default_workdir() == tmp_path / "home"


@pytest.mark.usefixtures("no_mlflow_env")
def test_a_command_run_elsewhere_writes_no_var_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TRIAGE_HOME", str(tmp_path / "home"))
    listed = runner.invoke(app, ["models"])
    assert listed.exit_code == 0, listed.output
    assert (tmp_path / "home" / "mlflow.db").is_file(), "TRIAGE_HOME is the work folder"
    assert list(elsewhere.iterdir()) == [], "nothing is written in the current directory"


def test_no_telemetry_also_hides_download_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    no_telemetry()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


@pytest.mark.usefixtures("no_mlflow_env")
def test_a_users_model_by_its_registered_name(tmp_path: Path) -> None:
    """A model trained from `my_model.yaml` (not shipped) is compared, promoted and reported on
    by name; the spec is the one logged with the version; unknown names say what is there."""
    shipped = yaml.safe_load((ROOT / "models" / "specs" / "any_cancer.yaml").read_text())
    own = tmp_path / "specs" / "my_model.yaml"
    own.parent.mkdir()
    own.write_text(yaml.safe_dump({**shipped, "name": "my_model", "title": "My own model"}))
    cohort = tmp_path / "cohort"
    run_simulation(cohort="referrals", n=16_000, seed=9, out=cohort)
    work = ["--workdir", str(tmp_path / "var")]

    skipped = runner.invoke(
        app,
        ["train", "--spec", str(own), "--cohort", str(cohort), "--n-boot", "20",
         "--no-register", *work],
    )  # fmt: skip
    assert skipped.exit_code == 0, skipped.output
    assert "not registered (--no-register)" in skipped.output
    assert "registered version None" not in skipped.output

    trained = runner.invoke(
        app, ["train", "--spec", str(own), "--cohort", str(cohort), "--n-boot", "20", *work]
    )
    assert trained.exit_code == 0, trained.output
    assert "registered version 1 (alias challenger)" in trained.output

    own.unlink()  # from now on only the registry knows the spec
    tracking = Tracking(tmp_path / "var")
    spec = registered_spec(tracking, "my_model", "1")
    assert spec.name == "my_model" and spec.title == "My own model"
    assert model_spec(tracking, "my_model").title == "My own model"

    promoted = runner.invoke(
        app, ["promote", "--model", "my_model", "--version", "1", "--override-reason", "t", *work]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "my_model v1 is now champion" in promoted.output
    assert "Downloading artifacts" not in promoted.output, "no progress bars in the output"

    compared = runner.invoke(app, ["compare", "--spec", "my_model", "--n-boot", "20", *work])
    assert compared.exit_code == 0, compared.output
    assert "my_model: registered versions" in compared.output and "champion" in compared.output
    assert "Downloading artifacts" not in compared.output

    rendered = runner.invoke(
        app, ["report", "--model", "my_model", "--out", str(tmp_path / "r.html"), *work]
    )
    assert rendered.exit_code == 0, rendered.output
    assert "My own model" in (tmp_path / "r.html").read_text()

    with pytest.raises(RegistryError, match=r"no registered model 'nope'; registered: my_model"):
        registered_spec(tracking, "nope")
    with pytest.raises(RegistryError, match=r"model 'my_model' has no version or alias '7'"):
        resolve_version(tracking.client, "my_model", "7")
    commands = (
        ["compare", "--model", "nope"],
        ["promote", "--model", "nope", "--version", "1"],
        ["report", "--model", "nope"],
        ["replay", "--model", "nope", "--cohort", str(cohort), "--out", str(tmp_path / "out")],
    )
    for command in commands:
        refused = runner.invoke(app, [*command, *work])
        assert refused.exit_code != 0
        said = refused.output + str(refused.exception)
        assert "no registered model 'nope'; registered: my_model" in said, said
