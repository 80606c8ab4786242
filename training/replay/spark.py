"""The Spark engine of `triage replay`: the local engine's chunks, scored on the executors.

Its outputs are the local engine's files, byte for byte, by construction: a chunk here is a
chunk of the local engine (the same rows, read by the same pyarrow calls and prepared by the same
`CohortSource.prepare`), each executor runs the local engine's own per-chunk steps
(`score_chunk`, then `Accumulator.add` on the chunk), and the driver takes the results in cohort
order, writes the score file with the local engine's `ScoreWriter` and merges the per-chunk
summaries as the local engine's `Accumulator` would have kept them.

`pyspark` (the optional extra `spark`) is imported inside the functions, so this module, and the
package, import without it.

- **Session.** In local mode (`local[N]`, the default outside spark-submit) the Python workers
  run this interpreter (`PYSPARK_PYTHON`/`PYSPARK_DRIVER_PYTHON`) and the driver binds to
  127.0.0.1; under spark-submit the cluster's master and Python are used as configured. A session
  this module starts is stopped at the end (in local mode with its JVM); one that was already
  running is left alone.
- **Model.** Each pinned predictor folder is shipped with `sparkContext.addFile(folder,
  recursive=True)` and loaded once per Python worker from `SparkFiles.get` (one thread).
- **Chunks.** A wide Parquet cohort is planned as pieces (`chunks.parquet_pieces`: per file and
  row group, batches of `chunk_rows` rows, the local engine's chunks), and each executor reads
  its own piece from the file. Any other cohort (CSV, long tables as-of joined by the driver) is
  read by the driver in chunks, each pickled into the scratch folder for an executor to load.
- **Order and memory.** One partition per piece. One job scores every piece in parallel and
  keeps the results on the executors (memory, then disk); the driver then fetches them one
  partition at a time in cohort order (`toLocalIterator`), so it holds one chunk's score table
  at a time, as the local engine does; the slim evaluation frame of the scored rows is what must
  fit in its memory (as in the local engine).
- **SHAP sample.** The local engine draws it per chunk from one seeded generator, in cohort
  order; the driver makes the same draws once every chunk's eligible rows are known, and a small
  second job reads the chosen rows' canonical values.
- **Paths.** The executors read the cohort's Parquet files, and the chunks the driver pickles
  into a scratch folder inside the output folder (removed at the end), by their plain paths: on a
  cluster these must sit on storage mounted at the same path on the driver and the executors
  (NFS, a FUSE-mounted lake such as /dbfs). Only the driver writes the outputs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.predictor import TriagePredictor
from training.cohorts.reader import CohortSource
from training.evaluation import drift
from training.replay.chunks import (
    Piece,
    ScoredChunk,
    cohort_chunks,
    parquet_pieces,
    read_piece,
    score_chunk,
    scores_schema,
)
from training.replay.local import ScoreWriter, scores_path
from training.replay.options import (
    PinnedModel,
    ProgressCallback,
    ReplayModel,
    ReplayOptions,
    replay_seed,
)
from training.replay.summaries import ROW_ID, Accumulator, PassSummary, lab_labels

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import SparkSession

MERGE_COUNTS_EVERY = 16  # as the local engine: keep the running drift counts small


def is_local(master: str | None) -> bool:
    """Local mode: an explicit `local...` master, or none outside spark-submit."""
    if master is None:
        return "PYSPARK_GATEWAY_PORT" not in os.environ  # set when spark-submit runs us
    return master.startswith("local")


@contextmanager
def spark_session(
    master: str | None = None, app_name: str = "triage-replay"
) -> Iterator[SparkSession]:
    """A Spark session for the replay (see the module docstring); stopped on exit if started."""
    from pyspark.sql import SparkSession

    local = is_local(master)
    if local:
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    running = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName(app_name)
    if local:
        builder = (
            builder.master(master or "local[*]")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        warnings.filterwarnings("ignore", message="The copy keyword is deprecated")
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        try:
            yield spark
        finally:
            if running is None:
                spark.stop()
                if local:
                    _stop_jvm()


def _stop_jvm() -> None:
    """Shut the local JVM down with the session that started it (a later session launches a new
    one), so that nothing of it outlives the replay."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is not None and process.stdin is not None:
        process.stdin.close()  # the JVM exits when its parent's pipe closes
        process.wait(timeout=60)
    SparkContext._gateway = None
    SparkContext._jvm = None


# --- the chunks -----------------------------------------------------------------------------------


def plan_pieces(cohort: CohortSource, chunk_rows: int, scratch: Path) -> list[Piece]:
    """The cohort's chunks in the local engine's order (`chunks.cohort_chunks`): pieces of wide
    Parquet files, or the chunks the driver read, each pickled into `scratch` (row group -1)."""
    if cohort.kind == "wide_parquet":
        return parquet_pieces(cohort.files, chunk_rows)
    pieces = []
    for number, frame in enumerate(cohort_chunks(cohort, chunk_rows)):
        path = scratch / f"chunk-{number:06d}.pickle"
        frame.to_pickle(path)
        pieces.append(Piece(str(path.resolve()), row_group=-1, batch=0))
    return pieces


def _read(piece: Piece, cohort: CohortSource, chunk_rows: int) -> pd.DataFrame:
    """One chunk: a piece of the cohort's Parquet files, or one the driver pickled."""
    if piece.row_group < 0:
        frame: pd.DataFrame = pd.read_pickle(piece.path)  # written by this replay's driver
        return frame
    return read_piece(piece, cohort, chunk_rows)


# --- on the executors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What an executor needs to score a piece (the predictors travel as shipped folders)."""

    cohort: CohortSource
    pinned: tuple[PinnedModel, ...]
    folders: tuple[str, ...]  # names given to `SparkContext.addFile`
    chunk_rows: int
    explain: bool


@dataclass
class ChunkPart:
    """One chunk through one model: its score rows and what `Accumulator.add` kept of it (the
    evaluation rows numbered from 0 within the chunk)."""

    table: pa.Table
    tally: pd.DataFrame
    exclusions: Counter[str]
    warnings: Counter[str]
    counts: pd.DataFrame
    evaluation: pa.Table
    eligible: npt.NDArray[np.bool_]
    timings: dict[str, float] = field(default_factory=dict)


_PREDICTORS: dict[str, TriagePredictor] = {}  # per Python worker: loaded once, reused by tasks


def _predictor(folder: str) -> TriagePredictor:
    from pyspark import SparkFiles

    if folder not in _PREDICTORS:
        _PREDICTORS[folder] = TriagePredictor.load(SparkFiles.get(folder), num_threads=1)
    return _PREDICTORS[folder]


def score_piece(piece: Piece, job: Job) -> tuple[int, list[ChunkPart]]:
    """The local engine's per-chunk steps on one piece: its rows and one part per model."""
    frame = _read(piece, job.cohort, job.chunk_rows)
    models = [ReplayModel(p, _predictor(f)) for p, f in zip(job.pinned, job.folders, strict=True)]
    period = drift.period_labels(frame[models[0].predictor.spec.split.date_column])
    lab = lab_labels(frame)
    parts = []
    for model in models:
        scored = score_chunk(
            model.predictor, frame, explain=job.explain, version=model.pinned.version
        )
        kept = Accumulator(model, None, 0)  # this chunk's summaries (its sample is not used)
        kept.add(frame, scored, period, lab)
        parts.append(
            ChunkPart(
                table=scored.table,
                tally=kept.tallies[0],
                exclusions=kept.exclusions,
                warnings=kept.warnings,
                counts=kept.counts[0],
                evaluation=kept.evaluation[0],
                eligible=scored.eligible,
                timings=kept.timings,
            )
        )
    return len(frame), parts


def sample_values(
    piece: Piece, job: Job, chosen: Sequence[npt.NDArray[np.int64]]
) -> list[pd.DataFrame]:
    """Canonical values of the chosen rows of one piece, per model (for the SHAP sample)."""
    frame = _read(piece, job.cohort, job.chunk_rows)
    values = []
    for folder, rows in zip(job.folders, chosen, strict=True):
        if len(rows) == 0:
            values.append(pd.DataFrame())
            continue
        scored = score_chunk(_predictor(folder), frame.iloc[rows])
        values.append(scored.values.reset_index(drop=True))
    return values


# --- on the driver ------------------------------------------------------------------------------


def _ship(spark: SparkSession, model: ReplayModel, scratch: Path) -> str:
    """Copy the predictor folder under a name unique to this replay (a running session keeps
    every file it was given) and add it to the Spark files."""
    name = f"predictor-{model.pinned.stem}-{scratch.name}"
    target = scratch / name
    shutil.copytree(model.pinned.folder, target)
    spark.sparkContext.addFile(str(target), recursive=True)
    return name


def _merge(accumulator: Accumulator, part: ChunkPart, rows: int) -> None:
    """Keep one chunk's part as `Accumulator.add` keeps a chunk: its evaluation rows renumbered
    from the chunk's first row in the cohort, and the sample's rows drawn (their values are
    read later: the positions in the chunk stand in for them)."""
    accumulator.tallies.append(part.tally)
    accumulator.exclusions.update(part.exclusions)
    accumulator.warnings.update(part.warnings)
    if len(accumulator.counts) >= MERGE_COUNTS_EVERY:
        accumulator.counts = [drift.combine_counts(accumulator.counts)]
    accumulator.counts.append(part.counts)
    number = part.evaluation.schema.get_field_index(ROW_ID)
    renumbered = pc.add(part.evaluation.column(number), pa.scalar(accumulator.rows, pa.int64()))
    evaluation = part.evaluation.set_column(number, ROW_ID, renumbered)
    accumulator.evaluation.append(evaluation)
    positions = pd.DataFrame({ROW_ID: np.arange(rows, dtype=np.int64)})
    stand_in = cast(ScoredChunk, SimpleNamespace(eligible=part.eligible, values=positions))
    accumulator.samples.append(accumulator._sample(stand_in, rows))
    accumulator.rows += rows
    for stage, seconds in part.timings.items():
        accumulator.timings[stage] = accumulator.timings.get(stage, 0.0) + seconds


def _collect(
    scored: RDD[tuple[int, list[ChunkPart]]],
    models: Sequence[ReplayModel],
    accumulators: Sequence[Accumulator],
    options: ReplayOptions,
    progress: ProgressCallback | None,
) -> list[float]:
    """Take the pieces' results in cohort order: write the score files, merge the summaries.
    Returns the seconds each writer waited."""
    paths = scores_path(options.out, models)
    with ThreadPoolExecutor(1) as background:
        writers = [ScoreWriter(path, background) for path in paths]
        try:
            for rows, parts in scored.toLocalIterator():
                for part, accumulator, writer in zip(parts, accumulators, writers, strict=True):
                    writer.write(part.table)
                    _merge(accumulator, part, rows)
                if progress is not None:
                    progress(accumulators[0].rows)
        finally:
            for model, writer in zip(models, writers, strict=True):
                writer.close(scores_schema(model.predictor, explain=options.explain, keys={}))
    return [writer.waited for writer in writers]


def _read_samples(
    spark: SparkSession, pieces: Sequence[Piece], job: Job, accumulators: Sequence[Accumulator]
) -> None:
    """Replace each accumulator's drawn positions by the canonical values of those rows."""
    chosen = [
        (i, piece, [a.samples[i][ROW_ID].to_numpy(np.int64) for a in accumulators])
        for i, piece in enumerate(pieces)
        if any(len(a.samples[i]) for a in accumulators)
    ]
    if not chosen:
        return
    read = partial(sample_values, job=job)
    found = (
        spark.sparkContext.parallelize(chosen, len(chosen))
        .map(lambda item: (item[0], read(item[1], chosen=item[2])))
        .collect()
    )
    for i, values in found:
        for accumulator, frame in zip(accumulators, values, strict=True):
            accumulator.samples[i] = frame


def replay_spark(
    models: Sequence[ReplayModel],
    cohort: CohortSource,
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
) -> list[PassSummary]:
    """Score the cohort's chunks on Spark; the same summaries and score files as `replay_local`."""
    from pyspark import StorageLevel

    options.out.mkdir(parents=True, exist_ok=True)
    seed = replay_seed(models, options)
    accumulators = [Accumulator(m, cohort.n_rows(), seed) for m in models]
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix=".triage-spark-", dir=options.out) as scratch_name,
        spark_session(options.spark_master) as spark,
    ):
        scratch = Path(scratch_name)
        pieces = plan_pieces(cohort, options.chunk_rows, scratch)
        job = Job(
            cohort=cohort,
            pinned=tuple(m.pinned for m in models),
            folders=tuple(_ship(spark, m, scratch) for m in models),
            chunk_rows=options.chunk_rows,
            explain=options.explain,
        )
        scored = (
            spark.sparkContext.parallelize(pieces, max(len(pieces), 1))
            .map(partial(score_piece, job=job))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        scored.count()  # every piece scored in parallel before the driver takes them in order
        waited = _collect(scored, models, accumulators, options, progress)
        scored.unpersist()
        _read_samples(spark, pieces, job, accumulators)
    summaries = []
    for accumulator, path, seconds in zip(
        accumulators, scores_path(options.out, models), waited, strict=True
    ):
        summary = accumulator.summary([path])
        summary.timings |= {"spark": time.perf_counter() - started, "write": seconds}
        summaries.append(summary)
    return summaries
