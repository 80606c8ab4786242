"""Cohort I/O: read wide or long tables, map a custom cohort's columns onto catalogue codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.spec import ModelSpec


class CohortError(ValueError):
    """A cohort file that cannot be read or does not have the columns it needs."""


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file (or a folder of Parquet parts) as a DataFrame."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in {".csv", ".gz"}:
        return pd.read_csv(path)
    raise CohortError(f"{path}: expected a .csv or .parquet file")


def map_columns(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename a custom cohort's columns to catalogue codes using the spec's `column_map`.

    Returns the renamed frame and the declared unit of each mapped column (the validation then
    converts it; the unit is never guessed).
    """
    if not spec.column_map:
        return frame, {}
    missing = [c for c in spec.column_map if c not in frame.columns]
    if missing:
        raise CohortError(f"columns named in the spec's column_map are missing: {missing}")
    clashes = [
        m.code for c, m in spec.column_map.items() if m.code in frame.columns and m.code != c
    ]
    if clashes:
        raise CohortError(f"column_map targets already present in the cohort: {clashes}")
    renamed = frame.rename(columns={c: m.code for c, m in spec.column_map.items()})
    units = {m.code: m.unit for m in spec.column_map.values() if m.unit is not None}
    return renamed, units
