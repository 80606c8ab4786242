"""Benchmark: cohort replay of 1,000,000 simulated referrals on this machine's cores.

Prints (it asserts nothing; the goals are stated beside the figures):
1. scoring without explanations: the chunked pass (read -> validate -> predict -> write) over 1M
   rows, against the raw booster `predict` on the same rows' feature matrix (goal: <= 30 s and
   <= 3x the raw booster time), with the pass's stage breakdown;
2. explanation throughput (goal: >= 5,000 patients/s);
3. peak resident memory of a 5,000,000-row wide cohort replayed in chunks in a subprocess
   (goal: <= 2 GB); the 5M-row Parquet is built by tiling a 1M cohort with a ParquetWriter.

A default any_cancer model is trained once on 100k simulated referrals and registered in a
temporary MLflow store, so the replay resolves it through the registry as in production.
Run: `.venv/bin/python benchmarks/bench_replay.py [--rows 1000000] [--big-rows 5000000]
[--explain-rows 200000] [--workdir DIR]` (a given workdir keeps the cohorts between runs;
`--big-rows 0` or `--explain-rows 0` skips that part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.spec import load_spec
from training.cohorts.reader import open_cohort
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model
from training.registry.runs import log_training
from training.registry.store import Tracking, load_predictor
from training.replay.chunks import score_chunk
from training.replay.options import ReplayOptions
from training.replay.run import replay

TRAIN_ROWS = 100_000
ROW_GROUP = 250_000


def prepare(workdir: Path, rows: int) -> tuple[Tracking, Path]:
    """Train + register the model once; simulate the replay cohort once."""
    tracking = Tracking(workdir / "var")
    train_cohort, cohort = workdir / "train", workdir / f"referrals_{rows}"
    if not (cohort / "referrals_wide.parquet").is_file():
        started = time.perf_counter()
        run_simulation(cohort="referrals", n=rows, seed=2, out=cohort)
        print(f"simulated {rows:,} referrals in {time.perf_counter() - started:.1f} s")
    if not tracking.client.search_registered_models():
        run_simulation(cohort="referrals", n=TRAIN_ROWS, seed=1, out=train_cohort)
        result = train_model(load_spec("any_cancer"), TrainOptions(train_cohort, n_boot=20))
        log_training(result, tracking)
        booster = result.predictor.booster  # a spline model (model.family) has no trees
        size = (
            f"{booster.num_trees()} trees"
            if isinstance(booster, lgb.Booster)
            else f"a {result.predictor.family} model"
        )
        print(f"trained any_cancer on {TRAIN_ROWS:,} referrals: {size}")
    return tracking, cohort


def raw_booster_seconds(tracking: Tracking, cohort: Path, workdir: Path) -> tuple[float, int]:
    """The booster alone (`predict(raw_score=True)`, all cores) on the eligible rows' features:
    the fastest of three runs, so a slow one cannot flatter the ratio."""
    predictor, _ = load_predictor(tracking.client, "any_cancer", "1", workdir / "dl")
    parts = []
    for frame in open_cohort(cohort).chunks(ROW_GROUP):
        scored = score_chunk(predictor, frame)
        parts.append(scored.features.to_numpy(np.float64))
    x = np.ascontiguousarray(np.concatenate(parts))
    predictor.booster.predict(x[:1000], raw_score=True, num_threads=0)  # warm up
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.booster.predict(x, raw_score=True, num_threads=0)
        runs.append(time.perf_counter() - started)
    return min(runs), len(x)


def bench_scoring(tracking: Tracking, cohort: Path, workdir: Path) -> None:
    result = replay(tracking, ["any_cancer/1"], ReplayOptions(cohort, workdir / "out_score"))
    timings = result.manifest["timings_seconds"]
    stages = result.manifest["models"][0]["timings_seconds"]
    raw, eligible = raw_booster_seconds(tracking, cohort, workdir)
    rows, score = result.manifest["cohort"]["rows"], timings["score"]
    print(f"\n1. scoring {rows:,} rows without explanations ({eligible:,} eligible)")
    print(f"   chunked pass (read, validate, predict, write, tallies): {score:.1f} s [goal <= 30]")
    print(f"   raw booster predict on the same rows (fastest of 3): {raw:.1f} s")
    print(f"   ratio: {score / raw:.2f}x  [goal <= 3x]")
    print("   stages (s, and x raw booster): " + ", ".join(
        f"{k} {v:.1f} ({v / raw:.2f}x)" for k, v in stages.items()
    ))  # fmt: skip
    no_validation = score - stages["validate"]
    print(
        f"   without catalogue validation the pass would be {no_validation / raw:.2f}x; without "
        f"it and the drift/evaluation tallies {(no_validation - stages['summaries']) / raw:.2f}x"
    )
    rest = {k: timings[k] for k in ("pin", "evaluate", "report", "total")}
    print("   then: " + ", ".join(f"{k} {v:.1f} s" for k, v in rest.items()))


def bench_explain(tracking: Tracking, cohort: Path, workdir: Path, rows: int) -> None:
    subset = workdir / f"explain_{rows}.parquet"
    wide = pq.ParquetFile(open_cohort(cohort).files[0])
    writer = None
    written = 0
    for batch in wide.iter_batches(batch_size=min(rows, ROW_GROUP)):
        if written >= rows:
            break
        table = pa.Table.from_batches([batch]).slice(0, rows - written)
        writer = writer or pq.ParquetWriter(subset, table.schema)
        writer.write_table(table)
        written += table.num_rows
    assert writer is not None
    writer.close()
    options = ReplayOptions(subset, workdir / "out_explain", explain=True)
    result = replay(tracking, ["any_cancer/1"], options)
    model = result.manifest["models"][0]
    scored, stages = model["counts"]["scored"], model["timings_seconds"]
    print(f"\n2. explanations: {rows:,} rows ({scored:,} scored)")
    print(f"   explain stage: {stages['explain']:.1f} s -> {scored / stages['explain']:,.0f} "
          "patients/s  [goal >= 5,000]")  # fmt: skip
    whole = result.manifest["timings_seconds"]["score"]
    print(f"   whole chunked pass with explanations: {whole:.1f} s -> {rows / whole:,.0f} rows/s")
    predictor, _ = load_predictor(tracking.client, "any_cancer", "1", workdir / "dl")
    x = np.concatenate(
        [score_chunk(predictor, f).features.to_numpy(np.float64) for f in open_cohort(subset)
         .chunks(ROW_GROUP)]
    )  # fmt: skip
    started = time.perf_counter()
    predictor.booster.predict(np.ascontiguousarray(x), pred_contrib=True, num_threads=0)
    raw = time.perf_counter() - started
    print(f"   raw booster pred_contrib on the same rows: {raw:.1f} s -> {len(x) / raw:,.0f}/s")


def tile(cohort: Path, target: Path, rows: int) -> None:
    """A `rows`-row wide Parquet from copies of the cohort (ids offset per copy)."""
    source = pq.ParquetFile(open_cohort(cohort).files[0])
    n = source.metadata.num_rows
    offset = 10 ** int(np.ceil(np.log10(n * 10)))
    writer = None
    written, copy = 0, 0
    while written < rows:
        for batch in source.iter_batches(batch_size=ROW_GROUP):
            table = pa.Table.from_batches([batch]).slice(0, rows - written)
            for key in ("patient_id", "referral_id"):
                column = table.column(key).to_numpy() + copy * offset
                table = table.set_column(table.schema.get_field_index(key), key, pa.array(column))
            writer = writer or pq.ParquetWriter(target, table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP)
            written += table.num_rows
            if written >= rows:
                break
        copy += 1
    assert writer is not None
    writer.close()


def bench_memory(tracking: Tracking, cohort: Path, workdir: Path, rows: int) -> None:
    big = workdir / f"wide_{rows}.parquet"
    if not big.is_file() or pq.ParquetFile(big).metadata.num_rows != rows:
        started = time.perf_counter()
        tile(cohort, big, rows)
        print(f"\n(built {big.name} in {time.perf_counter() - started:.1f} s)")
    command = [sys.executable, __file__, "--child", str(big), "--workdir", str(workdir)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    peak = json.loads((workdir / "child_peak.json").read_text())
    manifest = json.loads((workdir / "out_big" / "manifest.json").read_text())
    print(f"\n3. {rows:,}-row wide cohort replayed in chunks (subprocess): {seconds:.0f} s")
    print(f"   peak RSS (VmHWM): {peak['vm_hwm_kb'] / 1024**2:.2f} GB  [goal <= 2 GB]")
    print("   " + ", ".join(f"{k} {v:.0f} s" for k, v in manifest["timings_seconds"].items()))


def child(path: Path, workdir: Path) -> None:
    """The replay whose peak memory is measured (evaluation and report included)."""
    options = ReplayOptions(path, workdir / "out_big", n_boot=50)
    replay(Tracking(workdir / "var"), ["any_cancer/1"], options)
    # VmHWM is this process's own peak; ru_maxrss would also count the parent's pages that
    # the child shared between fork and exec.
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    (workdir / "child_peak.json").write_text(json.dumps({"vm_hwm_kb": hwm}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=5_000_000)
    parser.add_argument("--explain-rows", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-replay-"))
    if args.child is not None:
        child(args.child, workdir)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"pandas {pd.__version__}, pyarrow {pa.__version__}; workdir {workdir}")
    tracking, cohort = prepare(workdir, args.rows)
    bench_scoring(tracking, cohort, workdir)
    if args.explain_rows > 0:
        bench_explain(tracking, cohort, workdir, args.explain_rows)
    if args.big_rows > 0:
        bench_memory(tracking, cohort, workdir, args.big_rows)


if __name__ == "__main__":
    main()
