"""MLflow as the team's lab notebook: a run's name, parameters and metrics, its cohort periods as
dataset inputs, its figures as images, and a report that names the registered version (when
logged, and when `triage report RUN_ID` re-renders it)."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import PIL.Image
import pytest
from mlflow.entities import Run
from typer.testing import CliRunner

from models.spec import load_spec
from models.triage import Thresholds
from training.cli import app
from training.cli.models import band_rows, describe_thresholds
from training.fit.train import TrainResult
from training.registry.runs import LoggedRun, log_training
from training.registry.store import Tracking, read_run_artifact

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("roc", "calibration", "decision_curve")


@dataclass(frozen=True)
class Notebook:
    tracking: Tracking
    registered: LoggedRun
    unregistered: LoggedRun  # the same result logged again with --no-register


@pytest.fixture(scope="module")
def notebook(any_cancer: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Notebook:
    tracking = Tracking(tmp_path_factory.mktemp("notebook") / "var")
    registered = log_training(any_cancer, tracking)
    unregistered = log_training(any_cancer, tracking, register=False)
    return Notebook(tracking, registered, unregistered)


def _run(notebook: Notebook, logged: LoggedRun) -> Run:
    return notebook.tracking.client.get_run(logged.run_id)


def header_version(html: str) -> str:
    """The version the report's header states (tags replaced by spaces)."""
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    found = re.search(r"\bversion\s*:\s*(.+?)\s+run\s*:", text)
    assert found, "the header states a version"
    return found.group(1)


def test_the_logged_report_and_card_name_the_registered_version(notebook: Notebook) -> None:
    client, run_id = notebook.tracking.client, notebook.registered.run_id
    assert notebook.registered.version == "1"
    logged_html = read_run_artifact(client, run_id, "report.html", lambda p: p.read_text())
    assert logged_html == notebook.registered.report, "the logged report is the one returned"
    assert header_version(logged_html) == "1"
    card = read_run_artifact(client, run_id, "model_card.json", lambda p: json.loads(p.read_text()))
    assert card["version"] == "1" and card["run_id"] == run_id
    assert header_version(notebook.unregistered.report) == "not registered yet"


def test_report_command_looks_up_the_version_registered_from_the_run(
    notebook: Notebook, tmp_path: Path
) -> None:
    """A run logged unregistered and registered afterwards (as version 2): its logged card has no
    version, and the re-rendered report finds it in the registry."""
    logged = notebook.unregistered
    notebook.tracking.activate()
    mlflow.register_model(logged.model_uri, "any_cancer")
    out = tmp_path / "report.html"
    workdir = str(notebook.tracking.workdir)
    rendered = runner.invoke(
        app, ["report", logged.run_id, "--out", str(out), "--workdir", workdir]
    )
    assert rendered.exit_code == 0, rendered.output
    assert header_version(out.read_text()) == "2"
    again = runner.invoke(app, ["report", "--model", "any_cancer", "--version", "1", "--out",
                                str(out), "--workdir", workdir])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert header_version(out.read_text()) == "1"


def test_run_names_carry_the_version_or_a_unique_suffix(
    notebook: Notebook, any_cancer: TrainResult
) -> None:
    when = any_cancer.provenance["trained_at"][:16].replace("T", " ")
    family = any_cancer.predictor.family
    registered = _run(notebook, notebook.registered).info.run_name
    unregistered = _run(notebook, notebook.unregistered).info.run_name
    assert registered == f"any_cancer v1 {family} {when}"
    suffix = notebook.unregistered.run_id[:8]
    assert unregistered == f"any_cancer run {suffix} {family} {when}"
    assert registered != unregistered, "the same result logged twice in a minute: two names"


def test_each_cohort_period_is_a_dataset_input(notebook: Notebook, any_cancer: TrainResult) -> None:
    run_inputs = _run(notebook, notebook.registered).inputs
    assert run_inputs is not None
    inputs = run_inputs.dataset_inputs
    by_context = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs
    }
    assert sorted(by_context) == sorted(["train", "stop", "calibrate", "evaluate"])
    cohort_uri = Path(any_cancer.provenance["cohort_path"]).resolve().as_uri()
    outcome = any_cancer.spec.outcome.column
    for period, dataset in by_context.items():
        frame = any_cancer.periods[period]
        profile = json.loads(str(dataset.profile))
        assert profile["num_rows"] == len(frame) and profile["num_rows"] > 0
        assert profile["events"] == int(frame[outcome].sum())
        columns = [c["name"] for c in json.loads(str(dataset.schema))["mlflow_colspec"]]
        assert columns == list(frame.columns), "the schema names the period's columns"
        assert json.loads(dataset.source)["uri"] == cohort_uri
        assert dataset.source_type == "local"
        assert dataset.name.endswith(f" {period}")
    assert len({d.digest for d in by_context.values()}) == 4, "each period has its own digest"
    artifacts = {
        a.path for a in notebook.tracking.client.list_artifacts(notebook.registered.run_id)
    }
    assert not any(a.endswith((".csv", ".parquet")) and "cohort" in a for a in artifacts), (
        "the cohort itself is never copied into the run"
    )


def test_figures_are_logged_as_the_reports_own_pngs(notebook: Notebook) -> None:
    client, run_id = notebook.tracking.client, notebook.registered.run_id
    for name in FIGURES:
        png = read_run_artifact(client, run_id, f"figures/{name}.png", lambda p: p.read_bytes())
        assert png.startswith(PNG_SIGNATURE)
        with PIL.Image.open(io.BytesIO(png)) as image:
            image.verify()
        assert base64.b64encode(png).decode() in notebook.registered.report, (
            f"{name}.png is exactly the figure the report embeds"
        )
    keyed = [a.path for a in client.list_artifacts(run_id, "images")]
    for name in FIGURES:  # what the chart view's "Image grid" reads
        assert any(Path(p).name.startswith(f"{name}+step+0+") and p.endswith(".png") for p in keyed)
    assert _run(notebook, notebook.registered).data.tags.get("mlflow.loggedImages") == "True"


def test_parameters_and_metrics_follow_one_naming_scheme(
    notebook: Notebook, any_cancer: TrainResult
) -> None:
    data = _run(notebook, notebook.registered).data
    params, metrics = data.params, data.metrics
    platt = any_cancer.predictor.calibration
    assert float(params["calibration/platt_slope"]) == platt.slope
    assert float(params["calibration/platt_intercept"]) == platt.intercept
    assert "calibration_slope" not in params and "slope" not in metrics
    assert all(m.startswith(("eval/", "comparator/")) for m in metrics), sorted(metrics)
    assert not any("oracle_oracle" in m for m in metrics)
    ev, base = any_cancer.evaluation, any_cancer.baseline_evaluation
    assert metrics["eval/calibration_slope"] == ev["calibration"]["slope"]
    assert metrics["eval/oracle_auc"] == ev["oracle"]["oracle_auc"]
    assert metrics["comparator/auc"] == base["auc"]["estimate"]
    assert metrics["eval/auc_minus_comparator"] == pytest.approx(
        ev["auc"]["estimate"] - base["auc"]["estimate"], abs=1e-12
    )
    # this small cohort has too few cancers for a green band: the red cut-off as a test,
    # counted independently on the evaluation period
    assert any_cancer.predictor.thresholds.rule_out is None
    assert params["thresholds/rule_out"] == "not set"
    assert not any(m.startswith("eval/rule_out_") or "green" in m for m in metrics)
    rows = any_cancer.periods["evaluate"]
    y = rows[any_cancer.spec.outcome.column].to_numpy()
    p = any_cancer.predictions["probability"].to_numpy()
    rule_in = any_cancer.predictor.thresholds.rule_in
    assert rule_in is not None and float(params["thresholds/rule_in"]) == rule_in
    red = p >= rule_in
    assert metrics["eval/red_ppv"] == pytest.approx(y[red].mean(), rel=1e-12)
    assert metrics["eval/non_red_npv"] == pytest.approx(1 - y[~red].mean(), rel=1e-12)
    assert metrics["eval/rule_in_sensitivity"] == pytest.approx(red[y == 1].mean(), rel=1e-12)
    assert metrics["eval/rule_in_specificity"] == pytest.approx((~red)[y == 0].mean(), rel=1e-12)
    assert metrics["eval/red_share"] == pytest.approx(red.mean(), rel=1e-12)
    assert metrics["eval/rows"] == len(rows) and metrics["eval/events"] == int(np.sum(y))


def test_console_names_what_each_value_is_and_never_prints_none() -> None:
    spec = load_spec("any_cancer")
    not_reached = describe_thresholds(
        Thresholds(0.01, None), spec, {"rule_in": {"events": 300, "min_events": 50}}
    )
    assert not_reached == (
        "green < 0.01; no red threshold: the PPV target (0.25) was not reached on the "
        "calibration period, so there is no red band"
    )
    too_few = describe_thresholds(
        Thresholds(None, None), spec, {"rule_out": {"events": 12, "min_events": 50}}
    )
    assert too_few.startswith(
        "no green threshold: only 12 calibration-period events, fewer than the 50 needed"
    )
    assert "None" not in not_reached + too_few
    green = {"sensitivity": {"estimate": 0.99, "low": 0.98, "high": 1.0},
             "ppv": {"estimate": 0.1, "low": 0.09, "high": float("nan")},
             "npv": {"estimate": 0.999, "low": 0.998, "high": 1.0}}  # fmt: skip
    labels = dict((label, value) for label, value, _ in band_rows({"green": green, "red": None}))
    assert labels == {
        "green cut-off: sensitivity (events not green)": "0.990 [0.980, 1.000]",
        "PPV of a non-green result": "0.100",  # no finite bound: the estimate alone
        "NPV of a green result": "0.999 [0.998, 1.000]",
    }


def test_compare_prints_no_mlflow_download_bars(
    notebook: Notebook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI switches MLflow's artifact progress bars off where it starts (the user's shell is
    left alone); with them on, compare draws "Downloading artifacts" for every artifact it reads
    (`promote` is checked in tests/training/test_cli_training.py)."""
    work = ["--workdir", str(notebook.tracking.workdir)]
    command = ["compare", "--model", "any_cancer", "--n-boot", "20", *work]
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's own choice
    noisy = runner.invoke(app, command)
    assert "Downloading artifacts" in noisy.output, "the check below can see the bars"
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    compared = runner.invoke(app, command)
    assert compared.exit_code == 0, compared.output
    assert "Downloading artifacts" not in compared.output, compared.output
