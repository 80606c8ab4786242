"""One Arrow schema for an imported cohort's lab results, written in row groups as they come."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS_SCHEMA = pa.schema(
    [
        ("patient_id", pa.int64()),
        ("sample_time", pa.timestamp("ns")),  # naive: local wall-clock time (manifest's zone)
        ("code", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("lab", pa.string()),
    ]
)


class ResultsWriter:
    """`cohort_results.parquet`, appended batch by batch (constant memory), rows in the order
    given: the as-of rule lets a later row win a tie in sample time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._writer = pq.ParquetWriter(path, RESULTS_SCHEMA, compression="zstd")

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if isinstance(frame["sample_time"].dtype, pd.DatetimeTZDtype):
            raise ValueError("sample_time must be naive local time; convert aware times first")
        columns = {
            "patient_id": frame["patient_id"].to_numpy("int64"),
            "sample_time": pd.to_datetime(frame["sample_time"]).to_numpy("datetime64[ns]"),
            **{c: _strings(frame[c]) for c in ("code", "unit", "lab")},
            "value": frame["value"].to_numpy("float64"),
        }
        table = pa.Table.from_pydict(
            {name: columns[name] for name in RESULTS_SCHEMA.names}, schema=RESULTS_SCHEMA
        )
        self._writer.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _strings(column: pd.Series) -> pa.Array:
    """A str/category/object column as Arrow strings, missing values as nulls."""
    values = column.astype("object").where(column.notna(), None)
    return pa.array(values.to_numpy(object), type=pa.string())
