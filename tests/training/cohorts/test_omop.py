"""OMOP CDM v5.4 in and out (`omop_export`, `omop_import`): a simulated cohort exported as CDM
tables (Parquet and CSV) and imported back replays to exactly the same scores; hand-written CDM
tables with the awkward cases (fixtures/omop_awkward) give the rows and counts worked out by hand
below; the same instance loaded into PostgreSQL imports by URL to the same cohort files; the
command line refuses a folder without `measurement` with a coded message."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import training.cli.cohort_omop  # noqa: F401  (registers `triage cohort from-omop`)
from tests.serving.audit_support import postgres_url
from tests.training.cohorts.round_trip import (
    HORIZON_DAYS,
    REPEATS,
    check_outcomes,
    check_same_scores,
    primary_loinc,
    simulated_with_awkward_cases,
)
from tests.training.pinning import pinned
from training.cli import app
from training.cohorts.standard import INDEX_FILE, RESULTS_FILE, SourceError
from training.cohorts.standard.index_events import birth_dates
from training.cohorts.standard.omop_export import write_omop
from training.cohorts.standard.omop_import import import_omop
from training.fit.train import TrainResult

AWKWARD = Path(__file__).parent / "fixtures" / "omop_awkward"
runner = CliRunner()
T = pd.Timestamp
# The v5.4 DDL's NOT NULL columns (OHDSI CommonDataModel, inst/ddl/5.4) of the tables exported.
DDL_REQUIRED = {
    "person": ["person_id", "gender_concept_id", "year_of_birth", "race_concept_id",
               "ethnicity_concept_id"],
    "observation_period": ["observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_concept_id",
                         "visit_start_date", "visit_end_date", "visit_type_concept_id"],
    "measurement": ["measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_type_concept_id"],
    "observation": ["observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_type_concept_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "condition_type_concept_id"],
    "care_site": ["care_site_id"],
    "concept": ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
                "concept_code", "valid_start_date", "valid_end_date"],
    "concept_relationship": ["concept_id_1", "concept_id_2", "relationship_id",
                             "valid_start_date", "valid_end_date"],
}  # fmt: skip


# --- the round trip -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulated_with_awkward_cases(tmp_path_factory.mktemp("native"), seed=41)


@pytest.fixture(scope="module")
def frames(native: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_parquet(native / "referrals_index.parquet"),
        pd.read_parquet(native / "referrals_results.parquet"),
    )


@pytest.fixture(scope="module")
def imported(native: Path, frames: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """The cohort exported as Parquet and as CSV tables, each imported back."""
    manifests = {}
    for table_format in ("parquet", "csv"):
        folder = native / f"omop_{table_format}"
        write_omop(*frames, folder, table_format=table_format, horizon_days=HORIZON_DAYS)
        manifests[table_format] = import_omop(
            folder, native / f"imported_{table_format}", horizon_days=HORIZON_DAYS
        )
    return manifests


def test_birth_dates_give_every_referral_its_recorded_age() -> None:
    index = pd.DataFrame(
        {
            "patient_id": [1, 1, 2, 3],
            "index_date": [T("2016-02-29"), T("2018-03-01"), T("2017-02-28"), T("2020-06-30")],
            "age": [50, 52, 16, 40],
        }
    )
    born = birth_dates(index)
    # patient 1: 50 on 29 Feb 2016 -> born on or before 28 Feb 1966 (1966 is a common year);
    # 52 on 1 Mar 2018 -> on or before 1 Mar 1966: the latest date meeting both is 28 Feb 1966.
    assert born.to_dict() == {1: T("1966-02-28"), 2: T("2001-02-28"), 3: T("1980-06-30")}
    with pytest.raises(ValueError, match="1 referrals' ages"):
        birth_dates(index.assign(age=[50, 54, 16, 40]))  # 54 two years after 50: impossible


def test_the_export_has_the_v54_tables_columns_and_concepts(
    imported: dict[str, dict[str, Any]], native: Path, frames: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    folder = native / "omop_parquet"
    tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in DDL_REQUIRED}
    for name, required in DDL_REQUIRED.items():
        table = tables[name]
        assert set(required) <= set(table.columns), name
        assert table[required].notna().all(axis=None), f"{name}: NOT NULL columns are filled"
    concept = tables["concept"].set_index("concept_id")
    index, results = frames
    measurement = tables["measurement"]
    assert (measurement["measurement_id"] == np.arange(1, len(results) + 1)).all()
    assert (measurement["measurement_source_value"] == results["code"].astype(str)).all()
    assert (measurement["unit_source_value"] == results["unit"].astype(str)).all()
    loinc = concept.loc[measurement["measurement_concept_id"]]
    assert (loinc["vocabulary_id"] == "LOINC").all()
    expected = [primary_loinc(c) for c in results["code"].astype(str)]
    assert (loinc["concept_code"].to_numpy() == np.array(expected)).all()
    ucum = measurement["unit_concept_id"] != 0
    unit = concept.loc[measurement.loc[ucum, "unit_concept_id"]]
    assert (unit["vocabulary_id"] == "UCUM").all()
    assert (unit["concept_code"].to_numpy() == results.loc[ucum, "unit"].astype(str)).all()
    assert {"×10⁹/L", "µmol/L"} <= set(results.loc[~ucum, "unit"].astype(str)), "not UCUM"
    assert ucum.mean() > 0.8
    person = tables["person"].set_index("person_id")
    assert set(person["gender_concept_id"]) == {8507, 8532}
    assert len(person) == index["patient_id"].nunique()
    observation = tables["observation"].set_index("observation_id").loc[index["referral_id"]]
    day = pd.to_datetime(observation["observation_date"]).to_numpy()
    assert (day == index["index_date"].to_numpy()).all()
    codes = concept.loc[observation["observation_concept_id"], "concept_code"].to_numpy()
    assert (codes == ("2WW-" + index["pathway"].astype(str)).to_numpy()).all()
    conditions = tables["condition_occurrence"]
    source = concept.loc[conditions["condition_source_concept_id"]]
    assert (source["vocabulary_id"] == "ICD10").all()
    assert (source["concept_code"].to_numpy() == conditions["condition_source_value"]).all()
    maps = tables["concept_relationship"].query("relationship_id == 'Maps to'")
    mapped = dict(zip(maps["concept_id_1"], maps["concept_id_2"], strict=True))
    assert (
        conditions["condition_source_concept_id"].map(mapped) == conditions["condition_concept_id"]
    ).all()
    assert imported["parquet"]["counts"]["measurements_read"] == len(results)


def test_the_import_gives_back_the_native_results_row_by_row(
    imported: dict[str, dict[str, Any]], native: Path, frames: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    results = frames[1]
    back = pd.read_parquet(native / "imported_parquet" / RESULTS_FILE)
    assert len(back) == len(results) == imported["parquet"]["counts"]["results"]
    assert (back["patient_id"].to_numpy() == results["patient_id"].to_numpy()).all()
    assert (back["sample_time"].to_numpy() == results["sample_time"].to_numpy()).all()
    assert np.array_equal(back["value"].to_numpy(), results["value"].to_numpy())
    assert (
        back["code"].to_numpy() == [primary_loinc(c) for c in results["code"].astype(str)]
    ).all()
    for column in ("unit", "lab"):
        assert (back[column].astype(str) == results[column].astype(str)).all(), column
    excluded = [e for e in imported["parquet"]["exclusions"] if e["step"] == "measurements"]
    assert excluded and all(e["count"] == 0 for e in excluded)


def test_csv_and_parquet_tables_import_to_the_same_cohort(
    imported: dict[str, dict[str, Any]], native: Path
) -> None:
    for name in (INDEX_FILE, RESULTS_FILE):
        pd.testing.assert_frame_equal(
            pd.read_parquet(native / "imported_csv" / name),
            pd.read_parquet(native / "imported_parquet" / name),
        )
    assert imported["csv"]["counts"] == imported["parquet"]["counts"]
    assert imported["csv"]["exclusions"] == imported["parquet"]["exclusions"]
    assert imported["csv"]["files"] == imported["parquet"]["files"], "the same bytes"


def test_outcomes_differ_only_where_a_later_referrals_cancer_falls_in_the_horizon(
    imported: dict[str, dict[str, Any]], native: Path
) -> None:
    check_outcomes(native, native / "imported_parquet", imported["parquet"])


def test_replay_scores_equal_the_native_cohorts_exactly(
    imported: dict[str, dict[str, Any]],
    native: Path,
    any_cancer: TrainResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    model = pinned(any_cancer, tmp_path_factory.mktemp("pinned"))
    check_same_scores(native, native / "imported_parquet", model, tmp_path_factory)


# --- awkward hand-written tables ----------------------------------------------------------------


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("awkward")
    return import_omop(AWKWARD, out), out


def _counts(manifest: dict[str, Any], step: str) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in manifest["exclusions"] if r["step"] == step}


def test_awkward_measurements_are_kept_or_counted_by_reason(
    awkward: tuple[dict[str, Any], Path],
) -> None:
    manifest, out = awkward
    # measurement.csv, row by row: 2 repeats 1 exactly; 4 is cholesterol (not a catalogue
    # test), 5 has concept 0; 6 has no value; 7 is "<"; 8 has neither unit concept nor text;
    # 10's person does not exist. 1, 3, 9, 11, 12, 13 are kept, in measurement_id order.
    assert _counts(manifest, "measurements") == {
        "unknown_person": 1, "unmapped_concept": 2, "no_value": 1, "comparator": 1,
        "no_unit": 1, "undated": 0, "duplicate": 1,
    }  # fmt: skip
    assert manifest["counts"]["measurements_read"] == 13
    results = pd.read_parquet(out / RESULTS_FILE)
    expected = pd.DataFrame(
        [
            (1, T("2018-04-20 09:30"), "718-7", 135.0, "g/L", "lab_a"),
            (1, T("2018-04-20 09:30"), "718-7", 13.5, "g/dL", "lab_a"),  # the UCUM concept
            (2, T("2018-04-25 00:00"), "718-7", 122.0, "g/L", "lab_b"),  # date only; unit text
            (6, T("2018-07-20 10:15"), "3094-0", 14.0, "mg/dL", "lab_b"),  # alternative LOINC
            (2, T("2018-04-26 10:00"), "718-7", 123.0, "g/L", None),  # operator 0; no visit
            (1, T("2018-04-20 09:30"), "718-7", 136.0, "g/L", "lab_a"),  # another value
        ],
        columns=["patient_id", "sample_time", "code", "value", "unit", "lab"],
    )
    assert results.astype(object).where(results.notna(), None).values.tolist() == (
        expected.astype(object).where(expected.notna(), None).values.tolist()
    )


def test_awkward_people_referrals_and_cancers_give_the_index_worked_by_hand(
    awkward: tuple[dict[str, Any], Path],
) -> None:
    manifest, out = awkward
    # 103 unknown gender, 104 period ends 2019-03-01 < 2019-06-01, 105 no period, 106 repeats
    # 101's day and pathway, 107's person is missing; 109 is not an index concept (not read).
    assert _counts(manifest, "index_events") == {
        "undated": 0, "duplicate_id": 0, "unknown_person": 1, "no_birth_date": 0,
        "unsupported_sex": 1,
        "duplicate_index_event": 1, "index_before_birth": 0, "no_observation_period": 1,
        "observation_period_ends_early": 1,
    }  # fmt: skip
    # condition 4 is K57.3 (not a cancer), 5's person is missing.
    assert _counts(manifest, "conditions") == {"unknown_person": 1, "undated": 0, "not_a_cancer": 1}
    assert manifest["counts"]["index_events_read"] == 9  # 8 observations + 1 procedure
    index = pd.read_parquet(out / INDEX_FILE)
    rows = index.astype(object).where(index.notna(), None).values.tolist()
    assert rows == [
        # person 1: born 1950-06-15 (full date); C18.7 by its ICD10 source concept, in horizon
        [1, 101, T("2018-05-01"), "lower_gi", "lab_a", 67, "male", 1, "colorectal_left",
         T("2018-09-01"), False],
        # person 2: year only -> 1 July 1960; lung (via Maps to) a month before: prior cancer;
        # lab: the latest result with a lab (12 has no visit)
        [2, 102, T("2018-05-02"), "breast", "lab_b", 57, "female", 0, None, None, True],
        # person 6: year and month -> 15 Nov 1945; C61 (source value) on 2019-08-02 is 366 days
        # after 108's index day but 321 after 201's (a procedure_occurrence)
        [6, 108, T("2018-08-01"), "lower_gi", "lab_b", 72, "male", 0, None, None, False],
        [6, 201, T("2018-09-15"), "breast", "lab_b", 72, "male", 1, "prostate",
         T("2019-08-02"), False],
    ]  # fmt: skip
    assert manifest["counts"]["cancers"] == 2
    assert manifest["source"]["kind"] == "omop-folder"
    assert len(manifest["source"]["sha256"]) == 64


def test_a_zoned_measurement_time_becomes_local_wall_clock_time(tmp_path: Path) -> None:
    folder = tmp_path / "zoned"
    folder.mkdir()
    for path in AWKWARD.glob("*.csv"):
        if path.name != "measurement.csv":
            (folder / path.name).write_bytes(path.read_bytes())
    rows = pd.read_csv(AWKWARD / "measurement.csv").head(1)
    rows["measurement_datetime"] = pd.to_datetime(["2018-07-01 08:30:00"]).tz_localize("UTC")
    rows["measurement_date"] = pd.to_datetime(rows["measurement_date"]).dt.date
    rows.to_parquet(folder / "measurement.parquet", index=False)
    import_omop(folder, tmp_path / "out")
    back = pd.read_parquet(tmp_path / "out" / RESULTS_FILE)
    assert back["sample_time"].tolist() == [T("2018-07-01 09:30")], "BST: UTC+1"


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, str]]:
    """(server URL, a new schema), the schema dropped afterwards."""
    import sqlalchemy as sa

    url = postgres_url()
    schema = f"omop_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield url, schema
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


PG_TYPES = {"int64": "BIGINT", "double": "DOUBLE PRECISION", "string": "VARCHAR(255)",
            "date32[day]": "DATE", "timestamp[us]": "TIMESTAMP"}  # fmt: skip


def _load_postgres(url: str, schema: str, folder: Path) -> None:
    """Each exported table into `schema` (value_as_number NUMERIC, as in the v5.4 DDL) by COPY."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        for path in sorted(folder.glob("*.parquet")):
            fields = pq.read_schema(path)
            columns = ", ".join(
                f"{f.name} {'NUMERIC' if f.name == 'value_as_number' else PG_TYPES[str(f.type)]}"
                for f in fields
            )
            cursor.execute(f"CREATE TABLE {schema}.{path.stem} ({columns})")
            with cursor.copy(
                f"COPY {schema}.{path.stem} FROM STDIN WITH (FORMAT csv, HEADER true)"
            ) as copy:
                copy.write((folder.parent / "omop_csv" / f"{path.stem}.csv").read_bytes())


def test_an_instance_in_postgresql_imports_to_the_same_cohort(
    imported: dict[str, dict[str, Any]], native: Path, postgres_schema: tuple[str, str]
) -> None:
    url, schema = postgres_schema
    _load_postgres(url, schema, native / "omop_parquet")
    out = native / f"imported_{schema}"
    manifest = import_omop(url, out, schema=schema, horizon_days=HORIZON_DAYS)
    for name in (INDEX_FILE, RESULTS_FILE):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / name), pd.read_parquet(native / "imported_parquet" / name)
        )
    assert manifest["counts"] == imported["parquet"]["counts"]
    assert manifest["exclusions"] == imported["parquet"]["exclusions"]
    assert manifest["source"]["kind"] == "omop-database"
    assert manifest["source"]["location"] == url
    assert len(manifest["source"]["sha256"]) == 64


# --- the command line ---------------------------------------------------------------------------


def test_a_folder_without_measurement_is_a_coded_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    folder.mkdir()
    for path in AWKWARD.glob("*.csv"):
        if path.name != "measurement.csv":
            (folder / path.name).write_bytes(path.read_bytes())
    result = runner.invoke(app, ["cohort", "from-omop", str(folder), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "missing_table" in result.output and "measurement" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(SourceError, match="missing_table"):
        import_omop(folder, tmp_path / "o")


def test_a_missing_column_and_an_unreachable_database_are_coded_user_errors(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "cdm"
    folder.mkdir()
    for path in AWKWARD.glob("*.csv"):
        (folder / path.name).write_bytes(path.read_bytes())
    person = pd.read_csv(AWKWARD / "person.csv").drop(columns=["year_of_birth"])
    person.to_csv(folder / "person.csv", index=False)
    result = runner.invoke(app, ["cohort", "from-omop", str(folder), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "missing_column" in result.output and "year_of_birth" in result.output
    url = "postgresql+psycopg://someone:secret@127.0.0.1:9/nowhere"
    result = runner.invoke(app, ["cohort", "from-omop", url, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "unreadable_source" in result.output and "secret" not in result.output


def test_the_command_prints_counts_and_exclusions(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["cohort", "from-omop", str(AWKWARD), "--out", str(tmp_path / "cohort")]
    )
    assert result.exit_code == 0, result.output
    assert "comparator" in result.output and "observation_period_ends_early" in result.output
    assert (tmp_path / "cohort" / INDEX_FILE).is_file()


def test_validate_reads_an_imported_cohort_like_the_native_one(
    imported: dict[str, dict[str, Any]], native: Path, tmp_path: Path
) -> None:
    """`triage validate` on the imported folder reports the native long cohort's eligibility
    (the repeats aside, which the import excluded)."""
    long = tmp_path / "native_long"  # the native folder's long tables alone (it also has wide)
    long.mkdir()
    for name in ("referrals_index.parquet", "referrals_results.parquet"):
        shutil.copy(native / name, long / name)
    said = {}
    for name, folder in (("native", long), ("imported", native / "imported_parquet")):
        result = runner.invoke(app, ["validate", str(folder), "--spec", "any_cancer"])
        assert result.exit_code == 0, result.output
        said[name] = re.search(r"([\d,]+) rows, ([\d,]+) eligible", result.output)
    native_rows, native_eligible = (int(g.replace(",", "")) for g in said["native"].groups())
    rows, eligible = (int(g.replace(",", "")) for g in said["imported"].groups())
    assert rows == native_rows - REPEATS == imported["parquet"]["counts"]["index_events"]
    assert native_eligible - REPEATS <= eligible <= native_eligible
