"""The one cohort reader: every layout, on hand-made files of a few rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.cohorts.reader import CohortError, open_cohort, read_table

WIDE = pd.DataFrame(
    {
        "patient_id": [1, 2, 3],
        "index_date": pd.to_datetime(["2016-03-01", "2016-03-02", "2016-03-03"]),
        "age": [61, 72, 55],
        "sex": ["female", "male", "female"],
        "haemoglobin": [131.0, 118.0, None],
    }
)


def test_a_csv_file_reads_whole_and_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    WIDE.to_csv(path, index=False)
    source = open_cohort(path)
    assert source.kind == "wide_csv" and source.columns() == list(WIDE.columns)
    whole = source.read()
    assert whole["haemoglobin"].tolist()[:2] == [131.0, 118.0], "values as written"
    chunks = list(source.chunks(2))
    assert [len(c) for c in chunks] == [2, 1], "chunks of at most 2 rows, in order"
    assert read_table(path).equals(whole), "read_table is the same reader"


def test_a_folder_of_parquet_parts_is_one_table_in_file_order(tmp_path: Path) -> None:
    for i, part in enumerate((WIDE.iloc[:2], WIDE.iloc[2:])):
        part.to_parquet(tmp_path / f"part-{i}.parquet", index=False)
    source = open_cohort(tmp_path)
    assert source.kind == "wide_parquet" and len(source.files) == 2
    assert source.n_rows() == 3
    assert source.read()["patient_id"].tolist() == [1, 2, 3]


def test_a_folder_with_wide_and_long_tables_reads_the_one_asked_for(tmp_path: Path) -> None:
    WIDE.to_parquet(tmp_path / "x_wide.parquet", index=False)
    results = pd.DataFrame(
        {
            "patient_id": [1, 1],
            "sample_time": pd.to_datetime(["2016-02-01 09:30", "2016-03-01 08:00"]),
            "code": ["haemoglobin", "haemoglobin"],
            "value": [120.0, 999.0],
            "unit": ["g/L", "g/L"],
        }
    )
    results.to_parquet(tmp_path / "x_results.parquet", index=False)
    WIDE[["patient_id", "index_date", "age", "sex"]].to_parquet(
        tmp_path / "x_index.parquet", index=False
    )
    assert open_cohort(tmp_path).kind == "wide_parquet", "auto prefers the wide table"
    long = open_cohort(tmp_path, source="long")
    assert long.kind == "long" and long.n_rows() == 3
    frame = long.read()
    assert frame.loc[frame["patient_id"] == 1, "haemoglobin"].tolist() == [120.0], (
        "the as-of selection: the result on the index date (999) is never used"
    )


def test_the_digest_covers_only_the_files_read(tmp_path: Path) -> None:
    WIDE.to_parquet(tmp_path / "x_wide.parquet", index=False)
    (tmp_path / "manifest.json").write_text('{"code_version": "a"}')
    before = open_cohort(tmp_path).digest()
    (tmp_path / "manifest.json").write_text('{"code_version": "b"}')
    assert open_cohort(tmp_path).digest() == before, "the same data, the same digest"
    WIDE.iloc[:2].to_parquet(tmp_path / "x_wide.parquet", index=False)
    assert open_cohort(tmp_path).digest() != before, "other data, another digest"


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such file or folder"), ("cohort.xlsx", "expected a .csv or .parquet file")],
)
def test_what_cannot_be_read_says_why(tmp_path: Path, name: str, message: str) -> None:
    if name.endswith(".xlsx"):
        (tmp_path / name).write_text("not a table")
    with pytest.raises(CohortError, match=message):
        open_cohort(tmp_path / name)


def test_an_empty_folder_names_the_layouts_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match=r"no \*_wide.parquet"):
        open_cohort(tmp_path)
