"""Benchmark: `import_omop` on an OMOP CDM instance of 1,000,000 people and ~30,000,000
measurements (Parquet tables), on 2 DuckDB threads with a 2 GB DuckDB memory limit.

The instance is generated, not simulated whole (simulating a million referrals gives ~67 million
results, and takes minutes and gigabytes the benchmark does not need): the simulator makes a base
referral cohort (about a tenth of the people), `write_omop` exports it, and the exported tables
are replicated with every id shifted (persons, measurements, visits, observations, conditions,
periods) until `--people` people exist, one Parquet part per copy (`measurement/part-003.parquet`:
the importer reads a table folder of parts). Each copy keeps a deterministic share of the blood
draws (whole visits, so panels stay whole) so that there are about `--per-person` measurements
per person. Concepts and care sites are shared.

The import runs in a child process; its peak RSS (DuckDB included) is the child's ru_maxrss.
Targets: under 2 minutes and under 4 GB on 2 cores. Prints figures; asserts nothing.
Run: `.venv/bin/python benchmarks/bench_omop.py [--people 1000000] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SHARED = ("concept", "concept_relationship", "care_site")
ID_COLUMNS = (  # columns shifted per copy, by the base's largest value of that id
    "person_id", "measurement_id", "visit_occurrence_id", "observation_id",
    "condition_occurrence_id", "observation_period_id",
)  # fmt: skip
BASE_SHARE = 10  # copies of the base cohort


def generate(people: int, per_person: float, work: Path, seed: int) -> dict[str, float]:
    """Write the instance into `work/instance`; return its size and how long it took."""
    from training.cohorts.simulator import run_simulation
    from training.cohorts.standard.omop_export import write_omop

    started = time.perf_counter()
    referrals = math.ceil(people / BASE_SHARE / 0.9)  # ~0.91 people per simulated referral
    run_simulation(cohort="referrals", n=referrals, seed=seed, out=work / "native")
    index = pd.read_parquet(work / "native" / "referrals_index.parquet")
    results = pd.read_parquet(work / "native" / "referrals_results.parquet")
    write_omop(index, results, work / "base")
    del index, results
    base = {path.stem: pq.read_table(path) for path in (work / "base").glob("*.parquet")}
    persons = base["person"]["person_id"]
    keep = min(1.0, per_person * len(persons) / len(base["measurement"]))
    shift = {c: max(int(pc.max(t[c]).as_py()) for t in base.values() if c in t.column_names)
             for c in ID_COLUMNS}  # fmt: skip
    instance = work / "instance"
    shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True)
    for name in SHARED:
        pq.write_table(base[name], instance / f"{name}.parquet")
    copies = math.ceil(people / len(persons))
    measurements = 0
    for copy in range(copies):
        wanted = min(len(persons), people - copy * len(persons))  # the last copy: fewer
        chosen = pc.is_in(persons, persons.slice(0, wanted))
        for name, table in base.items():
            if name in SHARED:
                continue
            part = table.filter(pc.is_in(table["person_id"], persons.filter(chosen)))
            if name == "measurement":
                part = part.filter(_kept_visits(part["visit_occurrence_id"], copy, keep))
                measurements += len(part)
            part = _shifted(part, copy, shift)
            (instance / name).mkdir(exist_ok=True)
            pq.write_table(part, instance / name / f"part-{copy:03d}.parquet")
    return {
        "people": people,
        "measurements": measurements,
        "base_referrals": referrals,
        "copies": copies,
        "seconds": time.perf_counter() - started,
    }


def _kept_visits(visit: pa.ChunkedArray, copy: int, share: float) -> np.ndarray:
    """A deterministic `share` of the visits (a multiplicative hash of id and copy)."""
    ids = visit.to_numpy().astype(np.uint64) + np.uint64(copy) * np.uint64(1_000_003)
    hashed = (ids * np.uint64(2_654_435_761)) % np.uint64(1_000_000)
    return hashed < np.uint64(int(share * 1_000_000))


def _shifted(table: pa.Table, copy: int, shift: dict[str, int]) -> pa.Table:
    for column, step in shift.items():
        if column in table.column_names and copy:
            position = table.column_names.index(column)
            moved = pc.add(table[column], pa.scalar(copy * step, pa.int64()))
            table = table.set_column(position, column, moved)
    return table


def run_import(instance: Path, out: Path, work: Path, threads: int, memory: str) -> dict:
    """Import in a child process; (seconds, peak RSS in bytes, the manifest's counts)."""
    settings = {"threads": str(threads), "memory_limit": memory,
                "temp_directory": str(work / "duckdb_tmp")}  # fmt: skip
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from training.cohorts.standard.omop_import import import_omop\n"
        "started = time.perf_counter()\n"
        f"manifest = import_omop(Path({str(instance)!r}), Path({str(out)!r}), "
        f"engine_settings={settings!r})\n"
        f"Path({str(work / 'import_report.json')!r}).write_text(json.dumps({{"
        "'seconds': time.perf_counter() - started, "
        "'counts': manifest['counts'], 'exclusions': manifest['exclusions']}))\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)  # a report file, not stdout
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child
    report = json.loads((work / "import_report.json").read_text())
    report.update(wall_seconds=wall, peak_rss_bytes=peak * 1024, earlier_children_kib=before)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--per-person", type=float, default=30.0, help="measurements per person")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB's memory_limit")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="reuse WORK/instance if present")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_omop_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.reuse and (work / "instance").is_dir():
        print(f"reusing {work / 'instance'}")
    else:
        made = generate(args.people, args.per_person, work, args.seed)
        print(f"generated: {json.dumps(made)}")
    size = sum(p.stat().st_size for p in (work / "instance").rglob("*") if p.is_file())
    print(f"instance: {work / 'instance'} ({size / 1e9:.2f} GB of Parquet)")
    report = run_import(work / "instance", work / "cohort", work, args.threads, args.memory_limit)
    counts = report["counts"]
    print(f"people {counts['people']:,}, measurements read {counts['measurements_read']:,}, "
          f"results {counts['results']:,}, index events {counts['index_events']:,}")  # fmt: skip
    print(
        f"import: {report['seconds']:.1f} s (process wall {report['wall_seconds']:.1f} s), "
        f"peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB "
        f"(threads={args.threads}, memory_limit={args.memory_limit})"
    )
    excluded = {
        f"{r['step']}/{r['reason']}": r["count"] for r in report["exclusions"] if r["count"]
    }
    print(f"excluded: {excluded}")


if __name__ == "__main__":
    main()
