"""The local engine: the cohort streamed in chunks through every pinned model, each model's score
file written chunk by chunk in a background thread, memory flat whatever the cohort's size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.cohorts.reader import CohortSource
from training.evaluation import drift
from training.replay.chunks import PARQUET_OPTIONS, cohort_chunks, score_chunk, scores_schema
from training.replay.options import ProgressCallback, ReplayModel, ReplayOptions, replay_seed
from training.replay.summaries import Accumulator, PassSummary, lab_labels


def scores_path(out: Path, models: Sequence[ReplayModel]) -> list[Path]:
    """`scores.parquet` for one model; `scores_{name}_v{version}.parquet` for each of two."""
    if len(models) == 1:
        return [out / "scores.parquet"]
    return [out / f"scores_{m.pinned.stem}.parquet" for m in models]


class ScoreWriter:
    """One model's score file, written in a background thread (pyarrow releases the GIL), one
    table at a time and in order, so that writing overlaps the scoring of the next chunk: one
    row group per chunk. Both engines write through it, so that the same chunks give the same
    bytes."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.path, self.pool = path, pool
        self.writer: pq.ParquetWriter | None = None
        self.pending: Future[None] | None = None
        self.waited = 0.0

    def write(self, table: pa.Table) -> None:
        self.wait()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, **PARQUET_OPTIONS)
        self.pending = self.pool.submit(self.writer.write_table, table)

    def wait(self) -> None:
        started = time.perf_counter()
        if self.pending is not None:
            self.pending.result()  # re-raises a failed write here
            self.pending = None
        self.waited += time.perf_counter() - started

    def close(self, schema: pa.Schema) -> None:
        self.wait()
        if self.writer is not None:
            self.writer.close()
        else:  # an empty cohort still gets a (schema-only) score file
            pq.write_table(schema.empty_table(), self.path, **PARQUET_OPTIONS)


def replay_local(
    models: Sequence[ReplayModel],
    cohort: CohortSource,
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
) -> list[PassSummary]:
    """Stream the cohort in chunks through every model, writing each model's scores file."""
    options.out.mkdir(parents=True, exist_ok=True)
    seed = replay_seed(models, options)
    accumulators = [Accumulator(m, cohort.n_rows(), seed) for m in models]
    width = max(len(m.predictor.feature_names) for m in models)
    scratch = np.empty(width * options.chunk_rows, dtype=np.float64)  # pages touched on use
    read_seconds, done = 0.0, 0
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as background:
        writers = [ScoreWriter(path, background) for path in scores_path(options.out, models)]
        chunks = cohort_chunks(cohort, options.chunk_rows)
        try:
            started = time.perf_counter()
            frame = next(chunks, None)
            while frame is not None:
                read_seconds += time.perf_counter() - started
                scored = [
                    score_chunk(m.predictor, frame, explain=options.explain,
                                version=m.pinned.version, scratch=scratch)
                    for m in models
                ]  # fmt: skip
                # Read the next chunk and write this one while the summaries are computed (all
                # single-threaded work), not while LightGBM uses every core.
                upcoming = reader.submit(next, chunks, None)
                period = drift.period_labels(frame[models[0].predictor.spec.split.date_column])
                lab = lab_labels(frame)
                for one, accumulator, writer in zip(scored, accumulators, writers, strict=True):
                    writer.write(one.table)
                    accumulator.add(frame, one, period, lab)
                done += len(frame)
                if progress is not None:
                    progress(done)
                started = time.perf_counter()
                frame = upcoming.result()
        finally:
            for model, writer in zip(models, writers, strict=True):
                writer.close(scores_schema(model.predictor, explain=options.explain, keys={}))
    summaries = []
    for accumulator, writer in zip(accumulators, writers, strict=True):
        summary = accumulator.summary([writer.path])
        summary.timings |= {"read": read_seconds, "write": writer.waited}
        summaries.append(summary)
    return summaries
