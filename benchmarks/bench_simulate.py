"""Benchmark: simulate 400,000 referrals, wide and long, and write them as Parquet.

Prints wall times; it asserts nothing (the goal, under 60 s on 2 cores, lives here, not in a
timed unit test). Run: `.venv/bin/python benchmarks/bench_simulate.py [--n N] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from training.cohorts.simulator import simulate_referrals, write_cohort
from training.cohorts.simulator.world import ReferralParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400_000, help="referrals")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        started = time.perf_counter()
        cohort = simulate_referrals(ReferralParams(n=args.n), np.random.default_rng(args.seed))
        simulated = time.perf_counter()
        write_cohort(cohort, out)
        written = time.perf_counter()
        sizes = {p.name: p.stat().st_size / 1e6 for p in sorted(out.glob("referrals_*.parquet"))}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"simulate_referrals: {args.n:,} referrals, {len(cohort.results):,} long results "
        f"in {simulated - started:.1f} s"
    )
    print(f"write Parquet (wide, results, index): {written - simulated:.1f} s")
    print(f"total: {written - started:.1f} s (goal: under 60 s on 2 cores)")
    for name, megabytes in sizes.items():
        print(f"  {name}: {megabytes:,.1f} MB")


if __name__ == "__main__":
    main()
