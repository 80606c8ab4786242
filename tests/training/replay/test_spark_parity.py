"""The Spark engine writes the local engine's files: the same cohort through the same model gives
byte-identical score files (one file, the cohort's row order), green cancers, drift, metrics and
reports, and a manifest that differs only in the engine's name and the timings.

The session's trained any_cancer model (tests/training/conftest.py) is pinned from a folder, not
from MLflow. The cohorts are the referral cohort laid out so that chunks fall across files and
row groups (the wide Parquet path, where executors read their own chunks), and a CSV slice with
a period, explanations and two versions side by side (the path where the driver reads chunks).
"""

from __future__ import annotations

import filecmp
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.training.pinning import pinned
from training.cohorts.reader import open_cohort
from training.fit.train import TrainResult
from training.replay.chunks import cohort_chunks, parquet_pieces, read_piece
from training.replay.options import ReplayModel, ReplayOptions
from training.replay.outputs import MANIFEST_FILE, ReplayResult
from training.replay.run import replay_models

N_BOOT = 10
CHUNK_ROWS = 4_000
ROW_GROUP_ROWS = 7_000  # not a multiple of the chunk: chunks end early at each row group's end
CSV_ROWS = 6_000
SINCE = date(2017, 1, 1)
# What may differ between the engines' manifests: the engine's name, and how long each step
# took (the whole replay's and each model's stage timings, e.g. Spark's `spark` against the
# local engine's `read`). Nothing names the output folder.
ENGINE_FIELDS = {("replay", "engine"), ("timings_seconds",), ("models", "timings_seconds")}


@pytest.fixture(scope="module")
def models(any_cancer: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> list[ReplayModel]:
    """Two versions of the same trained model (side by side needs two labels)."""
    return [pinned(any_cancer, tmp_path_factory.mktemp(f"v{v}"), v) for v in ("7", "8")]


@pytest.fixture(scope="module")
def wide(cohorts: dict[str, Path]) -> pd.DataFrame:
    return pd.read_parquet(cohorts["referrals"] / "referrals_wide.parquet")


@pytest.fixture(scope="module")
def parts(cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The referral cohort as two Parquet part files with row groups of 7,000 rows."""
    table = pq.read_table(cohorts["referrals"] / "referrals_wide.parquet")
    folder = tmp_path_factory.mktemp("parts")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet", row_group_size=ROW_GROUP_ROWS)
    pq.write_table(table.slice(half), folder / "part-1.parquet", row_group_size=ROW_GROUP_ROWS)
    return folder


@pytest.fixture(scope="module")
def csv_slice(wide: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "referrals.csv"
    wide.head(CSV_ROWS).to_csv(path, index=False)
    return path


def test_each_piece_read_on_its_own_is_the_local_engines_chunk(
    parts: Path, wide: pd.DataFrame
) -> None:
    cohort = open_cohort(parts)
    pieces = parquet_pieces(cohort.files, CHUNK_ROWS)
    chunks = list(cohort_chunks(cohort, CHUNK_ROWS))
    # Per file (12,000 rows): row groups of 7,000 and 5,000, each cut into chunks of 4,000.
    assert [len(c) for c in chunks] == [4_000, 3_000, 4_000, 1_000] * 2, "row group ends cut"
    assert len(pieces) == len(chunks), "one piece per chunk of the local engine"
    for piece, chunk in zip(pieces, chunks, strict=True):
        pd.testing.assert_frame_equal(read_piece(piece, cohort, CHUNK_ROWS), chunk)
    whole = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(whole, wide, obj="the chunks are the cohort, in its order")


def _replay_both(
    models: list[ReplayModel], root: Path, cohort: Path, **options: Any
) -> dict[str, ReplayResult]:
    return {
        engine: replay_models(
            models,
            ReplayOptions(
                cohort, root / engine, engine=engine, spark_master="local[2]", n_boot=N_BOOT,
                chunk_rows=CHUNK_ROWS, **options,
            ),
        )
        for engine in ("local", "spark")
    }  # fmt: skip


@pytest.fixture(scope="module")
def spark() -> Iterator[None]:
    """One local Spark session for the module's Spark replays (each would start its own)."""
    pytest.importorskip("pyspark")
    from training.replay.spark import spark_session

    with spark_session("local[2]"):
        yield


@pytest.fixture(scope="module")
def from_parts(
    spark: None, models: list[ReplayModel], parts: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ReplayResult]:
    return _replay_both(models[:1], tmp_path_factory.mktemp("parts_out"), parts, start=SINCE)


@pytest.fixture(scope="module")
def from_csv(
    spark: None,
    models: list[ReplayModel],
    csv_slice: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, ReplayResult]:
    root = tmp_path_factory.mktemp("csv_out")
    return _replay_both(models, root, csv_slice, explain=True)


def _manifest_differences(a: Any, b: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Where two manifests differ, as key paths without list positions."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: set[tuple[str, ...]] = set()
        for key in a.keys() | b.keys():
            if key not in a or key not in b or key in {"timings_seconds", "engine"}:
                found |= {(*path, key)} if a.get(key) != b.get(key) else set()
            else:
                found |= _manifest_differences(a[key], b[key], (*path, key))
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(_manifest_differences(x, y, path) for x, y in zip(a, b, strict=True)))
    return set() if a == b else {path}


def _assert_same_outputs(results: dict[str, ReplayResult]) -> list[str]:
    local, spark = results["local"].out, results["spark"].out
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in spark.iterdir()), "the same output files"
    for name in names:
        if name == MANIFEST_FILE:
            continue
        assert (spark / name).is_file(), f"{name} is one file, not a folder of parts"
        assert filecmp.cmp(local / name, spark / name, shallow=False), f"{name}: the same bytes"
    a, b = (json.loads((out / MANIFEST_FILE).read_text()) for out in (local, spark))
    assert _manifest_differences(a, b) <= ENGINE_FIELDS, "only the engine and timings differ"
    assert (a["replay"]["engine"], b["replay"]["engine"]) == ("local", "spark")
    return names


@pytest.mark.slow
def test_spark_writes_the_local_engines_files_from_parquet_parts(
    from_parts: dict[str, ReplayResult], wide: pd.DataFrame
) -> None:
    names = _assert_same_outputs(from_parts)
    expected = {"scores.parquet", "drift.parquet", "green_cancers.parquet", "metrics.json"}
    assert expected <= set(names), "every output of a replay with outcomes was compared"
    out = from_parts["spark"].out
    scores = pd.read_parquet(out / "scores.parquet")
    since = wide[pd.to_datetime(wide["index_date"]) >= pd.Timestamp(SINCE)]
    assert 0 < len(since) < len(wide), "the period keeps some of the cohort's rows"
    keys = ["patient_id", "referral_id"]
    pd.testing.assert_frame_equal(
        scores[keys], since[keys].reset_index(drop=True), obj="the period's rows in cohort order"
    )
    metadata = pq.ParquetFile(out / "scores.parquet").metadata
    assert metadata.num_row_groups == 8, "one row group per chunk, however few rows it kept"
    # The session's model has no green band at this size (99% rule-out sensitivity), so the file
    # holds no rows: its columns' types are still written, and compared above.
    cancers = pd.read_parquet(out / "green_cancers.parquet")
    assert str(cancers["index_date"].dtype) == "datetime64[ns]", "dates in nanoseconds"
    local, spark = (from_parts[e].models[0].summary for e in ("local", "spark"))
    assert len(spark.sample) > 0, "the SHAP sample was drawn"
    pd.testing.assert_frame_equal(local.sample, spark.sample, obj="the same SHAP sample rows")


@pytest.mark.slow
def test_spark_writes_the_local_engines_files_from_a_csv_side_by_side_with_explanations(
    from_csv: dict[str, ReplayResult], wide: pd.DataFrame
) -> None:
    names = _assert_same_outputs(from_csv)
    assert {"scores_any_cancer_v7.parquet", "scores_any_cancer_v8.parquet"} <= set(names)
    scores = pd.read_parquet(from_csv["spark"].out / "scores_any_cancer_v8.parquet")
    head = wide.head(CSV_ROWS)
    assert scores["referral_id"].tolist() == head["referral_id"].tolist(), "in cohort order"
    assert any(c.startswith("contrib__") for c in scores.columns), "with explanations"
    comparison = from_csv["spark"].manifest["comparison"]
    assert comparison is not None and comparison["paired_rows"] > 0, "rows paired side by side"
