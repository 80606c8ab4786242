"""Benchmark: audit commits, one row per request, before and after group commit.

`before`: the previous store (`git show <rev>:serving/audit.py`: unchained `audit_log`, one
transaction per request), called as the service called it. `after, one per txn`: the hash-chained
store with groups of one (the chain lock without the sharing). `after`: group commit. Callers are
N threads calling `commit`, or N asyncio tasks in one event loop calling `commit_async` (how a
worker's async routes call it). Each stores rows/s and the caller's p50/p99 commit latency.

Prints figures; it asserts nothing (performance targets live here, not in timed unit tests).
Run: `.venv/bin/python benchmarks/bench_audit.py [--postgres URL] [--requests N] [--rev HEAD]`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sqlalchemy as sa

from serving.audit import AuditRecord, AuditStore, canonical_request
from serving.audit_writer import GroupWriter

KEY = "bench-hmac-key"


def old_module(rev: str) -> ModuleType:
    """The audit module as it was at `rev` (loaded from git, not imported from the tree)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:serving/audit.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_audit.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_audit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_audit"] = module
    spec.loader.exec_module(module)
    return module


def new_record(request_id: str) -> AuditRecord:
    record = {"age": 71, "sex": "male", "analytes": {f"a{n}": {"value": n, "unit": "g/L"}
                                                     for n in range(22)}}  # fmt: skip
    values = {f"a{n}": float(n) for n in range(22)}
    return AuditRecord.build(
        request_id=request_id, endpoint="score", outcome="scored",
        request=canonical_request(record, pathway="lower_gi", values=values, model="lower_gi"),
        response="{" + '"x":1,' * 120 + '"y":0}', model_name="lower_gi", model_version="1",
        run_id="r" * 32, patient_pseudonym="p" * 64, inputs=values, warnings=["w"],
        probability=0.25, band="red", base=-2.0, contributions={f"a{n}": 0.01 for n in range(30)},
    )  # fmt: skip


def old_record(module: ModuleType, request_id: str) -> Any:
    values = {f"a{n}": float(n) for n in range(22)}
    return module.AuditRecord.build(
        request_id=request_id, item=0, endpoint="score", model_name="lower_gi",
        model_version="1", run_id="r" * 32, patient_pseudonym="p" * 64, inputs=values,
        warnings=["w"], probability=0.25, band="red", base=-2.0,
        contributions={f"a{n}": 0.01 for n in range(30)},
    )  # fmt: skip


def run_threads(commit: Callable[[str], None], threads: int, requests: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        mine = []
        for n in range(requests // threads):
            started = time.perf_counter()
            commit(f"{worker}-{n}-{uuid.uuid4().hex[:8]}")
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies


def run_tasks(store: AuditStore, tasks: int, requests: int) -> list[float]:
    latencies: list[float] = []

    async def work(worker: int) -> None:
        for n in range(requests // tasks):
            started = time.perf_counter()
            await store.commit_async([new_record(f"{worker}-{n}-{uuid.uuid4().hex[:8]}")])
            latencies.append(time.perf_counter() - started)

    async def main() -> None:
        await asyncio.gather(*(work(w) for w in range(tasks)))

    asyncio.run(main())
    return latencies


def report(label: str, latencies: list[float], seconds: float) -> None:
    ms = np.array(latencies) * 1000
    print(
        f"  {label:<34} {len(ms) / seconds:8,.0f} rows/s   p50 {np.percentile(ms, 50):6.2f} ms"
        f"   p99 {np.percentile(ms, 99):6.2f} ms"
    )


def timed(run: Callable[[], list[float]]) -> tuple[list[float], float]:
    started = time.perf_counter()
    latencies = run()
    return latencies, time.perf_counter() - started


def bench_store(name: str, url: str, old: ModuleType, callers: int, requests: int) -> None:
    print(f"{name}: {requests:,} single-row requests, {callers} concurrent callers")
    before = old.AuditStore(url)
    latencies, seconds = timed(
        lambda: run_threads(lambda rid: before.write([old_record(old, rid)]), callers, requests)
    )
    report("before (threads)", latencies, seconds)
    before.close()
    single = AuditStore(url, KEY)
    single._writer = GroupWriter(single._write_group, max_group=1)
    latencies, seconds = timed(
        lambda: run_threads(lambda rid: single.commit([new_record(rid)]), callers, requests)
    )
    report("after, one per txn (threads)", latencies, seconds)
    single.close()
    after = AuditStore(url, KEY)
    latencies, seconds = timed(
        lambda: run_threads(lambda rid: after.commit([new_record(rid)]), callers, requests)
    )
    report("after, group commit (threads)", latencies, seconds)
    latencies, seconds = timed(lambda: run_tasks(after, callers, requests))
    report("after, group commit (async tasks)", latencies, seconds)
    latencies, seconds = timed(
        lambda: run_threads(lambda rid: after.commit([new_record(rid)]), 1, requests // 4)
    )
    report("after, one caller", latencies, seconds)
    check = after.verify()
    print(f"  chain: {check.describe()}")
    after.close()


def fresh_schema(base: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return f"{base}?options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="PostgreSQL URL (a new schema is made in it)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--rev", default="HEAD", help="git revision of the `before` store")
    args = parser.parse_args()
    old = old_module(args.rev)
    folder = Path(tempfile.mkdtemp())
    bench_store("SQLite", f"sqlite:///{folder / 'audit.db'}", old, args.callers, args.requests)
    if args.postgres:
        url = fresh_schema(args.postgres)
        bench_store("PostgreSQL", url, old, args.callers, args.requests)


if __name__ == "__main__":
    main()
