"""The main job on embedded defaults (`make run`): simulate, train, promote, release, serve.

    python -m training.main_job [--workdir DIR] [--tracking-uri URI] [--no-serve] [--referrals N]
                                [--population N]

1. simulate a referral cohort and a primary-care myeloma cohort (seeded; reused when present);
2. validate them through the analyte catalogue and print the issues found;
3. train `any_cancer`, `lower_gi` and `myeloma`, log them to MLflow (SQLite under the work folder,
   or the store of `--tracking-uri` / `MLFLOW_TRACKING_URI`, e.g. a shared `mlflow server`),
   register each as `challenger` and write its report;
4. promote each to `champion` when its gates pass and release the champions to BentoML;
5. start the server on 127.0.0.1, send one example JSON and one FHIR request, print ready-to-paste
   requests, and keep serving until Ctrl-C (`--no-serve` stops after step 4).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from models.frame_validation import validate_frame
from models.spec import load_spec
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from serving.release import release_champions
from serving.server import Server
from training.cohorts.reader import read_table
from training.cohorts.simulator import run_simulation
from training.cohorts.simulator.world import WORLD_VERSION
from training.console import (
    HOME_ENV,
    make_console,
    no_telemetry,
    project_workdir,
    use_bentoml_store,
)
from training.evaluation.formatting import family_label
from training.fit.train import TrainOptions
from training.registry.promote import Gate, promote
from training.registry.runs import Trained, train_and_register
from training.registry.store import Tracking

MODELS = {"any_cancer": "referrals", "lower_gi": "referrals", "myeloma": "myeloma"}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
WORKDIR = project_workdir()  # the project's own var/, never one in the current directory


@app.command()
def main(
    workdir: Annotated[
        Path, typer.Option(envvar=HOME_ENV, help="work folder (git-ignored)")
    ] = WORKDIR,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store or server (default: $MLFLOW_TRACKING_URI, else SQLite)"),
    ] = None,
    # 300,000 referrals give lower GI ~230 calibration-year cancers: the fewest with which a 98%
    # rule-out can be shown with 95% confidence (Wilson), so its green band exists.
    referrals: Annotated[int, typer.Option(help="simulated referrals")] = 300_000,
    # 4M people give ~2,400 myeloma cases: enough for stable thresholds in a temporal split.
    population: Annotated[int, typer.Option(help="simulated myeloma population")] = 4_000_000,
    seed: Annotated[int, typer.Option(help="simulation seed")] = 7,
    n_boot: Annotated[
        int, typer.Option(help="bootstrap resamples for CIs (the gates read them: >= 1,000)")
    ] = 1000,
    port: Annotated[int, typer.Option(help="port to serve on (127.0.0.1)")] = 3000,
    serve: Annotated[bool, typer.Option(help="serve after the release (--no-serve: stop)")] = True,
) -> None:
    """Simulate, validate, train, promote, release and serve on embedded defaults."""
    no_telemetry()
    use_bentoml_store(workdir)
    console = make_console()
    started = time.perf_counter()
    folders = simulate_cohorts(workdir, referrals, population, seed)
    console.print(validation_table(folders))
    tracking = Tracking(workdir, uri=tracking_uri or "")
    outcomes = {
        name: train_and_promote(name, folders, tracking, workdir, n_boot) for name in MODELS
    }
    console.print(summary_table(outcomes))
    release(tracking, workdir, console)
    console.print(f"set up in {time.perf_counter() - started:.0f} s")
    if serve:
        serve_and_show(workdir, port, console)


def simulate_cohorts(workdir: Path, referrals: int, population: int, seed: int) -> dict[str, Path]:
    """Both simulated cohorts (reused when already there for the same world, size and seed)."""
    folders = {}
    for cohort, n in (("referrals", referrals), ("myeloma", population)):
        folder = workdir / "cohorts" / f"{cohort}-w{WORLD_VERSION}-n{n}-s{seed}"
        if not any(folder.glob("*_wide.parquet")):
            run_simulation(cohort=cohort, n=n, seed=seed, out=folder)
        folders[cohort] = folder
    return folders


def validation_table(folders: Mapping[str, Path]) -> Table:
    """The catalogue's issues in each simulated wide table, most frequent first."""
    table = Table(title="Catalogue validation of the simulated cohorts (wide tables)")
    for column in ("cohort", "rows", "severity", "code", "field", "count"):
        table.add_column(column)
    for cohort, folder in folders.items():
        frame = read_table(next(folder.glob("*_wide.parquet")))
        summary = validate_frame(frame).summary()
        if summary.empty:
            table.add_row(cohort, f"{len(frame):,}", "-", "no issues", "-", "0")
        for row in summary.head(6).to_dict("records"):
            table.add_row(
                cohort,
                f"{len(frame):,}",
                str(row["severity"]),
                str(row["code"]),
                str(row["field"]),
                f"{row['count']:,}",
            )
    return table


def train_and_promote(
    name: str, folders: Mapping[str, Path], tracking: Tracking, workdir: Path, n_boot: int
) -> tuple[Trained, bool, list[Gate]]:
    """Train one model on its cohort, register it, and promote it: through its gates, or, so
    that the demonstration serves every model, by an override whose reason names the failed
    gates (recorded on the version as `promotion_override_reason`, and shown in the summary)."""
    spec = load_spec(name)
    options = TrainOptions(cohort=folders[MODELS[name]], n_boot=n_boot)
    trained = train_and_register(spec, options, tracking, workdir / "reports")
    version = str(trained.logged.version)
    promoted, gates = promote(tracking, spec, version)
    if not promoted:
        failed = "; ".join(f"{g.name}: {g.detail}" for g in gates if not g.passed)
        reason = f"make run: a demonstration on simulated data, promoted although {failed}"
        promoted, gates = promote(tracking, spec, version, override_reason=reason)
    return trained, promoted, gates


def summary_table(outcomes: Mapping[str, tuple[Trained, bool, list[Gate]]]) -> Table:
    """One row per model: version, family, evaluation-period AUC, calibration, flagged subgroup
    levels, champion or why not."""
    table = Table(title="Trained and registered (evaluation period)")
    columns = ("model", "version", "family", "AUC [95% CI]", "oracle AUC", "slope", "O/E",
               "subgroups flagged", "champion")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for name, (trained, promoted, gates) in outcomes.items():
        ev = trained.result.evaluation
        auc = ev["auc"]
        failed = ", ".join(g.name for g in gates if not g.passed)
        table.add_row(
            name,
            str(trained.logged.version),
            family_label(ev.get("model_family"), "-"),
            f"{auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]",
            f"{ev['oracle']['oracle_auc']:.3f}" if ev.get("oracle") else "-",
            f"{ev['calibration']['slope']:.3f}",
            f"{ev['calibration']['observed_expected']:.3f}",
            str(len((ev.get("subgroups") or {}).get("flagged") or [])),
            ("yes" if not failed else f"by override ({failed} failed)")
            if promoted
            else f"no ({failed})",
        )
    return table


def release(tracking: Tracking, workdir: Path, console: Console) -> None:
    """Copy the champions into BentoML's store; say where the reports and the MLflow UI are."""
    released = release_champions(tracking.uri, registry_uri=tracking.registry_uri)
    console.print(f"released to BentoML: {released['tag']}")
    console.print(f"reports: {workdir / 'reports'}")
    if tracking.is_server:
        console.print(f"MLflow UI: {tracking.describe()}")
    else:
        console.print(
            f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking.describe()} "
            "--host 127.0.0.1 --port 5000"
        )


def serve_and_show(workdir: Path, port: int, console: Console) -> None:
    """Start the server, show one real JSON and FHIR exchange, then serve until Ctrl-C."""
    examples = workdir / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    (examples / "score.json").write_text(json.dumps(EXAMPLE_PATIENT, indent=1))
    (examples / "fhir_bundle.json").write_text(json.dumps(fhir_bundle(), indent=1))
    env = {**os.environ, "TRIAGE_HOME": str(workdir.resolve())}
    log = workdir / "serving" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = Server(env, port=port, log=log)
    url = server.url
    signal.signal(signal.SIGTERM, _stop)  # a TERM to this job stops its server too
    try:
        server.start(timeout=120)
        score = httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT, timeout=10).json()
        fhir = httpx.post(
            f"{url}/v1/fhir/score", json=fhir_bundle(), params={"model": "lower_gi"}, timeout=10
        ).json()
        console.print_json(data={"request": EXAMPLE_PATIENT, "response": score})
        console.print_json(data={"fhir_response": fhir})
        console.print(f"""
Serving on {url} (Ctrl-C to stop; server log: {log}). Ready-to-paste requests:
  curl -s {url}/v1/models
  curl -s -X POST {url}/v1/score -H 'content-type: application/json' -d @{examples}/score.json
  curl -s -X POST '{url}/v1/fhir/score?model=lower_gi' -H 'content-type: application/fhir+json' \\
       -d @{examples}/fhir_bundle.json
  OpenAPI: {url}/docs.json   probes: {url}/livez {url}/readyz   metrics: {url}/metrics""")
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    app()
