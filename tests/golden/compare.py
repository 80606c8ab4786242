"""Compare two golden pipeline runs value by value, for a change that is *meant* to move numbers.

    python -m tests.golden.compare OLD_DIR NEW_DIR [--rel 1e-12]

OLD_DIR and NEW_DIR are `--out` folders of `tests.golden.snapshot` run on two versions of the
code. Every Parquet and JSON file the pipeline wrote (cohorts, replay outputs, each registered
version's logged artifacts and predictor, and the API responses of `snapshot.json`) is compared:
text, integers, booleans and missing values must be equal; floats may differ by at most `--rel`
relative to their size. Prints the largest relative difference per file and every value beyond
the tolerance; exits non-zero if any.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.golden.snapshot import CODE_VERSION, VOLATILE

# Besides the snapshot's volatile keys: digests of file bytes (they hold a code version or
# the very floats compared here) and timings.
SKIPPED = VOLATILE | {"cohort_digest", "sha256", "timings_seconds"}


ROOTS = ["", ""]  # the two runs' folders, equal in paths that name them


def _relative(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def compare_values(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, float | None]]:
    """(path, relative difference) for each pair of floats; (path, None) for any other mismatch."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) != set(new):
            yield f"{path} keys {sorted(set(old) ^ set(new))}", None
        for key in sorted((set(old) & set(new)) - SKIPPED, key=str):
            yield from compare_values(old[key], new[key], f"{path}/{key}")
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            yield f"{path} length {len(old)} != {len(new)}", None
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            yield from compare_values(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and isinstance(new, float):
        yield path, _relative(old, new)
    elif isinstance(old, str) and isinstance(new, str):
        if CODE_VERSION.sub("V", old).replace(ROOTS[0], "R") != CODE_VERSION.sub("V", new).replace(
            ROOTS[1], "R"
        ):
            yield f"{path}: {old!r} != {new!r}", None
    elif old != new:
        yield f"{path}: {old!r} != {new!r}", None


def compare_frames(old: pd.DataFrame, new: pd.DataFrame) -> Iterator[tuple[str, float | None]]:
    if list(old.columns) != list(new.columns) or len(old) != len(new):
        yield f"shape/columns {old.shape} != {new.shape}", None
        return
    for column in old.columns:
        a, b = old[column], new[column]
        if pd.api.types.is_float_dtype(a) and pd.api.types.is_float_dtype(b):
            x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                yield f"{column}: missing values differ", None
                continue
            known = ~np.isnan(x)
            scale = np.maximum(np.maximum(np.abs(x[known]), np.abs(y[known])), 1e-300)
            worst = float(np.max(np.abs(x[known] - y[known]) / scale, initial=0.0))
            yield column, worst
        elif not a.astype(str).equals(b.astype(str)):
            yield f"{column}: values differ", None


def _versions(root: Path) -> dict[str, str]:
    """name/version -> run id, from the run's MLflow store."""
    with sqlite3.connect(root / "var" / "mlflow.db") as db:
        rows = db.execute("select name, version, run_id from model_versions").fetchall()
    return {f"{name}/{version}": run_id for name, version, run_id in rows}


def pairs(old: Path, new: Path) -> Iterator[tuple[str, Path, Path]]:
    """(label, old file, new file) for every compared file."""
    for path in sorted(old.rglob("*")):
        relative = path.relative_to(old)
        if relative.parts[0] in {"var"} or path.suffix not in {".parquet", ".json"}:
            continue
        if path.is_file() and relative.name != "snapshot.json":
            yield str(relative), path, new / relative
    old_runs, new_runs = _versions(old), _versions(new)
    downloads = Path("var") / "golden-downloads"
    for label in sorted(old_runs):
        name, version = label.split("/")
        for kind, o, n in (
            ("run", old / downloads / old_runs[label], new / downloads / new_runs[label]),
            ("model", old / downloads / f"{name}-{version}", new / downloads / f"{name}-{version}"),
        ):
            for path in sorted(o.rglob("*")):
                if path.is_file() and path.suffix in {".parquet", ".json"}:
                    relative = path.relative_to(o)
                    yield f"{label} {kind}: {relative}", path, n / relative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rel", type=float, default=1e-12)
    args = parser.parse_args()
    ROOTS[:] = [str(args.old.resolve()), str(args.new.resolve())]
    failures, files = [], 0
    worst_overall = 0.0
    for label, old, new in pairs(args.old, args.new):
        files += 1
        if not new.exists():
            failures.append(f"{label}: missing in the new run")
            continue
        if old.suffix == ".parquet":
            found = list(compare_frames(pd.read_parquet(old), pd.read_parquet(new)))
        else:
            found = list(compare_values(json.loads(old.read_text()), json.loads(new.read_text())))
        worst = max((d for _, d in found if d is not None), default=0.0)
        worst_overall = max(worst_overall, worst)
        bad = [p for p, d in found if d is None or d > args.rel]
        failures += [f"{label}: {p}" for p in bad]
        print(f"{worst:9.2e}  {label}")
    api_old = json.loads((args.old / "snapshot.json").read_text())["api"]
    api_new = json.loads((args.new / "snapshot.json").read_text())["api"]
    for api in (api_old, api_new):
        api.pop("models")  # digested in the snapshot; its figures are the predictors' JSON
    found = list(compare_values(api_old, api_new))
    worst = max((d for _, d in found if d is not None), default=0.0)
    print(f"{worst:9.2e}  API responses")
    failures += [f"api: {p}" for p, d in found if d is None or d > args.rel]
    print(
        f"{files + 1} files compared; largest relative difference {max(worst, worst_overall):.2e}"
    )
    if failures:
        print(f"{len(failures)} differences beyond {args.rel:g} or not numeric:")
        print("\n".join(failures[:80]))
        sys.exit(1)


if __name__ == "__main__":
    main()
