"""The rules every importer shares (`training.cohorts.standard`): concept sets, the index table
built from people, events, cancers and follow-up, and the manifest. Expected values are worked
out by hand in each test."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from training.cohorts.standard.concept_sets import (
    ConceptSetError,
    cancer_site_of,
    icd10_for_site,
    index_concept_for,
    load_index_concepts,
)
from training.cohorts.standard.index_events import build_index, completed_years
from training.cohorts.standard.manifest import Exclusions, mask_url
from training.cohorts.standard.results_writer import ResultsWriter

T = pd.Timestamp


def test_cancer_sites_take_the_most_specific_code_in_any_spelling() -> None:
    codes = pd.Series(["C18.7", "c187", "C18.2", "C18", "C18.9", "C20", "C71.1", "D01.0",
                       "C57.0", "C57.1", "C44.3", None, "I10", "C97", "C98"])  # fmt: skip
    assert cancer_site_of(codes).tolist() == [
        "colorectal_left", "colorectal_left", "colorectal_right", "colorectal_other",
        "colorectal_other", "colorectal_left", "other_malignant", pd.NA, "ovarian",
        "other_malignant", "squamous_cell", pd.NA, pd.NA, "other_malignant", pd.NA,
    ]  # fmt: skip


def test_every_simulated_site_has_a_code_that_maps_back_to_it() -> None:
    sites = ["bladder", "breast", "cervical", "colorectal_left", "colorectal_right",
             "endometrial", "head_and_neck", "hepatobiliary", "kidney", "leukaemia", "lung",
             "lymphoma", "melanoma", "myeloma", "oesophagogastric", "ovarian", "pancreatic",
             "prostate", "squamous_cell"]  # fmt: skip
    codes = pd.Series([icd10_for_site(site)[0] for site in sites])
    assert cancer_site_of(codes).tolist() == sites


def test_index_concepts_cover_every_pathway_and_refuse_a_bad_file(tmp_path: Path) -> None:
    pathways = ["breast", "gynaecological", "haematological", "head_and_neck", "lower_gi",
                "lung", "skin", "upper_gi", "urological", "primary_care"]  # fmt: skip
    assert [index_concept_for(p)[1] for p in pathways] == [
        f"2WW-{p}" if p != "primary_care" else "index-test-primary_care" for p in pathways
    ]
    bad = tmp_path / "concepts.csv"
    bad.write_text("vocabulary_id,concept_code,pathway\nSNOMED,123,lung\n")
    with pytest.raises(ConceptSetError, match="concept_name"):
        load_index_concepts(bad)
    bad.write_text("vocabulary_id,concept_code,concept_name,pathway\nS,1,a,lung\nS,1,b,skin\n")
    with pytest.raises(ConceptSetError, match="listed twice"):
        load_index_concepts(bad)


def test_completed_years_counts_the_birthday_and_leap_days() -> None:
    birth = pd.Series([T("1960-03-15"), T("1960-03-15"), T("1960-02-29"), T("1960-02-29")])
    on = pd.Series([T("2020-03-14"), T("2020-03-15"), T("2021-02-28"), T("2021-03-01")])
    assert completed_years(birth, on).tolist() == [59, 60, 60, 61]


def _people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person_id": [1, 2, 3, 4, 5, 6],
            "birth_first": [
                T("1950-06-10"),
                T("1960-01-01"),
                T("1970-05-01"),
                pd.NaT,
                T("1980-01-01"),
                T("1990-01-01"),
            ],
            "birth_last": [
                T("1950-06-10"),
                T("1960-12-31"),
                T("1970-05-31"),
                pd.NaT,
                T("1980-01-01"),
                T("1990-01-01"),
            ],
            "gender": ["female", "male", "female", "male", "unknown", "male"],
        }
    )


def _events() -> pd.DataFrame:
    rows = [
        (10, 1, "2015-06-09", "lower_gi"),  # the day before the 65th birthday
        (11, 1, "2015-06-09", "lower_gi"),  # same person, day, pathway: a duplicate
        (12, 2, "2015-06-30", "lung"),  # year-only birth: read as 1960-07-01 -> 54
        (13, 3, "2015-05-15", "skin"),  # year-month: 1970-05-15 -> 45 on its birthday
        (14, 4, "2015-01-01", "skin"),  # no birth date
        (15, 5, "2015-01-01", "skin"),  # sex unknown
        (16, 6, "2019-06-01", "lung"),  # observation period ends early
        (17, 9, "2015-01-01", "lung"),  # nobody
        (17, 1, "2016-01-01", "lung"),  # a referral id seen before
        (18, 1, "2017-01-01", "breast"),  # after person 1's cancer: prior_cancer
    ]
    frame = pd.DataFrame(rows, columns=["referral_id", "person_id", "index_date", "pathway"])
    return frame.assign(index_date=pd.to_datetime(frame["index_date"]))


def _conditions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person_id": [1, 1, 2, 3],
            "condition_date": [
                T("2016-06-09"),
                T("2016-06-10"),
                T("2015-06-30"),
                T("2016-05-14"),
            ],
            "site": ["colorectal_left", "lung", "lung", "melanoma"],
        }
    )


def _periods() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person_id": [1, 2, 3, 4, 5, 6, 6],
            "start": [T("2010-01-01")] * 7,
            "end": [T("2020-12-31")] * 5 + [T("2012-01-01"), T("2020-05-30")],
        }
    )


def _results(tmp_path: Path) -> Path:
    path = tmp_path / "cohort_results.parquet"
    with ResultsWriter(path) as writer:
        writer.write(pd.DataFrame({
            "patient_id": [1, 1, 1, 2],
            "sample_time": [T("2015-06-01 09:00"), T("2015-06-08 23:59"),
                            T("2015-06-09 00:00"), T("2015-06-29")],
            "code": ["718-7"] * 4, "value": [130.0] * 4, "unit": ["g/L"] * 4,
            "lab": ["lab_a", "lab_b", "lab_c", None],
        }))  # fmt: skip
        writer.write(pd.DataFrame({
            "patient_id": [1], "sample_time": [T("2015-06-08 23:59")], "code": ["718-7"],
            "value": [131.0], "unit": ["g/L"], "lab": ["lab_z"],
        }))  # fmt: skip
    return path


def test_the_index_table_follows_the_documented_rules(tmp_path: Path) -> None:
    exclusions = Exclusions()
    index = build_index(
        _people(), _events(), _conditions(), periods=_periods(), followup_end=None,
        horizon_days=365, results=_results(tmp_path), exclusions=exclusions,
    )  # fmt: skip
    counts = {r["reason"]: r["count"] for r in exclusions.as_list()}
    assert counts == {
        "duplicate_id": 1, "unknown_person": 1, "no_birth_date": 1, "unsupported_sex": 1,
        "duplicate_index_event": 1, "index_before_birth": 0, "no_observation_period": 0,
        "observation_period_ends_early": 1,
    }  # fmt: skip
    # referral 17 of person 9 comes first in date order, so person 1's 17 is the copy (and
    # person 9 is nobody); 16's period ends 2020-05-30, before 2019-06-01 + 365 days
    by_id = index.set_index("referral_id")
    assert sorted(by_id.index) == [10, 12, 13, 18]
    assert by_id.loc[10, "age"] == 64 and by_id.loc[12, "age"] == 54
    assert by_id.loc[13, "age"] == 45
    # 2016-06-09 is 366 days after 2015-06-09 (2016 is a leap year): outside 365 days
    assert by_id.loc[10, "cancer"] == 0 and pd.isna(by_id.loc[10, "diagnosis_date"])
    assert by_id.loc[12, "cancer"] == 1 and by_id.loc[12, "cancer_site"] == "lung"  # same day
    assert by_id.loc[12, "diagnosis_date"] == T("2015-06-30")
    # 2016-05-14 is exactly 365 days after 2015-05-15: the horizon's last day counts
    assert by_id.loc[13, "cancer"] == 1 and by_id.loc[13, "diagnosis_date"] == T("2016-05-14")
    # the lab of the latest result before the index day; a tie goes to the later row
    assert by_id.loc[10, "lab"] == "lab_z"
    assert pd.isna(by_id.loc[12, "lab"])  # its only earlier result names no lab
    assert list(index.columns)[:4] == ["patient_id", "referral_id", "index_date", "pathway"]
    assert index["index_date"].is_monotonic_increasing


def test_without_periods_the_horizon_must_have_elapsed(tmp_path: Path) -> None:
    exclusions = Exclusions()
    events = _events()[lambda f: f["referral_id"].isin([10, 12, 18])]
    index = build_index(
        _people(), events, _conditions(), periods=None, followup_end=date(2016, 12, 31),
        horizon_days=365, results=None, exclusions=exclusions,
    )  # fmt: skip
    assert exclusions.count("index_events", "horizon_not_elapsed") == 1  # 2017-01-01 + 365 d
    assert sorted(index["referral_id"]) == [10, 12]
    with pytest.raises(ValueError, match="followup_end"):
        build_index(_people(), events, _conditions(), periods=None, followup_end=None,
                    horizon_days=365, results=None, exclusions=Exclusions())  # fmt: skip


def test_prior_cancer_is_flagged_not_excluded(tmp_path: Path) -> None:
    periods = _periods().assign(end=T("2030-01-01"))
    index = build_index(
        _people(), _events(), _conditions(), periods=periods, followup_end=None,
        horizon_days=365, results=None, exclusions=Exclusions(),
    )  # fmt: skip
    by_id = index.set_index("referral_id")
    assert bool(by_id.loc[18, "prior_cancer"]) and by_id.loc[18, "cancer"] == 0
    assert not by_id.loc[[10, 12, 13], "prior_cancer"].any()


def test_a_database_password_never_reaches_the_manifest() -> None:
    url = "postgresql+psycopg://triage:s3cret@127.0.0.1:5432/cdm"
    assert mask_url(url) == "postgresql+psycopg://triage:***@127.0.0.1:5432/cdm"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_the_results_writer_refuses_aware_times(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "patient_id": [1], "sample_time": [T("2015-06-01 09:00", tz="UTC")], "code": ["718-7"],
        "value": [1.0], "unit": ["g/L"], "lab": [None],
    })  # fmt: skip
    with ResultsWriter(tmp_path / "r.parquet") as writer, pytest.raises(ValueError, match="naive"):
        writer.write(frame)
