"""The Spark engine of `triage replay`: the same `score_chunk` on every partition, via mapInPandas.

`pyspark` (the optional extra `spark`) is imported inside the functions, so this module, and the
package, import without it.

- **Session.** In local mode (`local[N]`, the default outside spark-submit) the Python workers
  run this interpreter (`PYSPARK_PYTHON`/`PYSPARK_DRIVER_PYTHON`) and the driver binds to
  127.0.0.1; under spark-submit the cluster's master and Python are used as configured. The
  session time zone is UTC; Parquet nanosecond timestamps (as pandas writes them) are read as
  epoch nanoseconds, which `score_chunk` turns back into dates. A session this module starts is
  stopped at the end (in local mode with its JVM); one that was already running is left alone.
- **Model.** Each pinned predictor folder is shipped with `sparkContext.addFile(folder,
  recursive=True)` and loaded once per partition from `SparkFiles.get` (one thread per task).
- **Pass 1, per model:** `mapInPandas` runs `score_chunk` and returns the score rows plus the
  slim evaluation columns; the result is persisted, the score rows are written sorted by key as
  a Parquet folder, tallies, exclusions and warnings are Spark aggregations, and the scored rows'
  slim evaluation frame (ids, date, outcome, probability, band, subgroups) is collected to the
  driver for the evaluation (as in the local engine, that frame is what must fit in memory).
- **Pass 2, per model:** `mapInPandas` counts the drift bins per partition; Spark sums them.
- **Input.** Wide Parquet is read by Spark directly. A long cohort (as-of join) or a CSV is first
  turned into a wide Parquet file by the driver (`training.cohorts.reader`), then read by Spark.
- **Paths.** Cohort and output are `file://` paths: on a cluster they must sit on storage mounted
  at the same path on the driver and the executors (NFS, a FUSE-mounted lake such as /dbfs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.triage import BANDS
from training.cohorts.reader import CohortSource
from training.evaluation import drift
from training.evaluation.model import EXPLAINED_SAMPLE_ROWS
from training.replay.chunks import (
    INELIGIBLE,
    KEY_COLUMNS,
    SCORED,
    key_type,
    score_chunk,
    scores_schema,
)
from training.replay.local import scores_path
from training.replay.options import ProgressCallback, ReplayModel, ReplayOptions, replay_seed
from training.replay.summaries import (
    ROW_ID,
    PassSummary,
    evaluation_columns,
    lab_labels,
    subgroup_columns,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

EXTRA_PREFIX = "_e_"  # evaluation columns carried beside the score columns in pass 1
COUNT_SCHEMA = "period string, lab string, feature string, bin long, count long"


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
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
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


# --- schemas ------------------------------------------------------------------------------------


def spark_type(kind: pa.DataType) -> DataType:
    """The Spark type of an Arrow type of the score file."""
    from pyspark.sql import types as st

    if pa.types.is_list(kind):
        return st.ArrayType(spark_type(kind.value_type))
    simple: dict[pa.DataType, DataType] = {
        pa.int64(): st.LongType(),
        pa.float64(): st.DoubleType(),
        pa.string(): st.StringType(),
        pa.date32(): st.DateType(),
    }
    return simple[kind]


def extra_columns(columns: Sequence[str], outcome: str) -> dict[str, str]:
    """The evaluation columns carried in pass 1 (name -> Spark type), from the cohort's columns."""
    extras = {ROW_ID: "long", "period": "string", outcome: "double", "sex": "string",
              "age": "double"}  # fmt: skip
    if "true_risk" in columns:
        extras["true_risk"] = "double"
    return extras


def result_schema(scores: pa.Schema, extras: Mapping[str, str], text: Sequence[str]) -> StructType:
    """Pass 1's output: the score columns, then `_e_`-prefixed evaluation columns."""
    from pyspark.sql import types as st

    fields = [st.StructField(f.name, spark_type(f.type), True) for f in scores]
    names = {"long": st.LongType(), "double": st.DoubleType(), "string": st.StringType()}
    fields += [
        st.StructField(f"{EXTRA_PREFIX}{name}", names[kind], True) for name, kind in extras.items()
    ]
    fields += [st.StructField(f"{EXTRA_PREFIX}{name}", st.StringType(), True) for name in text]
    return st.StructType(fields)


# --- the per-partition functions (run on the workers) -------------------------------------------


def _plain_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as object dtype: PySpark's Arrow conversion does not take pandas 3's
    Arrow-backed `str` dtype."""
    text = [c for c, kind in frame.dtypes.items() if isinstance(kind, pd.StringDtype)]
    return frame.astype(dict.fromkeys(text, object)) if text else frame


def score_partitions(
    batches: Iterator[pd.DataFrame],
    *,
    folder: str,
    explain: bool,
    version: str,
    keys: Mapping[str, pa.DataType],
    extras: Sequence[str],
    text: Sequence[str],
) -> Iterator[pd.DataFrame]:
    """Pass 1 on one partition: load the shipped predictor once, score every batch."""
    from pyspark import SparkFiles

    from models.predictor import TriagePredictor

    predictor = TriagePredictor.load(SparkFiles.get(folder), num_threads=1)
    for batch in batches:
        scored = score_chunk(predictor, batch, explain=explain, keys=keys, version=version)
        out = scored.table.to_pandas()
        extra = evaluation_columns(batch, scored, predictor.spec)
        out[f"{EXTRA_PREFIX}{ROW_ID}"] = batch[ROW_ID].to_numpy(np.int64)
        for name in [*extras, *text]:
            if name == ROW_ID:
                continue
            column = extra[name] if name in extra else pd.Series(np.nan, index=extra.index)
            if isinstance(column.dtype, pd.CategoricalDtype) or name in text:
                column = column.astype(object).where(column.notna(), None)
            out[f"{EXTRA_PREFIX}{name}"] = column.to_numpy()
        yield _plain_strings(out)


def count_partitions(
    batches: Iterator[pd.DataFrame], *, folder: str, date_column: str
) -> Iterator[pd.DataFrame]:
    """Pass 2 on one partition: drift bin counts of the eligible rows (and their scores)."""
    from pyspark import SparkFiles

    from models.predictor import TriagePredictor

    predictor = TriagePredictor.load(SparkFiles.get(folder), num_threads=1)
    for batch in batches:
        scored = score_chunk(predictor, batch)
        eligible = scored.eligible
        counts = drift.bin_counts(
            scored.features,
            predictor.reference,
            drift.period_labels(batch[date_column])[eligible],
            lab_labels(batch)[eligible],
            score=scored.probability[eligible],
        )
        yield _plain_strings(counts)


# --- the driver -----------------------------------------------------------------------------------


def _wide_files(cohort: CohortSource, scratch: Path, chunk_rows: int) -> list[str]:
    """Parquet files Spark can read: the cohort's own, or a wide file made by the driver."""
    if cohort.kind == "wide_parquet" and cohort.passthrough:
        return [p.resolve().as_uri() for p in cohort.files]
    target = scratch / "cohort_wide.parquet"
    frame = pd.concat(list(cohort.chunks(chunk_rows)), ignore_index=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), target)
    return [target.resolve().as_uri()]


def _ship(spark: SparkSession, model: ReplayModel, scratch: Path) -> str:
    """Copy the predictor folder under a unique name and add it to the Spark files."""
    name = f"predictor-{model.pinned.stem}"
    target = scratch / name
    shutil.copytree(model.pinned.folder, target)
    spark.sparkContext.addFile(str(target), recursive=True)
    return name


def _tally(result: DataFrame, outcome_column: str) -> pd.DataFrame:
    """Rows by period, status, band and outcome (the layout of `summaries.tally_rows`)."""
    outcome = f"{EXTRA_PREFIX}{outcome_column}"
    grouped = result.groupBy(f"{EXTRA_PREFIX}period", "status", "band", outcome).count().toPandas()
    frame = pd.DataFrame(
        {
            "period": grouped[f"{EXTRA_PREFIX}period"].to_numpy(dtype=object),
            "status": grouped["status"].to_numpy(dtype=object),
            "band": grouped["band"].fillna("none").to_numpy(dtype=object),
            "outcome": grouped[outcome].fillna(-1).to_numpy().astype(np.int64),
            "count": grouped["count"].to_numpy(np.int64),
        }
    )
    return frame.groupby(["period", "status", "band", "outcome"])["count"].sum().reset_index()


def _code_counts(result: DataFrame, column: str, status: str | None = None) -> Counter[str]:
    """Rows per code in a list column (`reasons` as `code:field`; a code counts once a row)."""
    from pyspark.sql import functions as sf

    codes = sf.array_distinct(sf.transform(sf.col(column), lambda r: sf.split(r, ":").getItem(0)))
    chosen = result if status is None else result.where(sf.col("status") == status)
    rows = chosen.select(sf.explode(codes).alias("code")).groupBy("code").count().collect()
    return Counter({str(r["code"]): int(r["count"]) for r in rows})


def _evaluation_frame(
    result: DataFrame, model: ReplayModel, keys: Sequence[str], text: Sequence[str]
) -> pd.DataFrame:
    """The scored rows' slim evaluation frame, in the layout of `summaries.evaluation_rows`."""
    from pyspark.sql import functions as sf

    spec = model.predictor.spec
    extras = [c for c in result.columns if c.startswith(EXTRA_PREFIX)]
    picked = result.where(sf.col("status") == SCORED).select(
        *keys, "index_date", "probability", "band", *extras
    )
    frame = picked.toPandas().rename(columns=lambda c: c.removeprefix(EXTRA_PREFIX))
    frame = frame.sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    frame[spec.split.date_column] = pd.to_datetime(frame.pop("index_date"))
    frame["band"] = pd.Categorical(frame["band"], categories=list(BANDS))
    for column in ("period", "sex", *text):
        frame[column] = pd.Categorical(frame[column])
    return frame


def _sample(spark_input: DataFrame, model: ReplayModel, rows: int, seed: int) -> pd.DataFrame:
    """Canonical values of some scored rows (up to the report's sample size, for its SHAP plot)."""
    size = EXPLAINED_SAMPLE_ROWS
    fraction = min(1.0, 4 * size / max(rows, 1))
    batch = spark_input.sample(fraction=fraction, seed=seed).limit(4 * size).toPandas()
    if batch.empty:
        return pd.DataFrame()
    scored = score_chunk(model.predictor, batch)
    return scored.values.iloc[np.flatnonzero(scored.eligible)[:size]].reset_index(drop=True)


def replay_spark(
    models: Sequence[ReplayModel],
    cohort: CohortSource,
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
) -> list[PassSummary]:
    """Score the cohort on Spark: one pass for scores (+ evaluation columns), one for drift."""
    import time

    from pyspark.sql import functions as sf

    paths = scores_path(options.out, models)
    seed = replay_seed(models, options)
    summaries = []
    with (
        tempfile.TemporaryDirectory(prefix="triage-spark-") as scratch_name,
        spark_session(options.spark_master) as spark,
    ):
        scratch = Path(scratch_name)
        files = _wide_files(cohort, scratch, options.chunk_rows)
        source = spark.read.parquet(*files).withColumn(ROW_ID, sf.monotonically_increasing_id())
        parallelism = spark.sparkContext.defaultParallelism
        if source.rdd.getNumPartitions() < parallelism:
            source = source.repartition(parallelism)
        columns = source.columns
        keys = {
            f.name: key_type(np.int64 if f.dataType.typeName() in {"long", "integer"} else object)
            for f in source.schema.fields
            if f.name in KEY_COLUMNS
        }
        rows = source.count()
        for model, path in zip(models, paths, strict=True):
            started = time.perf_counter()
            spec = model.predictor.spec
            folder = _ship(spark, model, scratch)
            text = subgroup_columns(columns, spec)
            extras = extra_columns(columns, spec.outcome.column)
            scores = scores_schema(model.predictor, explain=options.explain, keys=keys)

            score = partial(
                score_partitions, folder=folder, explain=options.explain,
                version=model.pinned.version, keys=keys, extras=tuple(extras), text=tuple(text),
            )  # fmt: skip
            result = source.mapInPandas(score, result_schema(scores, extras, text)).persist()
            ordered = result.select(*scores.names).orderBy(*keys, "index_date")
            ordered.write.mode("overwrite").parquet(path.resolve().as_uri())
            count = partial(count_partitions, folder=folder, date_column=spec.split.date_column)
            counts = (
                source.mapInPandas(count, COUNT_SCHEMA)
                .groupBy("period", "lab", "feature", "bin")
                .agg(sf.sum("count").alias("count"))
                .toPandas()
            )
            summaries.append(
                PassSummary(
                    rows=rows,
                    tally=_tally(result, spec.outcome.column),
                    exclusions=_code_counts(result, "reasons", INELIGIBLE),
                    warnings=_code_counts(result, "warnings"),
                    drift_counts=drift.combine_counts([counts]),
                    evaluation=_evaluation_frame(result, model, list(keys), text),
                    sample=_sample(source, model, rows, seed),
                    timings={"spark": time.perf_counter() - started},
                    scores_files=[path],
                )
            )
            result.unpersist()
        if progress is not None:
            progress(rows)
    return summaries
