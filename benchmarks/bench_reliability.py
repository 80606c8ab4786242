"""Reliability figures: 60 s of mixed load with 16 clients, then kill -9 under load.

Needs a released champion in the BentoML store (run `make run --no-serve` style setup first, or
point BENTOML_HOME at a store `triage release` filled). Prints JSON-like figures for the README.
Run: `BENTOML_HOME=var/bentoml .venv/bin/python benchmarks/bench_reliability.py [--seconds 60]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from drills import crash_drill, drill_env, load_drill

API_KEY = "reliability-drill-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--crash-seconds", type=float, default=20)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    store = os.environ.get("BENTOML_HOME")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; BentoML store {store}")
    with tempfile.TemporaryDirectory() as tmp:
        load = load_drill(
            drill_env(Path(tmp) / "load", API_KEY), headers, args.clients, args.seconds
        )
        print("load:", json.dumps(load, indent=1))
        crash = crash_drill(
            drill_env(Path(tmp) / "crash", API_KEY), headers, args.clients, args.crash_seconds
        )
        print("crash:", json.dumps(crash, indent=1))


if __name__ == "__main__":
    main()
