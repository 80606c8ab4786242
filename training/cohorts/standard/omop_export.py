"""A simulated cohort as an OMOP CDM v5.4 instance (a subset of its tables, one file each), the
shape a research network's CDM has, so that `omop_import` can be tested end to end.

Tables: `person`, `observation_period`, `visit_occurrence`, `care_site` (the labs),
`measurement` (the lab results), `observation` (the referrals: the index events),
`condition_occurrence` (the cancers), `concept` (every concept used) and `concept_relationship`.
Choices an ETL would make, each undone exactly by the importer:

- Birth date: the simulator knows ages, not birth dates; the latest date at which every one of a
  patient's referrals has its recorded age (completed years) is written as year, month and day
  of birth and `birth_datetime`. ValueError when a patient's ages contradict each other.
- Measurements, in the native row order (`measurement_id` 1, 2, ...): `measurement_concept_id`
  the LOINC concept of the code (a lab's local code, e.g. "haemoglobin", mapped to the analyte's
  primary LOINC; the code as reported kept in `measurement_source_value`); `unit_concept_id` the
  UCUM concept when the unit is spelt exactly as a unit the catalogue accepts under that LOINC,
  else 0 (e.g. "×10⁹/L"); `unit_source_value` always the unit as reported; operator "=".
  One outpatient visit per (person, sample time, lab), at the lab's care site.
- Index events: an `observation` per referral (`observation_id` = referral_id) coded with its
  pathway's index concept (`concept_sets.index_concept_for`), dated on the index day.
- Cancers: one `condition_occurrence` per distinct (patient, diagnosis date, site):
  `condition_source_value` the site's ICD-10 code (`concept_sets.icd10_for_site`),
  `condition_source_concept_id` its ICD10 concept, `condition_concept_id` a local standard
  concept to which the ICD10 concept "Maps to" (as a SNOMED concept would be in a real CDM).
- `observation_period`: per person, from their earliest record to the cohort's last index day
  plus `horizon_days` (or their last record, if later), so that every referral is followed up.
- Concepts the CDM does not fix (LOINC, UCUM, ICD10, the local ones) are numbered from
  `LOCAL_CONCEPT_BASE` (the importer resolves them by vocabulary and code, never by id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.analytes import CATALOGUE, Catalogue
from training.cohorts.standard.concept_sets import (
    LOCAL_CONCEPT_BASE,
    exported_loinc,
    icd10_for_site,
    index_concept_for,
    is_ucum_unit,
)
from training.cohorts.standard.index_events import birth_dates
from training.cohorts.standard.manifest import file_sha256
from training.cohorts.standard.omop_cdm import (
    EHR_TYPE,
    FEMALE,
    LAB_TYPE,
    MALE,
    OPERATOR_EQUALS,
    OUTPATIENT_VISIT,
)

TABLE_FORMATS = ("parquet", "csv")
CONDITION_VOCABULARY = "TriageCondition"  # the local standard cancer concepts
FIXED_CONCEPTS = [  # (id, name, domain, vocabulary, class, standard, code)
    (MALE, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    (FEMALE, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    (OPERATOR_EQUALS, "=", "Meas Value Operator", "SNOMED", "Qualifier Value", "S", "276136004"),
    (LAB_TYPE, "Lab", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976929"),
    (EHR_TYPE, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    (OUTPATIENT_VISIT, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
]


def write_omop(
    index: pd.DataFrame,
    results: pd.DataFrame,
    out: Path,
    *,
    table_format: str = "parquet",
    horizon_days: int = 365,
) -> dict[str, str]:
    """Write the native cohort (`index`, `results` frames) as OMOP tables into `out`, one
    `<table>.parquet` or `<table>.csv` each; return file name -> SHA-256."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table_format must be one of {TABLE_FORMATS}, not {table_format!r}")
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = _Vocabulary()
    measurement, visits, labs = _measurements(results, vocabulary, CATALOGUE)
    tables = {
        "person": _people(index),
        "observation_period": _periods(index, results, horizon_days),
        "care_site": labs,
        "visit_occurrence": visits,
        "measurement": measurement,
        "observation": _observations(index, vocabulary),
        "condition_occurrence": _conditions(index, vocabulary),
    }
    tables["concept"] = vocabulary.concepts()
    tables["concept_relationship"] = vocabulary.relationships()
    written = {}
    for name, table in tables.items():
        path = out / f"{name}.{table_format}"
        _write(table, path)
        written[path.name] = file_sha256(path)
    return written


def _write(table: pd.DataFrame | pa.Table, path: Path) -> None:
    arrow = (
        table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    )
    schema = pa.schema(  # plain strings (VARCHAR), whatever pandas backed them with
        [f.with_type(pa.string()) if f.type == pa.large_string() else f for f in arrow.schema]
    )
    arrow = arrow.cast(schema)
    if path.suffix == ".csv":
        pacsv.write_csv(arrow, path)
    else:
        pq.write_table(arrow, path, compression="zstd")


class _Vocabulary:
    """The concepts the tables use: fixed OMOP ones and local ones numbered as they come."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, str, str, str, str | None]] = {}
        self.maps_to: list[tuple[int, int]] = []

    def concept(
        self, vocabulary: str, code: str, name: str, domain: str, kind: str, standard: bool = True
    ) -> int:
        key = (vocabulary, code)
        if key not in self.rows:
            concept_id = LOCAL_CONCEPT_BASE + len(self.rows) + 1
            self.rows[key] = (concept_id, name, domain, kind, "S" if standard else None)
        return self.rows[key][0]

    def concepts(self) -> pd.DataFrame:
        local = [
            (cid, name, domain, vocabulary, kind, standard, code)
            for (vocabulary, code), (cid, name, domain, kind, standard) in self.rows.items()
        ]
        columns = [
            "concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
            "standard_concept", "concept_code",
        ]  # fmt: skip
        frame = pd.DataFrame([*FIXED_CONCEPTS, *local], columns=columns)
        frame["concept_id"] = frame["concept_id"].astype("int64")
        frame["valid_start_date"] = pd.Timestamp("1970-01-01").date()
        frame["valid_end_date"] = pd.Timestamp("2099-12-31").date()
        frame["invalid_reason"] = pd.Series([None] * len(frame), dtype="string")
        return frame

    def relationships(self) -> pd.DataFrame:
        pairs = np.array(self.maps_to, dtype="int64").reshape(-1, 2)
        frame = pd.DataFrame(
            {
                "concept_id_1": np.concatenate([pairs[:, 0], pairs[:, 1]]),
                "concept_id_2": np.concatenate([pairs[:, 1], pairs[:, 0]]),
                "relationship_id": ["Maps to"] * len(pairs) + ["Mapped from"] * len(pairs),
            }
        )
        frame["valid_start_date"] = pd.Timestamp("1970-01-01").date()
        frame["valid_end_date"] = pd.Timestamp("2099-12-31").date()
        frame["invalid_reason"] = pd.Series([None] * len(frame), dtype="string")
        return frame


# --- person, observation_period -----------------------------------------------------------------


def _people(index: pd.DataFrame) -> pd.DataFrame:
    birth = birth_dates(index)
    sex = index.groupby("patient_id", observed=True)["sex"].first().reindex(birth.index)
    gender = sex.astype(str).map({"male": MALE, "female": FEMALE}).fillna(0).astype("int64")
    return pd.DataFrame(
        {
            "person_id": birth.index.to_numpy("int64"),
            "gender_concept_id": gender.to_numpy(),
            "year_of_birth": birth.dt.year.to_numpy("int64"),
            "month_of_birth": birth.dt.month.to_numpy("int64"),
            "day_of_birth": birth.dt.day.to_numpy("int64"),
            "birth_datetime": birth.to_numpy("datetime64[us]"),
            "race_concept_id": 0,
            "ethnicity_concept_id": 0,
            "person_source_value": birth.index.astype(str),
            "gender_source_value": sex.astype(str).to_numpy(),
        }
    )


def _periods(index: pd.DataFrame, results: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    sampled = pd.to_datetime(results["sample_time"]).groupby(results["patient_id"].to_numpy())
    days = pd.concat(
        [
            pd.DataFrame({"patient_id": index["patient_id"], "day": index["index_date"]}),
            pd.DataFrame({"patient_id": index["patient_id"], "day": index["diagnosis_date"]}),
            sampled.min().rename("day").rename_axis("patient_id").reset_index(),
            sampled.max().rename("day").rename_axis("patient_id").reset_index(),
        ]
    ).dropna()
    days["day"] = pd.to_datetime(days["day"]).dt.normalize()
    span = days.groupby("patient_id")["day"].agg(["min", "max"])
    cohort_end = pd.to_datetime(index["index_date"]).max() + pd.Timedelta(days=horizon_days)
    end = span["max"].where(span["max"] > cohort_end, cohort_end)
    return pd.DataFrame(
        {
            "observation_period_id": np.arange(1, len(span) + 1, dtype="int64"),
            "person_id": span.index.to_numpy("int64"),
            "observation_period_start_date": span["min"].dt.date.to_numpy(),
            "observation_period_end_date": end.dt.date.to_numpy(),
            "period_type_concept_id": EHR_TYPE,
        }
    )


# --- measurement, visit_occurrence, care_site ---------------------------------------------------


def _measurements(
    results: pd.DataFrame, vocabulary: _Vocabulary, catalogue: Catalogue
) -> tuple[pa.Table, pd.DataFrame, pd.DataFrame]:
    """The measurement table (Arrow, built column by column: tens of millions of rows), the
    visits and the care sites."""
    code = results["code"].astype("category")
    unit = results["unit"].astype("string").fillna("").astype("category")
    lab = results["lab"].astype("string").astype("category")
    loinc = [exported_loinc(str(c), catalogue) for c in code.cat.categories]
    concept_of_code = np.array(
        [
            _loinc_concept(str(c), lc, vocabulary, catalogue)
            for c, lc in zip(code.cat.categories, loinc, strict=True)
        ],
        dtype="int64",
    )
    pairs = pd.DataFrame({"c": code.cat.codes, "u": unit.cat.codes}).drop_duplicates()
    unit_lookup = np.zeros((len(code.cat.categories), max(len(unit.cat.categories), 1)), "int64")
    for c, u in pairs.itertuples(index=False):  # one per (code, unit) pair, not per row
        unit_lookup[c, u] = _unit_concept(
            loinc[c], str(unit.cat.categories[u]), vocabulary, catalogue
        )
    code_index = code.cat.codes.to_numpy()
    times = pd.to_datetime(results["sample_time"])
    visit, visits, labs = _visits(results["patient_id"], times, lab)
    table = pa.table(
        {
            "measurement_id": pa.array(np.arange(1, len(results) + 1, dtype="int64")),
            "person_id": pa.array(results["patient_id"].to_numpy("int64")),
            "measurement_concept_id": pa.array(concept_of_code[code_index]),
            "measurement_date": pa.array(times.dt.normalize().to_numpy("datetime64[ns]")).cast(
                pa.date32()
            ),
            "measurement_datetime": pa.array(times.to_numpy("datetime64[us]")),
            "measurement_type_concept_id": pa.array(np.full(len(results), LAB_TYPE, "int64")),
            "operator_concept_id": pa.array(np.full(len(results), OPERATOR_EQUALS, "int64")),
            "value_as_number": pa.array(results["value"].to_numpy("float64")),
            "unit_concept_id": pa.array(unit_lookup[code_index, unit.cat.codes.to_numpy()]),
            "visit_occurrence_id": pa.array(visit),
            "measurement_source_value": pa.DictionaryArray.from_arrays(
                code_index.astype("int32"), pa.array(code.cat.categories.astype(str))
            ).cast(pa.string()),
            "unit_source_value": pa.DictionaryArray.from_arrays(
                unit.cat.codes.to_numpy("int32"), pa.array(unit.cat.categories.astype(str))
            ).cast(pa.string()),
        }
    )
    return table, visits, labs


def _loinc_concept(
    code: str, loinc: str | None, vocabulary: _Vocabulary, catalogue: Catalogue
) -> int:
    if loinc is None:
        return 0  # not a catalogue test: unmapped, as an ETL would leave it
    analyte = catalogue.resolve(code)
    assert analyte is not None
    return vocabulary.concept("LOINC", loinc, analyte.name, "Measurement", "Lab Test")


def _unit_concept(
    loinc: str | None, unit: str, vocabulary: _Vocabulary, catalogue: Catalogue
) -> int:
    """The UCUM concept of `unit` when it is spelt as a unit the catalogue accepts under `loinc`
    (so it is a UCUM code), else 0."""
    if not is_ucum_unit(loinc, unit, catalogue):
        return 0
    return vocabulary.concept("UCUM", unit, unit, "Unit", "Unit")


def _visits(
    patient: pd.Series, times: pd.Series, lab: pd.Series
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """A visit id per result (one visit per person, sample time and lab), the visits, and the
    care sites (one per lab, numbered 1, 2, ... in name order)."""
    lab_codes = lab.cat.codes.to_numpy("int64")  # -1: no lab
    keys = pd.DataFrame(
        {"p": patient.to_numpy("int64"), "t": times.to_numpy("datetime64[ns]"), "l": lab_codes}
    )
    visit = keys.groupby(["p", "t", "l"], sort=False).ngroup().to_numpy("int64") + 1
    first = ~pd.Series(visit).duplicated().to_numpy()
    once = keys[first]
    start = pd.to_datetime(once["t"])
    visits = pd.DataFrame(
        {
            "visit_occurrence_id": visit[first],
            "person_id": once["p"].to_numpy(),
            "visit_concept_id": OUTPATIENT_VISIT,
            "visit_start_date": start.dt.date.to_numpy(),
            "visit_start_datetime": start.to_numpy("datetime64[us]"),
            "visit_end_date": start.dt.date.to_numpy(),
            "visit_end_datetime": start.to_numpy("datetime64[us]"),
            "visit_type_concept_id": LAB_TYPE,
            "care_site_id": pd.array(np.where(once["l"] >= 0, once["l"] + 1, 0), dtype="Int64"),
        }
    ).sort_values("visit_occurrence_id", ignore_index=True)
    visits.loc[visits["care_site_id"] == 0, "care_site_id"] = pd.NA
    names = [str(n) for n in lab.cat.categories]
    labs = pd.DataFrame(
        {
            "care_site_id": np.arange(1, len(names) + 1, dtype="int64"),
            "care_site_name": names,
            "care_site_source_value": names,
        }
    )
    return visit, visits, labs


# --- observation (index events), condition_occurrence (cancers) ---------------------------------


def _observations(index: pd.DataFrame, vocabulary: _Vocabulary) -> pd.DataFrame:
    concept = {}
    for pathway in index["pathway"].astype(str).unique():
        vocabulary_id, code, name = index_concept_for(pathway)
        concept[pathway] = (
            vocabulary.concept(vocabulary_id, code, name, "Observation", "Referral"),
            code,
        )
    pathway = index["pathway"].astype(str)
    day = pd.to_datetime(index["index_date"]).dt.normalize()
    return pd.DataFrame(
        {
            "observation_id": index["referral_id"].to_numpy("int64"),
            "person_id": index["patient_id"].to_numpy("int64"),
            "observation_concept_id": pathway.map({p: c[0] for p, c in concept.items()}).to_numpy(
                "int64"
            ),
            "observation_date": day.dt.date.to_numpy(),
            "observation_datetime": day.to_numpy("datetime64[us]"),
            "observation_type_concept_id": EHR_TYPE,
            "observation_source_value": pathway.map(
                {p: c[1] for p, c in concept.items()}
            ).to_numpy(),
        }
    ).sort_values("observation_id", ignore_index=True)


def _conditions(index: pd.DataFrame, vocabulary: _Vocabulary) -> pd.DataFrame:
    cancers = index.loc[index["cancer"] == 1, ["patient_id", "diagnosis_date", "cancer_site"]]
    cancers = (
        cancers.astype({"cancer_site": str})
        .drop_duplicates()
        .sort_values(["diagnosis_date", "patient_id", "cancer_site"], ignore_index=True)
    )
    source, standard, codes = {}, {}, {}
    for site in cancers["cancer_site"].unique():
        icd10, title = icd10_for_site(site)
        source[site] = vocabulary.concept("ICD10", icd10, title, "Condition", "ICD10 code", False)
        standard[site] = vocabulary.concept(
            CONDITION_VOCABULARY, f"cancer-{site}", title, "Condition", "Clinical Finding"
        )
        vocabulary.maps_to.append((source[site], standard[site]))
        codes[site] = icd10
    day = pd.to_datetime(cancers["diagnosis_date"]).dt.normalize()
    site = cancers["cancer_site"]
    return pd.DataFrame(
        {
            "condition_occurrence_id": np.arange(1, len(cancers) + 1, dtype="int64"),
            "person_id": cancers["patient_id"].to_numpy("int64"),
            "condition_concept_id": site.map(standard).to_numpy("int64"),
            "condition_start_date": day.dt.date.to_numpy(),
            "condition_start_datetime": day.to_numpy("datetime64[us]"),
            "condition_type_concept_id": EHR_TYPE,
            "condition_source_value": site.map(codes).to_numpy(),
            "condition_source_concept_id": site.map(source).to_numpy("int64"),
        }
    )
