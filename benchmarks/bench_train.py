"""Benchmark: train any_cancer on a PinPoint-scale simulated cohort (370,000 referrals),
with 200 bootstrap resamples, the HTML report and MLflow logging; prints the wall time of each step.

Run: `.venv/bin/python benchmarks/bench_train.py [--n 370000] [--n-boot 200]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from models.spec import load_spec
from training.registry import Tracking
from training.simulate import run_simulation
from training.tracking import log_training
from training.train import TrainOptions, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=370_000)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--spec", default="any_cancer")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        run_simulation(cohort="referrals", n=args.n, seed=3, out=work / "cohort")
        simulated = time.perf_counter()
        cohort = next((work / "cohort").glob("*_wide.parquet"))
        result = train_model(load_spec(args.spec), TrainOptions(cohort=cohort, n_boot=args.n_boot))
        trained = time.perf_counter()
        logged = log_training(result, Tracking(work / "var"))
        finished = time.perf_counter()
    ev = result.evaluation
    print(f"simulate {args.n:,} referrals: {simulated - started:.1f} s (not part of the target)")
    print(
        f"train + calibrate + thresholds + evaluate ({args.n_boot} bootstrap) + baseline: "
        f"{trained - simulated:.1f} s"
    )
    print(f"report + MLflow logging + registration: {finished - trained:.1f} s")
    print(f"TOTAL (train to registered version): {finished - simulated:.1f} s")
    print(
        f"rows per period: {result.provenance['rows']}; best iteration "
        f"{result.provenance['best_iteration']}; version {logged.version}"
    )
    print(f"AUC {ev['auc']['estimate']:.4f} [{ev['auc']['low']:.4f}, {ev['auc']['high']:.4f}]")


if __name__ == "__main__":
    main()
