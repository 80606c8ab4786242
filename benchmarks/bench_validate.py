"""Benchmark: vectorised validation of a 1,000,000-row, 35-analyte frame.

Prints wall times; it asserts nothing (performance targets live here, not in timed unit tests).
Run: `.venv/bin/python benchmarks/bench_validate.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from models.analytes import CATALOGUE
from models.frame_validation import validate_frame
from models.validation import Eligibility


def make_frame(rows: int, n_analytes: int, seed: int = 1) -> pd.DataFrame:
    """Values spread around each reference interval (some beyond), 10% missing per analyte,
    5% of haemoglobin reported in g/dL."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {
        "age": rng.integers(18, 95, rows).astype(float),
        "sex": rng.choice(np.array(["male", "female"], dtype=object), rows),
    }
    for analyte in list(CATALOGUE)[:n_analytes]:
        low = analyte.reference.low if analyte.reference.low is not None else 0.0
        high = analyte.reference.high if analyte.reference.high is not None else 2 * low + 1
        values = rng.uniform(low, high + 0.3 * (high - low), rows).round(analyte.decimals)
        values[rng.random(rows) < 0.10] = np.nan
        columns[analyte.code] = values
    # Lab values hang together: identities the consistency rules check hold, as in real reports.
    columns["mch"] = (columns["haemoglobin"] / columns["rbc"]).round(1)  # type: ignore[operator]
    columns["globulin"] = columns["total_protein"] - columns["albumin"]  # type: ignore[operator]
    columns["albumin"] = np.minimum(columns["albumin"], columns["total_protein"] - 5)  # type: ignore[call-overload,operator]
    columns["globulin"] = columns["total_protein"] - columns["albumin"]  # type: ignore[operator]
    differential = ("neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils")
    share = rng.dirichlet(np.ones(len(differential)) * 4, rows)
    for i, code in enumerate(differential):
        columns[code] = (columns["wbc"] * share[:, i] * 0.98).round(2)  # type: ignore[operator]
    hb_units = np.where(rng.random(rows) < 0.05, "g/dL", "g/L").astype(object)
    columns["haemoglobin"] = np.where(
        hb_units == "g/dL", columns["haemoglobin"] / 10, columns["haemoglobin"]
    )  # type: ignore[operator]
    columns["haemoglobin_unit"] = hb_units
    return pd.DataFrame(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--analytes", type=int, default=35)
    args = parser.parse_args()
    frame = make_frame(args.rows, args.analytes)
    eligibility = Eligibility(required_panels=("fbc", "renal"))
    validate_frame(frame.head(1000), eligibility=eligibility)  # warm caches
    started = time.perf_counter()
    result = validate_frame(frame, eligibility=eligibility)
    seconds = time.perf_counter() - started
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"validate_frame: {args.rows:,} rows x {args.analytes} analytes in {seconds:.2f} s "
        f"({args.rows / seconds:,.0f} rows/s)"
    )
    print(f"issues: {len(result.issues):,}; eligible rows: {int(result.eligible.sum()):,}")
    print(result.summary().head(8).to_string(index=False))


if __name__ == "__main__":
    main()
