"""The training commands end to end: train, promote, compare, report, models."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.cohorts.simulator import run_simulation

runner = CliRunner()


def test_train_promote_compare_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # the CLI's job
    cohort = tmp_path / "cohort"
    run_simulation(cohort="referrals", n=16_000, seed=9, out=cohort)
    work = ["--workdir", str(tmp_path / "var")]
    trained = runner.invoke(
        app, ["train", "--spec", "any_cancer", "--cohort", str(cohort), "--n-boot", "20", *work]
    )
    assert trained.exit_code == 0, trained.output
    assert "registered version 1" in trained.output and "AUC" in trained.output
    assert "None" not in trained.output and "green: PPV" not in trained.output
    assert list((tmp_path / "var" / "reports").glob("any_cancer-1.html")), "report written"

    promoted = runner.invoke(app, ["promote", "--spec", "any_cancer", "--version", "1", *work])
    assert "calibration_slope" in promoted.output, promoted.output
    assert "Downloading artifacts" not in promoted.output, "no MLflow progress bars"
    if promoted.exit_code != 0:
        assert "refused" in promoted.output, "a refusal says so and lists the gates"
        forced = runner.invoke(
            app,
            ["promote", "--spec", "any_cancer", "--version", "1", "--override-reason", "t", *work],
        )
        assert forced.exit_code == 0, forced.output

    compared = runner.invoke(app, ["compare", "--spec", "any_cancer", "--n-boot", "20", *work])
    assert compared.exit_code == 0, compared.output
    assert "champion" in compared.output
    assert "Downloading artifacts" not in compared.output, "no MLflow progress bars"

    listed = runner.invoke(app, ["models", *work])
    assert listed.exit_code == 0 and "any_cancer" in listed.output, listed.output

    run_id = trained.output.split("run ")[1].split(";")[0].strip()
    rendered = runner.invoke(app, ["report", run_id, "--out", str(tmp_path / "r.html"), *work])
    assert rendered.exit_code == 0, rendered.output
    html = (tmp_path / "r.html").read_text()
    header = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert re.search(r"\bversion : 1 run :", header), "the report names the registered version"
    written = (tmp_path / "var" / "reports" / "any_cancer-1.html").read_text()
    assert "not registered yet" not in written, "so does the report written at training"
    assert html.count("data:image/png;base64") >= 5, "plots are embedded in the re-rendered report"
