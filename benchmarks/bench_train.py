"""Benchmark: train any_cancer on a PinPoint-scale simulated cohort (370,000 referrals),
with 1,000 bootstrap resamples (what the gates use), the HTML report and MLflow logging; prints
the wall time of each step and the figures of the README's results table.

Run: `.venv/bin/python benchmarks/bench_train.py [--n 370000] [--n-boot 1000]`.
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
    parser.add_argument("--n-boot", type=int, default=1000)
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
    print(f"simulate {args.n:,} referrals: {simulated - started:.1f} s (not part of the target)")
    print(
        f"train both families + calibrate + thresholds + evaluate ({args.n_boot} bootstrap): "
        f"{trained - simulated:.1f} s"
    )
    print(f"report + MLflow logging + registration: {finished - trained:.1f} s")
    print(f"TOTAL (train to registered version): {finished - simulated:.1f} s")
    print(
        f"rows per period: {result.provenance['rows']}; events {result.provenance['events']}; "
        f"best iteration {result.provenance['best_iteration']}; version {logged.version}"
    )
    ev, base = result.evaluation, result.baseline_evaluation
    family = result.provenance["model_family"]
    print(f"served: {family['chosen']} ({family['reason']})")
    cal, bcal = ev["calibration"], base["calibration"]
    print(
        f"evaluation period (n_boot {ev['n_boot']}) | {family['chosen']} | {family['comparator']}"
    )
    print(f"AUC [95% CI] | {_ci(ev['auc'])} | {_ci(base['auc'])}")
    oracle = ev["oracle"]
    print(f"oracle AUC (true risk) | {oracle['oracle_auc']:.4f} (gap {oracle['auc_gap']:+.4f}) |")
    for key, name in (("slope", "calibration slope"), ("observed_expected", "O/E"),
                      ("brier", "Brier")):  # fmt: skip
        print(f"{name} [95% CI] | {_ci(cal['ci'][key])} | {_ci(bcal['ci'][key])}")
    diff = ev["vs_baseline"]
    print(
        f"AUC served - comparator (paired) | {diff['estimate']:+.4f} "
        f"[{diff['low']:+.4f}, {diff['high']:+.4f}] |"
    )
    for label, evaluation in (("served", ev), ("comparator", base)):
        green, red = evaluation["thresholds"]["green"], evaluation["thresholds"]["red"]
        if green:
            print(
                f"{label} green: sensitivity {_ci(green['sensitivity'])}, ruled out "
                f"{_ci(green['share_ruled_out_ci'])}, risk in green {_ci(green['risk_in_green'])}"
            )
        else:
            print(
                f"{label} green: not set ({result.provenance['thresholds']['rule_out']['reason']})"
            )
        if red:
            print(f"{label} red: PPV {_ci(red['ppv'])}, expedited {_ci(red['share_expedited_ci'])}")
    flagged = ev["subgroups"].get("flagged") or []
    print(
        "subgroups flagged: "
        + (
            ", ".join(f"{f['column']} {f['level']} ({', '.join(f['flags'])})" for f in flagged)
            or "none"
        )
    )


def _ci(block: dict) -> str:  # type: ignore[type-arg]
    return f"{block['estimate']:.4f} [{block['low']:.4f}, {block['high']:.4f}]"


if __name__ == "__main__":
    main()
