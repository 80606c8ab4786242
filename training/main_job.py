"""The main job on embedded defaults (`make run`): simulate, validate, train, compare, promote.

1. simulate a referral cohort and a primary-care myeloma cohort (seeded);
2. validate them through the analyte catalogue and print the issues found;
3. train `any_cancer`, `lower_gi` and `myeloma`, log them to MLflow (SQLite under the work folder)
   and register each as `challenger`;
4. promote each to `champion` when its gates pass, and print where to look next.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from models.spec import load_spec
from models.validation import validate_frame
from training.cli import make_console
from training.cohort import read_table
from training.promote import promote
from training.registry import Tracking
from training.simulate import run_simulation
from training.tracking import log_training, render
from training.train import TrainOptions, train_model

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
    args = parser.parse_args()
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
    console.print(f"reports: {args.workdir / 'reports'}")
    console.print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking.uri} "
        "--host 127.0.0.1 --port 5000"
    )
    console.print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
