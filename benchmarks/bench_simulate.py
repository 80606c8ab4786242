"""Benchmark: simulate 400,000 referrals (or a myeloma population), wide and long, and write
them as Parquet.

Prints wall times and file sizes; it asserts nothing (the goal, under 60 s on 2 cores for the
referrals, lives here, not in a timed unit test). Run:
`.venv/bin/python benchmarks/bench_simulate.py [--cohort referrals|myeloma] [--n N] [--out DIR]`
(`--cohort myeloma --n 4000000` is the size `make run` simulates; it also writes the whole
population's table, `myeloma_population.parquet`).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from training.cohorts.simulator import simulate_myeloma, simulate_referrals, write_cohort
from training.cohorts.simulator.world import DEFAULT_N, MyelomaParams, ReferralParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", choices=sorted(DEFAULT_N), default="referrals")
    parser.add_argument("--n", type=int, default=None, help="referrals (400,000) or people")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        started = time.perf_counter()
        if args.cohort == "referrals":
            n = args.n or 400_000
            cohort = simulate_referrals(ReferralParams(n=n), rng)
        else:
            n = args.n or DEFAULT_N["myeloma"]
            cohort = simulate_myeloma(MyelomaParams(n=n), rng)
        simulated = time.perf_counter()
        written_files = write_cohort(cohort, out)
        written = time.perf_counter()
        sizes = {name: (out / name).stat().st_size / 1e6 for name in sorted(written_files)}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"simulate_{args.cohort}: {n:,} rows in, {len(cohort.wide):,} wide rows, "
        f"{len(cohort.results):,} long results in {simulated - started:.1f} s"
    )
    print(f"write files ({', '.join(sorted(written_files))}): {written - simulated:.1f} s")
    goal = " (goal: under 60 s on 2 cores)" if args.cohort == "referrals" else ""
    print(f"total: {written - started:.1f} s{goal}")
    for name, megabytes in sizes.items():
        print(f"  {name}: {megabytes:,.1f} MB")


if __name__ == "__main__":
    main()
