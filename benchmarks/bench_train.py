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
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model
from training.registry.runs import log_training
from training.registry.store import Tracking


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
    ev, base = result.evaluation, result.baseline_evaluation
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
    oracle, cal, bcal = ev["oracle"], ev["calibration"], base["calibration"]
    print("evaluation period 2017-2019 | LightGBM | spline baseline")
    print(f"AUC [95% CI] | {_ci(ev['auc'])} | {_ci(base['auc'])}")
    print(f"oracle AUC (true risk) | {oracle['oracle_auc']:.4f} (gap {oracle['auc_gap']:+.4f}) |")
    print(f"calibration slope | {cal['slope']:.3f} | {bcal['slope']:.3f}")
    print(f"O/E | {cal['observed_expected']:.3f} | {bcal['observed_expected']:.3f}")
    print(f"Brier | {ev['brier']:.4f} | {base['brier']:.4f}")
    diff = ev["vs_baseline"]
    print(
        f"AUC LightGBM - baseline (paired) | {diff['estimate']:+.4f} "
        f"[{diff['low']:+.4f}, {diff['high']:+.4f}] |"
    )
    green = ev["thresholds"]["green"]
    print(
        f"green: sensitivity {_ci(green['sensitivity'])}, ruled out {green['share_ruled_out']:.1%}"
    )
    red = ev["thresholds"]["red"]
    if red:
        print(f"red: PPV {_ci(red['ppv'])}, expedited {red['share_expedited']:.1%}")


def _ci(block: dict) -> str:  # type: ignore[type-arg]
    return f"{block['estimate']:.4f} [{block['low']:.4f}, {block['high']:.4f}]"


if __name__ == "__main__":
    main()
