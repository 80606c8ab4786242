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

Given a spec, every frame it yields is already in the spec's terms: the `column_map` applied
(`models.columns.map_columns`: own column names, coded sex or outcome) and the index dates read
as calendar days in the spec's time zone (`training.cohorts.dates`). Given a period, only the
rows whose index day falls in it are yielded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.parquet as pq

from models.columns import ColumnError, map_columns
from models.spec import DateRange, ModelSpec
from training.cohorts.asof import DEFAULT_TIME_ZONE, as_of_wide
from training.cohorts.dates import DateError, calendar_days
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
    spec: ModelSpec | None = None  # map columns and read dates in its terms
    period: DateRange | None = None  # only rows whose index day falls in it

    def columns(self) -> list[str]:
        """Column names before the as-of join (for a long cohort: the index events' columns),
        under their mapped names when a spec maps them."""
        if self.kind == "wide_parquet":
            names = list(pq.read_schema(self.files[0]).names)
        elif self.kind == "wide_csv":
            names = list(pd.read_csv(self.files[0], nrows=0).columns)
        else:
            names = list(pq.read_schema(self.files[1]).names)
        if self.spec is None:
            return names
        return [self.spec.column_target(self.spec.column_map[n]) if n in self.spec.column_map
                else n for n in names]  # fmt: skip

    def in_terms_of(self, spec: ModelSpec, period: DateRange | None = None) -> CohortSource:
        """The same files, read in the terms of `spec` (and restricted to `period`)."""
        return replace(self, spec=spec, period=period)

    @property
    def passthrough(self) -> bool:
        """True when the files can be read as they are (no column map, no period)."""
        return self.period is None and (self.spec is None or not self.spec.column_map)

    @property
    def time_zone(self) -> str:
        return self.spec.split.time_zone if self.spec is not None else DEFAULT_TIME_ZONE

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
        return self.prepare(self._read_raw())

    def _read_raw(self) -> pd.DataFrame:
        if self.kind == "wide_csv":
            return pd.read_csv(self.files[0], low_memory=False)
        if self.kind == "long":
            results, index = (pd.read_parquet(f) for f in self.files)
            index = self._mapped(index, partial=True) if self.spec is not None else index
            return as_of_wide(
                results, index, window_days=self.window_days, time_zone=self.time_zone
            )
        if len(self.files) == 1:
            return pd.read_parquet(self.files[0])
        return pd.concat([pd.read_parquet(f) for f in self.files], ignore_index=True)

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A raw frame in the spec's terms: columns mapped, index days read, period kept."""
        if self.spec is None:
            return frame
        frame = self._mapped(frame, partial=self.kind == "long")
        column = self.spec.split.date_column
        if column not in frame:
            return frame
        days = self.index_days(frame[column])
        frame = frame.assign(**{column: days})
        if self.period is not None:
            start, end = (pd.Timestamp(d) for d in (self.period.start, self.period.end))
            frame = frame[days.between(start, end).to_numpy()].reset_index(drop=True)
        return frame

    def index_days(self, column: pd.Series) -> pd.Series:
        """Index dates as calendar days in the spec's time zone."""
        try:
            return calendar_days(column, self.time_zone, str(column.name))[0]
        except DateError as error:
            raise CohortError(f"{self.path.name}: {error}") from None

    def _mapped(self, frame: pd.DataFrame, *, partial: bool) -> pd.DataFrame:
        """`map_columns` (for a long cohort's tables, only the mapped columns each one has)."""
        assert self.spec is not None
        spec = self.spec
        if partial:
            present = {c: m for c, m in spec.column_map.items() if c in frame}
            spec = spec.model_copy(update={"column_map": present})
        try:
            return map_columns(frame, spec, strict=not partial)[0]
        except ColumnError as error:
            raise CohortError(f"{self.path.name}: {error}") from None

    def chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The cohort as wide frames of at most `chunk_rows` rows, in the cohort's order."""
        if self.kind == "wide_parquet":
            for file in self.files:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                    yield self.prepare(batch.to_pandas())
        elif self.kind == "wide_csv":
            for chunk in pd.read_csv(self.files[0], chunksize=chunk_rows, low_memory=False):
                yield self.prepare(chunk)
        else:
            # The as-of join needs every result of a patient at once: loaded whole (documented).
            frame = self.read()
            for start in range(0, len(frame), chunk_rows):
                yield frame.iloc[start : start + chunk_rows].reset_index(drop=True)


def open_cohort(
    path: Path | str,
    window_days: int = 90,
    source: Source = "auto",
    spec: ModelSpec | None = None,
    period: DateRange | None = None,
) -> CohortSource:
    """Find a cohort's layout (see the module docstring); CohortError when there is none."""
    found = _find(Path(path), window_days, source)
    return found.in_terms_of(spec, period) if spec is not None else found


def _find(path: Path, window_days: int, source: Source) -> CohortSource:
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


def made_by_simulator(path: Path | str) -> bool:
    """A cohort written by the project's simulator: its folder (or the folder of its file) holds
    the simulator's manifest.json (a JSON object with the seed and parameters)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "seed" in manifest and "parameters" in manifest


def read_table(path: Path | str) -> pd.DataFrame:
    """A wide table read whole, whatever its layout (CSV, Parquet, a folder)."""
    return open_cohort(path).read()
