"""An OMOP CDM v5.4 instance (a folder of CSV/Parquet tables, or a database URL) -> a long
cohort folder. The SQL is written once (`omop_cdm`) and runs on DuckDB or the database
(`omop_source`); pandas only shapes what the SQL returns.

- `person` -> people: sex from `gender_concept_id` (8507 male, 8532 female; otherwise the gender
  concept's name, which `build_index` excludes `unsupported_sex`); birth from year, month and
  day of birth when all three make a date, else the day of `birth_datetime`, else the year (and
  month) as a span that `build_index` reads as its middle, as the FHIR route does.
- `measurement` -> results, streamed in `measurement_id` order, BATCH_ROWS rows at a time, into
  `cohort_results.parquet`: `code` the LOINC code of `measurement_concept_id`'s concept (one the
  catalogue knows: a primary or alternative LOINC), `unit` the UCUM concept_code of
  `unit_concept_id`, else `unit_source_value` (the catalogue converts units when the cohort is
  read), `sample_time` `measurement_datetime` (a zoned one converted to naive local time in
  `time_zone`), else midnight of `measurement_date`, `lab` the care site of the measurement's
  visit. Rows are excluded by the first reason of `omop_cdm.MEASUREMENT_REASONS` that applies.
- Index events: `observation` and `procedure_occurrence` rows whose concept (vocabulary_id and
  concept_code, looked up in `concept`) is in the index concept set; `referral_id` is the row's
  id, the index day its date.
- Cancers: `condition_occurrence` rows whose ICD-10 code has a cancer site (`cancer_site_of`):
  the code of `condition_source_concept_id`'s ICD10 concept, else `condition_source_value`, else
  the ICD10 code that "Maps to" `condition_concept_id`; dated by `condition_start_date`.
- Follow-up: `observation_period` (the period holding the index day must reach the horizon).

Then `build_index` applies the shared rules and `write_manifest` records the source (its files'
SHA-256, or a SHA-256 of the rows a database returned), the rules and every exclusion count.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from models.analytes import CATALOGUE
from training.cohorts.standard import INDEX_FILE, RESULTS_FILE, SourceError, check_time_zone
from training.cohorts.standard.concept_sets import cancer_site_of, load_index_concepts
from training.cohorts.standard.index_events import build_index
from training.cohorts.standard.manifest import Exclusions, write_manifest
from training.cohorts.standard.omop_cdm import (
    EVENT_TABLES,
    MEASUREMENT_REASONS,
    OPTIONAL,
    REQUIRED,
    conditions_sql,
    events_sql,
    measurement_sql,
    people_sql,
    periods_sql,
)
from training.cohorts.standard.omop_source import Source, open_source
from training.cohorts.standard.results_writer import ResultsWriter

BATCH_ROWS = 500_000
RULES = {
    "measurements": MEASUREMENT_REASONS,
    "codes": "the LOINC concept_code of measurement_concept_id (the catalogue's LOINC and "
    "alternative LOINCs)",
    "units": "the UCUM concept_code of unit_concept_id, else unit_source_value",
    "times": "measurement_datetime as naive local time in the manifest's time zone (a zoned "
    "one converted), else 00:00 of measurement_date",
    "index_events": "observation / procedure_occurrence rows coded with a concept of the index "
    "concept set (vocabulary_id, concept_code); referral_id = the row's id",
    "outcomes": "condition_occurrence rows whose ICD-10 code (source concept, source value, or "
    "the ICD10 concept that Maps to the condition concept) is a cancer",
    "birth": "year/month/day_of_birth when a full date, else birth_datetime, else the year "
    "(and month) read as its middle",
    "sex": "gender_concept_id 8507 male, 8532 female",
}
CONDITION_RULES = {
    "unknown_person": "the condition's person is not in `person`",
    "undated": "no condition_start_date",
    "not_a_cancer": "no ICD-10 code of a cancer",
}


def import_omop(
    source: str | Path,
    out: Path,
    *,
    index_concepts: Path | None = None,
    horizon_days: int = 365,
    time_zone: str = "Europe/London",
    schema: str | None = None,
    engine_settings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Import the instance at `source` (a folder, or a database URL with `schema` the CDM
    schema) into the cohort folder `out`; return its manifest. `engine_settings` are DuckDB
    settings for a folder (e.g. threads, memory_limit, temp_directory)."""
    check_time_zone(time_zone)
    concepts = load_index_concepts(index_concepts)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(engine_settings or {})
    scratch = out / ".omop_tmp"
    settings.setdefault("temp_directory", str(scratch))
    opened = open_source(source, schema=schema, settings=settings)
    try:
        columns = _check(opened)
        exclusions = Exclusions()
        people = _people(opened, columns, time_zone)
        events = _events(opened, concepts, exclusions)
        conditions, conditions_read = _conditions(opened, columns, exclusions)
        periods = opened.frame(periods_sql(opened.tables))
        written, read = _measurements(opened, columns, out / RESULTS_FILE, time_zone, exclusions)
        source_sha256 = opened.sha256()
    finally:
        opened.close()
        shutil.rmtree(scratch, ignore_errors=True)
    index = build_index(
        people,
        events,
        conditions,
        periods=periods,
        followup_end=None,
        horizon_days=horizon_days,
        results=out / RESULTS_FILE,
        exclusions=exclusions,
    )
    index.to_parquet(out / INDEX_FILE, index=False)
    counts = {
        "people": len(people),
        "observation_periods": len(periods),
        "measurements_read": read,
        "results": written,
        "index_events_read": len(events),
        "index_events": len(index),
        "conditions_read": conditions_read,
        "cancer_conditions": len(conditions),
        "cancers": int(index["cancer"].sum()),
    }
    return write_manifest(
        out,
        kind=opened.kind,
        location=opened.location,
        source_sha256=source_sha256,
        rules={**RULES, "horizon_days": horizon_days},
        exclusions=exclusions,
        counts=counts,
        time_zone=time_zone,
    )


def _check(source: Source) -> dict[str, set[str]]:
    """Each present table's columns; SourceError naming a missing table or column."""
    where = source.location
    missing = [table for table in REQUIRED if table not in source.tables]
    if not any(table in source.tables for table, *_ in EVENT_TABLES):
        missing.append(" or ".join(table for table, *_ in EVENT_TABLES))
    if missing:
        raise SourceError(
            f"missing_table: {where} has no {', '.join(missing)} table; an OMOP cohort needs "
            f"{', '.join(REQUIRED)} and observation or procedure_occurrence"
        )
    columns = {table: source.columns(table) for table in source.tables}
    for table, needed in {**REQUIRED, **OPTIONAL}.items():
        lacking = [c for c in needed if table in columns and c not in columns[table]]
        if lacking:
            raise SourceError(f"missing_column: {where}: table {table} has no {', '.join(lacking)}")
    return columns


def _naive_local(times: pd.Series, time_zone: str) -> pd.Series:
    """Date-times as naive local wall-clock times: zoned ones converted to `time_zone`."""
    times = pd.to_datetime(times)
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert(time_zone).dt.tz_localize(None)
    return times.astype("datetime64[ns]")


def _people(source: Source, columns: dict[str, set[str]], time_zone: str) -> pd.DataFrame:
    """People for `build_index`: person_id, birth_first, birth_last, gender."""
    rows = source.frame(people_sql(source.tables, columns))
    year = pd.to_numeric(rows["year_of_birth"], errors="coerce")
    month = pd.to_numeric(rows["month_of_birth"], errors="coerce")
    day = pd.to_numeric(rows["day_of_birth"], errors="coerce")
    full = _dates(year, month, day)
    stamped = _naive_local(rows["birth_datetime"], time_zone).dt.normalize()
    month_first = _dates(year, month, pd.Series(1, index=rows.index))
    month_last = month_first + pd.offsets.MonthEnd(0)
    year_first = _dates(year, pd.Series(1, index=rows.index), pd.Series(1, index=rows.index))
    year_last = _dates(year, pd.Series(12, index=rows.index), pd.Series(31, index=rows.index))
    first = full.fillna(stamped).fillna(month_first).fillna(year_first)
    last = full.fillna(stamped).fillna(month_last).fillna(year_last)
    gender = rows["gender"].astype(object).where(rows["gender"].notna(), None)
    return pd.DataFrame(
        {
            "person_id": rows["person_id"].to_numpy("int64"),
            "birth_first": first.to_numpy("datetime64[ns]"),
            "birth_last": last.to_numpy("datetime64[ns]"),
            "gender": gender.to_numpy(),
        }
    )


def _dates(year: pd.Series, month: pd.Series, day: pd.Series) -> pd.Series:
    """Dates from parts; NaT where a part is missing or they make no date (30 February)."""
    parts = pd.DataFrame({"year": year, "month": month, "day": day})
    text = (
        parts["year"].astype("Int64").astype("string").str.zfill(4)
        + "-"
        + parts["month"].astype("Int64").astype("string").str.zfill(2)
        + "-"
        + parts["day"].astype("Int64").astype("string").str.zfill(2)
    )
    return pd.to_datetime(text, format="%Y-%m-%d", errors="coerce").astype("datetime64[ns]")


def _events(source: Source, concepts: pd.DataFrame, exclusions: Exclusions) -> pd.DataFrame:
    """Index events (referral_id, person_id, index_date, pathway); undated ones counted."""
    keys = list(concepts[["vocabulary_id", "concept_code"]].itertuples(index=False, name=None))
    rows = source.frame(events_sql(source.tables, keys))
    rows = rows.merge(concepts, on=["vocabulary_id", "concept_code"], how="left")
    day = pd.to_datetime(rows["index_date"]).dt.normalize()
    exclusions.add("index_events", "undated", int(day.isna().sum()),
                   "no observation_date / procedure_date")  # fmt: skip
    rows, day = rows[day.notna()], day[day.notna()]
    return pd.DataFrame(
        {
            "referral_id": rows["referral_id"].to_numpy("int64"),
            "person_id": rows["person_id"].to_numpy("int64"),
            "index_date": day.to_numpy("datetime64[ns]"),
            "pathway": rows["pathway"].astype(str).to_numpy(),
        }
    )


def _conditions(
    source: Source, columns: dict[str, set[str]], exclusions: Exclusions
) -> tuple[pd.DataFrame, int]:
    """Cancer conditions (person_id, condition_date, site) and the condition rows read."""
    empty = pd.DataFrame(
        {"person_id": pd.Series(dtype="int64"), "condition_date": pd.Series(dtype="datetime64[ns]"),
         "site": pd.Series(dtype=str)}
    )  # fmt: skip
    if "condition_occurrence" not in source.tables:
        return empty, 0
    total = int(source.frame(f"SELECT COUNT(*) AS n FROM {source.tables['condition_occurrence']}")
                ["n"].iloc[0])  # fmt: skip
    rows = source.frame(conditions_sql(source.tables, columns))
    site = cancer_site_of(rows["source_icd10"].astype("string").fillna(""))
    for candidate in ("source_value", "mapped_icd10"):
        site = site.fillna(cancer_site_of(rows[candidate].astype("string").fillna("")))
    cancer = site.notna().to_numpy()
    unknown = cancer & (rows["unknown_person"].to_numpy() == 1)
    undated = cancer & ~unknown & rows["condition_date"].isna().to_numpy()
    kept = cancer & ~unknown & ~undated
    step = "conditions"
    exclusions.add(step, "unknown_person", int(unknown.sum()), CONDITION_RULES["unknown_person"])
    exclusions.add(step, "undated", int(undated.sum()), CONDITION_RULES["undated"])
    exclusions.add(step, "not_a_cancer", total - int(cancer.sum()), CONDITION_RULES["not_a_cancer"])
    conditions = pd.DataFrame(
        {
            "person_id": rows.loc[kept, "person_id"].to_numpy("int64"),
            "condition_date": pd.to_datetime(rows.loc[kept, "condition_date"]).to_numpy(
                "datetime64[ns]"
            ),
            "site": site[kept].astype(str).to_numpy(),
        }
    )
    return conditions, total


def _measurements(
    source: Source,
    columns: dict[str, set[str]],
    path: Path,
    time_zone: str,
    exclusions: Exclusions,
) -> tuple[int, int]:
    """Stream usable measurements into `path` in measurement_id order; (written, read)."""
    loincs = sorted({c for a in CATALOGUE for c in (a.loinc, *a.alt_loinc)})
    sql = measurement_sql(source.tables, columns, loincs)
    reasons: Counter[str] = Counter()
    read = 0
    with ResultsWriter(path) as writer:
        for batch in source.batches(sql, BATCH_ROWS):
            read += len(batch)
            reason = batch["reason"]
            reasons.update(reason.dropna().tolist() if reason.notna().any() else [])
            batch = batch[reason.isna().to_numpy()]
            taken = _naive_local(batch["sample_time"], time_zone)
            day = pd.to_datetime(batch["sample_date"]).astype("datetime64[ns]")
            writer.write(
                pd.DataFrame(
                    {
                        "patient_id": batch["person_id"],
                        "sample_time": taken.fillna(day),
                        "code": batch["code"],
                        "value": batch["value"],
                        "unit": batch["unit"],
                        "lab": batch["lab"],
                    }
                )
            )
        written = writer.rows
    for reason_code, rule in MEASUREMENT_REASONS.items():
        exclusions.add("measurements", reason_code, reasons[reason_code], rule)
    return written, read
