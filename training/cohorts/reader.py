"""The one cohort reader: every layout a cohort comes in, as wide frames.

    a wide Parquet or CSV file              -> its rows
    a folder with `*_wide.parquet`          -> that table
    a folder with `*_results.parquet` and   -> the as-of selection (`training.cohorts.asof`): per
      `*_index.parquet` (long)                 index event and analyte, the latest result within
                                               the window before the index date, never one on
                                               or after it
    a folder of Parquet parts               -> one wide table

`open_cohort` says which layout it found and where (`CohortSource`); `read()` gives the whole
wide frame (training), `chunks()` streams it (replay: a wide Parquet file in batches, a CSV in
chunks, a long cohort joined whole and then cut). `source` picks the wide or the long tables of a
folder that holds both. The digest covers the files actually read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.parquet as pq

from training.cohorts.asof import as_of_wide
from training.provenance import files_sha256

Source = Literal["auto", "wide", "long"]
CSV_SUFFIXES = {".csv", ".gz"}


class CohortError(ValueError):
    """A cohort file that cannot be read or does not have the columns it needs."""


@dataclass(frozen=True)
class CohortSource:
    """Where a cohort's rows come from, and how they are read."""

    path: Path
    kind: Literal["wide_parquet", "wide_csv", "long"]
    files: tuple[Path, ...]  # long: (results, index)
    window_days: int = 90

    def columns(self) -> list[str]:
        """Column names before the as-of join (for a long cohort: the index events' columns)."""
        if self.kind == "wide_parquet":
            return list(pq.read_schema(self.files[0]).names)
        if self.kind == "wide_csv":
            return list(pd.read_csv(self.files[0], nrows=0).columns)
        return list(pq.read_schema(self.files[1]).names)

    def n_rows(self) -> int | None:
        """Rows (index events), when known without reading the data."""
        if self.kind == "wide_parquet":
            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        if self.kind == "long":
            return int(pq.ParquetFile(self.files[1]).metadata.num_rows)
        return None

    def digest(self) -> str:
        """SHA-256 over the files actually read."""
        return files_sha256(self.files)

    def read(self) -> pd.DataFrame:
        """The whole cohort as one wide frame."""
        if self.kind == "wide_csv":
            return pd.read_csv(self.files[0])
        if self.kind == "long":
            results, index = (pd.read_parquet(f) for f in self.files)
            return as_of_wide(results, index, window_days=self.window_days)
        if len(self.files) == 1:
            return pd.read_parquet(self.files[0])
        return pd.concat([pd.read_parquet(f) for f in self.files], ignore_index=True)

    def chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The cohort as wide frames of at most `chunk_rows` rows, in the cohort's order."""
        if self.kind == "wide_parquet":
            for file in self.files:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas()
        elif self.kind == "wide_csv":
            yield from pd.read_csv(self.files[0], chunksize=chunk_rows)
        else:
            # The as-of join needs every result of a patient at once: loaded whole (documented).
            frame = self.read()
            for start in range(0, len(frame), chunk_rows):
                yield frame.iloc[start : start + chunk_rows].reset_index(drop=True)


def open_cohort(path: Path | str, window_days: int = 90, source: Source = "auto") -> CohortSource:
    """Find a cohort's layout (see the module docstring); CohortError when there is none."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".parquet":
            return CohortSource(path, "wide_parquet", (path,), window_days)
        if path.suffix in CSV_SUFFIXES:
            return CohortSource(path, "wide_csv", (path,), window_days)
        raise CohortError(f"{path}: expected a .csv or .parquet file")
    wide = sorted(path.glob("*_wide.parquet"))
    results, index = sorted(path.glob("*_results.parquet")), sorted(path.glob("*_index.parquet"))
    if wide and source != "long":
        return CohortSource(path, "wide_parquet", (wide[0],), window_days)
    if results and index and source != "wide":
        return CohortSource(path, "long", (results[0], index[0]), window_days)
    parts = sorted(p for p in path.glob("*.parquet") if p.is_file())
    if parts and source != "long":
        return CohortSource(path, "wide_parquet", tuple(parts), window_days)
    raise CohortError(f"{path}: no *_wide.parquet, *_results + *_index.parquet or Parquet parts")


def read_table(path: Path | str) -> pd.DataFrame:
    """A wide table read whole, whatever its layout (CSV, Parquet, a folder)."""
    return open_cohort(path).read()
