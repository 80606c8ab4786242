"""Benchmark: `triage monitor` over an audit store of 1,000,000 scored requests (goal: < 1 min on
2 cores), without and with an outcomes file.

Trains, registers and releases a `lower_gi` champion from a simulated cohort (as bench_serve
does), scores 5,000 of the cohort's lower-GI referrals with it, and writes 1,000,000 audit rows
through `AuditStore` (the hash chain included): those scores, received over 52 weeks, one
patient per three requests. The outcomes file holds 10,000 diagnoses, of patients in the store
and not. Then runs the `triage monitor` command as a user would (a new process, CLI start-up
included) and prints wall time and peak memory.
Run: `.venv/bin/python benchmarks/bench_monitor.py [--rows 1000000] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from bench_serve import prepare

from models.analytes import CATALOGUE
from serving.audit import AuditRecord, AuditStore, pseudonymise
from training.registry.store import Tracking
from training.replay.options import pin_model

KEY = "bench-monitor-hmac"
TEMPLATES = 5_000
WRITE_ROWS = 50_000


def templates(work: Path) -> list[AuditRecord]:
    """Audit rows of 5,000 lower-GI referrals as the server would write them."""
    predictor = pin_model(Tracking(work / "var"), "lower_gi/1", work / "pinned").predictor
    cohort = pd.read_parquet(next((work / "cohort").glob("*_wide.parquet")))
    rows = cohort.loc[cohort["pathway"] == "lower_gi"].head(TEMPLATES)
    out = []
    for _, row in rows.iterrows():
        analytes = {
            a.code: {"value": float(row[a.code]), "unit": str(row.get(f"{a.code}_unit") or a.unit)}
            for a in CATALOGUE
            if a.code in row and not pd.isna(row[a.code])
        }
        record = {"age": int(row["age"]), "sex": row["sex"], "analytes": analytes}
        score = predictor.score(record, pathway="lower_gi")
        common = {"request_id": "-", "endpoint": "score", "model_name": "lower_gi",
                  "model_version": "1", "request": {"record": record, "pathway": "lower_gi"},
                  "response": "{}", "warnings": [i.code for i in score.issues
                                                 if i.severity == "warning"]}  # fmt: skip
        if score.eligible:
            out.append(AuditRecord.build(
                outcome="scored", inputs=score.values, probability=score.probability,
                band=score.band, base=score.base, contributions=score.contributions, **common,
            ))  # fmt: skip
        else:
            codes = ["ineligible", *(i.code for i in score.issues if i.severity == "error")]
            out.append(AuditRecord.build(outcome="refused", reason_codes=codes, **common))
    return out


def write_store(url: str, rows: int, found: list[AuditRecord]) -> float:
    """`rows` audit rows (templates repeated, 52 weeks, one patient per three requests)."""
    started = time.perf_counter()
    store = AuditStore(url, KEY)
    first = datetime(2025, 6, 2, 8, tzinfo=UTC)
    step = timedelta(weeks=52) / rows
    patients = [pseudonymise(f"patient-{i}", KEY) for i in range(rows // 3 + 1)]
    try:
        for start in range(0, rows, WRITE_ROWS):
            batch = [
                dataclasses.replace(
                    found[i % len(found)],
                    request_id=f"r{i}",
                    received_at=(first + step * i).isoformat(timespec="microseconds"),
                    patient_pseudonym=patients[i // 3],
                )
                for i in range(start, min(start + WRITE_ROWS, rows))
            ]
            store.write(batch)
    finally:
        store.close()
    return time.perf_counter() - started


def outcomes_file(path: Path, rows: int) -> None:
    rng = np.random.default_rng(5)
    chosen = rng.choice(rows // 3 + 1_000, size=10_000, replace=False)  # some never scored
    days = pd.Timestamp("2025-07-01") + pd.to_timedelta(rng.integers(0, 500, 10_000), unit="D")
    pd.DataFrame({"patient_reference": [f"patient-{i}" for i in chosen],
                  "diagnosis_date": days.strftime("%Y-%m-%d"), "site": "colorectal"}
                 ).to_csv(path, index=False)  # fmt: skip


def run_monitor(env: dict[str, str], args: list[str], log: Path) -> tuple[float, int, float]:
    """Wall seconds, exit status and peak RSS (GiB, from the child's own rusage) of one
    `triage monitor` run; its output goes to `log`."""
    started = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen([sys.executable, "-m", "training.cli", "monitor", *args],
                                 env=env, stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, child.returncode, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cohort", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        env = {**os.environ, **prepare(work, args.cohort), "TRIAGE_HMAC_KEY": KEY}
        url = f"sqlite:///{work / 'audit.db'}"
        wrote = write_store(url, args.rows, templates(work))
        size = (work / "audit.db").stat().st_size / 2**30
        print(f"audit store: {args.rows:,} rows written in {wrote:.1f} s ({size:.2f} GiB)")
        outcomes_file(work / "outcomes.csv", args.rows)
        common = ["--model", "lower_gi", "--audit-url", url, "--workdir", str(work / "var")]
        runs = {
            "no outcomes": [*common, "--out", str(work / "m1")],
            "10,000 outcomes": [*common, "--out", str(work / "m2"), "--outcomes",
                                str(work / "outcomes.csv"), "--follow-up-end", "2026-11-30"],
        }  # fmt: skip
        for i, (label, arguments) in enumerate(runs.items()):
            log = work / f"monitor-{i}.log"
            seconds, status, peak = run_monitor(env, arguments, log)
            print(f"[{label}] triage monitor over {args.rows:,} requests: {seconds:.1f} s wall "
                  f"(goal < 60 s), exit {status}, peak RSS {peak:.2f} GiB")  # fmt: skip
            for line in log.read_text().strip().splitlines()[-6:]:
                print(f"    {line}")


if __name__ == "__main__":
    main()
