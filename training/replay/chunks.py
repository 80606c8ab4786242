"""A cohort in chunks, cut the same way by both engines, and one chunk through one model, laid out
as rows of the score file: keys, index date, model, version, status, probability, band, warning
codes, reasons (and with explanations the base and one column of contributions per feature). The
scoring itself is `models.scoring.score_frame`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.predictor import TriagePredictor
from models.scoring import WARNING_CODES, score_frame, timed
from models.triage import BANDS
from training.cohorts.reader import CohortSource
from training.replay.options import FloatArray

KEY_COLUMNS = ("patient_id", "referral_id")
SCORED, INELIGIBLE = "scored", "ineligible"
CONTRIBUTION_PREFIX = "contrib__"
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}
BAND_TYPE = pd.CategoricalDtype(list(BANDS))


# --- the cohort in chunks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One chunk of a wide Parquet cohort: batch `batch` (of `chunk_rows` rows) of row group
    `row_group` of the file at `path`."""

    path: str
    row_group: int
    batch: int


def parquet_pieces(files: Sequence[Path], chunk_rows: int) -> list[Piece]:
    """The chunks of wide Parquet files, in order: per file and row group, batches of at most
    `chunk_rows` rows (a chunk never spans row groups, so each can be read on its own)."""
    pieces = []
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        for group in range(metadata.num_row_groups):
            batches = ceil(metadata.row_group(group).num_rows / chunk_rows)
            pieces += [Piece(str(Path(file).resolve()), group, b) for b in range(batches)]
    return pieces


def _row_group_batches(path: str | Path, group: int, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of one row group: how both engines cut a wide Parquet file."""
    return pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, row_groups=[group])


def read_piece(piece: Piece, cohort: CohortSource, chunk_rows: int) -> pd.DataFrame:
    """One chunk of a wide Parquet cohort, prepared in the cohort's terms (`prepare`)."""
    batches = _row_group_batches(piece.path, piece.row_group, chunk_rows)
    batch = next(islice(batches, piece.batch, None))
    return cohort.prepare(batch.to_pandas())


def cohort_chunks(cohort: CohortSource, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The cohort in chunks of at most `chunk_rows` rows, in its order, as both engines cut it:
    wide Parquet as `parquet_pieces` (so that the Spark engine's executors can each read their
    own chunk and get the same rows), anything else as `CohortSource.chunks` does."""
    if cohort.kind != "wide_parquet":
        yield from cohort.chunks(chunk_rows)
        return
    for file in cohort.files:
        for group in range(pq.ParquetFile(file).metadata.num_row_groups):
            for batch in _row_group_batches(file, group, chunk_rows):
                yield cohort.prepare(batch.to_pandas())


# --- one chunk through one model ------------------------------------------------------------------


@dataclass
class ScoredChunk:
    """One chunk through one model: the score rows and what the summaries need."""

    table: pa.Table  # rows of the score file, in the chunk's order
    values: pd.DataFrame  # canonical values (+ pathway) of every row
    features: pd.DataFrame  # model inputs of the eligible rows
    eligible: npt.NDArray[np.bool_]
    probability: FloatArray  # NaN where ineligible
    band: pd.Categorical[Any]  # of BANDS; missing where ineligible
    exclusions: Counter[str]  # ineligible rows by error code
    warnings: Counter[str]  # rows by warning code
    timings: dict[str, float] = field(default_factory=dict)


def key_type(dtype: Any) -> pa.DataType:
    """Arrow type of a key column: integers stay int64, anything else becomes text."""
    return pa.int64() if pd.api.types.is_integer_dtype(dtype) else pa.string()


def scores_schema(
    predictor: TriagePredictor, *, explain: bool, keys: Mapping[str, pa.DataType]
) -> pa.Schema:
    """The score file's columns: keys, index_date, model, version, status, probability, band,
    warnings (codes), reasons (`code:field`), and with explanations `base` + one column per
    feature of contributions in calibrated log-odds (`contrib__{feature}`)."""
    fields = [pa.field(name, kind) for name, kind in keys.items()]
    fields += [
        pa.field("index_date", pa.date32()),
        pa.field("model", pa.string()),
        pa.field("version", pa.string()),
        pa.field("status", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("band", pa.string()),
        pa.field("warnings", pa.list_(pa.string())),
        pa.field("reasons", pa.list_(pa.string())),
    ]
    if explain:
        fields.append(pa.field("base", pa.float64()))
        fields += [
            pa.field(f"{CONTRIBUTION_PREFIX}{name}", pa.float64())
            for name in predictor.feature_names
        ]
    return pa.schema(fields)


def _code_lists(
    rows: npt.NDArray[np.int64], codes: npt.NDArray[np.int64], n: int
) -> tuple[pa.Array, Counter[str]]:
    """One sorted list of distinct warning codes per row from (row, position in WARNING_CODES)
    pairs, and rows per code: a small boolean matrix instead of sorting strings."""
    present = np.zeros((n, len(WARNING_CODES)), dtype=bool)
    known = codes >= 0  # every warning code is in the vocabulary; never index with -1
    present[rows[known], codes[known]] = True
    code_of = np.nonzero(present)[1]  # row-major: by row, then code
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(present.sum(axis=1))
    dictionary = pa.array(list(WARNING_CODES), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(code_of.astype(np.int32)), dictionary)
    per_code = present.sum(axis=0)
    counts = Counter({WARNING_CODES[i]: int(c) for i, c in enumerate(per_code) if c})
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string())), counts


def _label_lists(
    rows: npt.NDArray[np.int64], labels: npt.NDArray[np.object_], n: int
) -> tuple[pa.Array, Counter[str]]:
    """One sorted list of distinct labels per row from (row, label) pairs, and rows per label."""
    if len(rows) == 0:
        offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array([], pa.string())), Counter()
    codes, vocabulary = pd.factorize(labels, sort=True)
    width = len(vocabulary)
    key = np.unique(rows.astype(np.int64) * width + codes)
    row_of, code_of = np.divmod(key, width)
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.bincount(row_of, minlength=n))
    dictionary = pa.array(np.asarray(vocabulary, dtype=object), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(code_of.astype(np.int32)), dictionary)
    per_label = np.bincount(code_of, minlength=width)
    counts = Counter({str(vocabulary[i]): int(c) for i, c in enumerate(per_label) if c})
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string())), counts


def score_chunk(
    predictor: TriagePredictor,
    frame: pd.DataFrame,
    *,
    explain: bool = False,
    keys: Mapping[str, pa.DataType] | None = None,
    version: str = "",
    scratch: FloatArray | None = None,
) -> ScoredChunk:
    """Score one wide chunk with `models.scoring.score_frame` (ineligible rows are kept) and lay
    the result out as rows of the score file. `scratch` is passed on (see `score_frame`)."""
    spec, n = predictor.spec, len(frame)
    timings: dict[str, float] = {}
    scored = score_frame(predictor, frame, explain=explain, scratch=scratch, timings=timings)
    eligible, rows, codes = scored.eligible, scored.rows, scored.band_codes
    band = pd.Categorical.from_codes(codes, dtype=BAND_TYPE)
    # The columns themselves (no copy), not views of `x`, which the next chunk overwrites.
    features = pd.DataFrame(scored.inputs, index=scored.values.index[rows], copy=False)
    with timed(timings, "assemble"):
        warnings, warning_counts = _code_lists(scored.warning_rows, scored.warning_codes, n)
        reasons, _ = _label_lists(scored.reason_rows, scored.reason_labels, n)
        pairs = scored.reason_codes()  # ineligible rows per error code, a row once per code
        exclusions = Counter({str(k): int(v) for k, v in pairs["code"].value_counts().items()})
        if keys is None:
            keys = {k: key_type(frame[k].dtype) for k in KEY_COLUMNS if k in frame}
        columns: dict[str, pa.Array] = {k: _key_array(frame[k], t) for k, t in keys.items()}
        columns |= {
            "index_date": _date_array(frame[spec.split.date_column]),
            "model": _text_array(np.zeros(n, dtype=np.int8), [spec.name]),
            "version": _text_array(np.zeros(n, dtype=np.int8), [version]),
            "status": _text_array(eligible.astype(np.int8), [INELIGIBLE, SCORED]),
            "probability": pa.array(scored.probability, pa.float64(), mask=~eligible),
            "band": _text_array(codes, BANDS),
            "warnings": warnings,
            "reasons": reasons,
        }
        if scored.base is not None and scored.contributions is not None:
            columns |= _explanation_columns(
                predictor, scored.base, scored.contributions, rows, eligible
            )
    schema = scores_schema(predictor, explain=explain, keys=keys)
    return ScoredChunk(
        table=pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema),
        values=scored.values,
        features=features,
        eligible=eligible,
        probability=scored.probability,
        band=band,
        exclusions=exclusions,
        warnings=warning_counts,
        timings=timings,
    )


def _text_array(codes: npt.NDArray[np.int8], names: Sequence[str]) -> pa.Array:
    """A plain string column from codes into `names` (-1: null), built by Arrow in C++."""
    indices = pa.array(codes, pa.int8(), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(names), pa.string())).cast(
        pa.string()
    )


def _key_array(column: pd.Series, kind: pa.DataType) -> pa.Array:
    if pa.types.is_integer(kind):
        return pa.array(column.to_numpy(), pa.int64())
    return pa.array(column.astype("string"), pa.string())


def _date_array(column: pd.Series) -> pa.Array:
    """Dates (date32) from a date or timestamp column; time of day is dropped."""
    stamps = pd.to_datetime(column, errors="coerce")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return pa.array(stamps.to_numpy(dtype="datetime64[ns]")).cast(pa.date32())


def _explanation_columns(
    predictor: TriagePredictor,
    base: FloatArray,
    contributions: FloatArray,
    rows: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> dict[str, pa.Array]:
    """`base` and `contrib__{feature}` (calibrated log-odds), null where not scored; `base` and
    `contributions` cover the eligible rows (at `rows`)."""
    n = len(eligible)
    out: dict[str, pa.Array] = {}
    full = np.full(n, np.nan)
    full[rows] = base
    out["base"] = pa.array(full, pa.float64(), mask=~eligible)
    for j, name in enumerate(predictor.feature_names):
        full = np.full(n, np.nan)
        full[rows] = contributions[:, j]
        out[f"{CONTRIBUTION_PREFIX}{name}"] = pa.array(full, pa.float64(), mask=~eligible)
    return out
