"""The main job on embedded defaults (`make run`): simulate, train, promote, release, serve.

1. simulate a referral cohort and a primary-care myeloma cohort (seeded);
2. validate them through the analyte catalogue and print the issues found;
3. train `any_cancer`, `lower_gi` and `myeloma`, log them to MLflow (SQLite under the work folder)
   and register each as `challenger`;
4. promote each to `champion` when its gates pass and release the champions to BentoML;
5. start the server on 127.0.0.1, send one example JSON and one FHIR request, print ready-to-paste
   requests, and keep serving until Ctrl-C (`--no-serve` stops after step 4).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from models.frame_validation import validate_frame
from models.spec import load_spec
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from serving.release import release_champions
from serving.reliability import Server
from training.cli import TELEMETRY_OFF, make_console, use_bentoml_store
from training.cohorts.reader import read_table
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model
from training.registry.promote import promote
from training.registry.runs import log_training, render
from training.registry.store import Tracking

MODELS = {"any_cancer": "referrals", "lower_gi": "referrals", "myeloma": "myeloma"}


def simulate_cohorts(workdir: Path, referrals: int, population: int, seed: int) -> dict[str, Path]:
    """Both simulated cohorts (reused when already there for the same size and seed)."""
    folders = {}
    for cohort, n in (("referrals", referrals), ("myeloma", population)):
        folder = workdir / "cohorts" / f"{cohort}-n{n}-s{seed}"
        if not any(folder.glob("*_wide.parquet")):
            run_simulation(cohort=cohort, n=n, seed=seed, out=folder)
        folders[cohort] = folder
    return folders


def validation_table(folders: dict[str, Path]) -> Table:
    table = Table(title="Catalogue validation of the simulated cohorts (wide tables)")
    for column in ("cohort", "rows", "severity", "code", "field", "count"):
        table.add_column(column)
    for cohort, folder in folders.items():
        frame = read_table(next(folder.glob("*_wide.parquet")))
        summary = validate_frame(frame).summary()
        if summary.empty:
            table.add_row(cohort, f"{len(frame):,}", "-", "no issues", "-", "0")
        for row in summary.head(6).to_dict("records"):
            table.add_row(cohort, f"{len(frame):,}", str(row["severity"]), str(row["code"]),
                          str(row["field"]), f"{row['count']:,}")  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("var"))
    parser.add_argument("--referrals", type=int, default=100_000)
    # 4M people give ~2,400 myeloma cases: enough for stable thresholds in a temporal split.
    parser.add_argument("--population", type=int, default=4_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--no-serve", action="store_true", help="stop after the release")
    args = parser.parse_args()
    for name, value in TELEMETRY_OFF.items():  # no usage reports leave the machine
        os.environ.setdefault(name, value)
    use_bentoml_store(args.workdir)
    console = make_console()
    started = time.perf_counter()
    folders = simulate_cohorts(args.workdir, args.referrals, args.population, args.seed)
    console.print(validation_table(folders))
    tracking = Tracking(args.workdir)
    summary = Table(title="Trained and registered (evaluation period)")
    for column in ("model", "version", "AUC [95% CI]", "oracle AUC", "slope", "O/E", "champion"):
        summary.add_column(column)
    for name, cohort in MODELS.items():
        spec = load_spec(name)
        console.print(f"training {name} ...")
        result = train_model(spec, TrainOptions(cohort=folders[cohort], n_boot=args.n_boot))
        logged = log_training(result, tracking)
        report = args.workdir / "reports" / f"{name}-v{logged.version}.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render(result, logged.run_id)[1])
        promoted, gates = promote(tracking, spec, str(logged.version))
        ev = result.evaluation
        auc = ev["auc"]
        failed = ", ".join(g.name for g in gates if not g.passed)
        summary.add_row(
            name,
            str(logged.version),
            f"{auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]",
            f"{ev['oracle']['oracle_auc']:.3f}" if ev.get("oracle") else "-",
            f"{ev['calibration']['slope']:.3f}",
            f"{ev['calibration']['observed_expected']:.3f}",
            "yes" if promoted else f"no ({failed})",
        )
    console.print(summary)
    released = release_champions(tracking.uri)
    console.print(f"released to BentoML: {released['tag']}")
    console.print(f"reports: {args.workdir / 'reports'}")
    console.print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking.uri} "
        "--host 127.0.0.1 --port 5000"
    )
    console.print(f"set up in {time.perf_counter() - started:.0f} s")
    if not args.no_serve:
        serve_and_show(args.workdir, args.port, console)


def serve_and_show(workdir: Path, port: int, console: Any) -> None:
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
        fhir = httpx.post(f"{url}/v1/fhir/score", json=fhir_bundle(),
                          params={"model": "lower_gi"}, timeout=10).json()  # fmt: skip
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
    main()
