"""From what a source says about people, index events, cancers and follow-up to the cohort's
index table: one set of rules for every importer (OMOP CDM, FHIR Bulk Data).

The rules, in the order they run (each excluded event is counted in the manifest under step
`index_events` and its coded reason; nothing is dropped silently):

1. `duplicate_id`: a second event with a referral id already seen (the first is kept).
2. `unknown_person`: the event's person is not in the source's people.
3. `no_birth_date`: the person has no birth year. A partial birth date (a year, or a year and
   month) is read as its middle, 1 July or the 15th, as the FHIR route reads `birthDate`.
4. `unsupported_sex`: the recorded sex is neither male nor female (the models learnt those two).
5. `duplicate_index_event`: the same person, day and pathway again (the lowest referral id kept).
6. `index_before_birth`: the index day precedes the birth date.
7. Follow-up, so that "no cancer" means no cancer: with observation periods (OMOP), the period
   holding the index day must reach `horizon_days` after it (`no_observation_period`,
   `observation_period_ends_early`); without them (FHIR Bulk), the horizon must end on or before
   `followup_end`, the date up to which the source is complete (`horizon_not_elapsed`).

Then, per event: `age` in completed years on the index day (the birthday itself counts);
`cancer` = 1 when a cancer condition is dated on the index day or within `horizon_days` after it
(`diagnosis_date` and `cancer_site`: the earliest such, ties to the first site in name order);
`prior_cancer` when a cancer is dated before the index day (flagged, not excluded: whether a
history of cancer excludes a referral is a cohort decision); `lab`: the lab of the person's latest
result taken before the index day (results on the index day itself are after the decision).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from training.cohorts.standard.manifest import Exclusions

STEP = "index_events"
SEXES = ("male", "female")
INDEX_COLUMNS = (
    "patient_id", "referral_id", "index_date", "pathway", "lab", "age", "sex",
    "cancer", "cancer_site", "diagnosis_date", "prior_cancer",
)  # fmt: skip


def build_index(
    people: pd.DataFrame,
    events: pd.DataFrame,
    conditions: pd.DataFrame,
    *,
    periods: pd.DataFrame | None,
    followup_end: date | None,
    horizon_days: int,
    results: Path | None,
    exclusions: Exclusions,
) -> pd.DataFrame:
    """The index table (columns `INDEX_COLUMNS`, sorted by index day then referral id) from the
    plain frames an importer read (the module docstring gives the rules)."""
    if periods is None and followup_end is None:
        raise ValueError("without observation periods, followup_end is required")
    events = _events(events)
    events = _keep(events, ~events["referral_id"].duplicated(), "duplicate_id",
                   "an event whose referral id was already seen", exclusions)  # fmt: skip
    people = people.drop_duplicates("person_id", keep="first")
    merged = events.merge(people, on="person_id", how="left", indicator=True, validate="m:1")
    merged = _keep(merged, merged["_merge"] == "both", "unknown_person",
                   "the event's person is not among the source's people", exclusions)  # fmt: skip
    merged = _keep(merged, merged["birth_first"].notna(), "no_birth_date",
                   "no year of birth", exclusions)  # fmt: skip
    merged = _keep(merged, merged["gender"].isin(SEXES), "unsupported_sex",
                   "sex neither male nor female", exclusions)  # fmt: skip
    repeat = merged.sort_values("referral_id", kind="stable").duplicated(
        ["person_id", "index_date", "pathway"]
    )
    merged = _keep(merged, ~repeat.reindex(merged.index), "duplicate_index_event",
                   "the same person, day and pathway as an earlier event", exclusions)  # fmt: skip
    birth = _birth_dates(merged["birth_first"], merged["birth_last"])
    merged = merged.assign(age=completed_years(birth, merged["index_date"]))
    merged = _keep(merged, merged["age"] >= 0, "index_before_birth",
                   "the index day precedes the birth date", exclusions)  # fmt: skip
    merged = _followed_up(merged, periods, followup_end, horizon_days, exclusions)
    index = _outcomes(merged, conditions, horizon_days)
    index["lab"] = _labs(index, results) if results is not None else pd.NA
    index = index.rename(columns={"person_id": "patient_id", "gender": "sex"})
    index["sex"] = pd.Categorical(index["sex"], categories=list(SEXES))
    for column in ("pathway", "lab", "cancer_site"):
        index[column] = index[column].astype("string").astype("category")
    return index[list(INDEX_COLUMNS)].reset_index(drop=True)


def _events(events: pd.DataFrame) -> pd.DataFrame:
    frame = events[["referral_id", "person_id", "index_date", "pathway"]].copy()
    frame["referral_id"] = frame["referral_id"].astype("int64")
    frame["person_id"] = frame["person_id"].astype("int64")
    frame["index_date"] = (
        pd.to_datetime(frame["index_date"]).dt.normalize().astype("datetime64[ns]")
    )
    frame["pathway"] = frame["pathway"].astype(str)
    return frame.sort_values(["index_date", "referral_id"], kind="stable").reset_index(drop=True)


def _keep(
    frame: pd.DataFrame, keep: pd.Series, reason: str, rule: str, exclusions: Exclusions
) -> pd.DataFrame:
    keep = keep.fillna(False).astype(bool)
    exclusions.add(STEP, reason, int((~keep).sum()), rule)
    return frame[keep.to_numpy()]


def _birth_dates(first: pd.Series, last: pd.Series) -> pd.Series:
    """The birth date used for age: itself when full; the middle of a partial one (1 July of a
    year; the 15th of a month), as `serving.fhir` reads a partial `birthDate`."""
    first, last = pd.to_datetime(first), pd.to_datetime(last)
    whole_year = (
        (first.dt.month == 1)
        & (first.dt.day == 1)
        & (last.dt.month == 12)
        & (last.dt.day == 31)
        & (first.dt.year == last.dt.year)
    )
    month = ~whole_year & (first != last)
    middle = first.copy()
    middle[whole_year] = first[whole_year] + pd.DateOffset(months=6)
    middle[month] = first[month] + pd.Timedelta(days=14)
    return middle


def completed_years(birth: pd.Series, on: pd.Series) -> pd.Series:
    """Age in whole years on a day (the birthday itself counts), vectorised."""
    birth, on = pd.to_datetime(birth), pd.to_datetime(on)
    before_birthday = (on.dt.month < birth.dt.month) | (
        (on.dt.month == birth.dt.month) & (on.dt.day < birth.dt.day)
    )
    return (on.dt.year - birth.dt.year - before_birthday.astype(int)).astype("int64")


def _followed_up(
    frame: pd.DataFrame,
    periods: pd.DataFrame | None,
    followup_end: date | None,
    horizon_days: int,
    exclusions: Exclusions,
) -> pd.DataFrame:
    horizon_end = frame["index_date"] + pd.Timedelta(days=horizon_days)
    if periods is None:
        assert followup_end is not None  # build_index checked it
        end = pd.Timestamp(followup_end)
        return _keep(frame, horizon_end <= end, "horizon_not_elapsed",
                     f"the {horizon_days}-day horizon ends after the source's follow-up "
                     f"end {end.date()}", exclusions)  # fmt: skip
    spans = periods[["person_id", "start", "end"]].astype(
        {"person_id": "int64", "start": "datetime64[ns]", "end": "datetime64[ns]"}
    )
    pairs = frame[["person_id", "index_date"]].reset_index().merge(spans, on="person_id")
    holding = pairs[(pairs["start"] <= pairs["index_date"]) & (pairs["index_date"] <= pairs["end"])]
    reach = holding.groupby("index")["end"].max().reindex(frame.index)
    frame = _keep(frame, reach.notna(), "no_observation_period",
                  "no observation period holds the index day", exclusions)  # fmt: skip
    reach, horizon_end = reach[frame.index], horizon_end[frame.index]
    return _keep(frame, reach >= horizon_end, "observation_period_ends_early",
                 f"the observation period ends before the {horizon_days}-day horizon",
                 exclusions)  # fmt: skip


def _outcomes(frame: pd.DataFrame, conditions: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """cancer / cancer_site / diagnosis_date / prior_cancer per event (module docstring)."""
    frame = frame.reset_index(drop=True)
    cancers = conditions[["person_id", "condition_date", "site"]].dropna()
    cancers = cancers.astype({"person_id": "int64", "condition_date": "datetime64[ns]"})
    cancers["condition_date"] = cancers["condition_date"].dt.normalize()
    pairs = frame[["person_id", "index_date"]].reset_index().merge(cancers, on="person_id")
    delay = pairs["condition_date"] - pairs["index_date"]
    within = pairs[(delay >= pd.Timedelta(0)) & (delay <= pd.Timedelta(days=horizon_days))]
    first = (
        within.sort_values(["index", "condition_date", "site"], kind="stable")
        .drop_duplicates("index")
        .set_index("index")
    )
    prior = pairs.loc[delay < pd.Timedelta(0), "index"].unique()
    frame["cancer"] = frame.index.isin(first.index).astype(np.int8)
    frame["cancer_site"] = first["site"].reindex(frame.index)
    frame["diagnosis_date"] = first["condition_date"].reindex(frame.index).astype("datetime64[ns]")
    frame["prior_cancer"] = frame.index.isin(prior)
    return frame


def _labs(index: pd.DataFrame, results: Path) -> pd.Series:
    """The lab of each event's person's latest result before the index day, read row group by
    row group (constant memory); a later row wins a tie in time, as in the as-of rule."""
    events = index[["person_id", "index_date"]].reset_index().sort_values("index_date")
    best_time = pd.Series(pd.NaT, index=index.index, dtype="datetime64[ns]")
    best_lab = pd.Series(pd.NA, index=index.index, dtype="object")
    columns = ["patient_id", "sample_time", "lab"]
    parquet = pq.ParquetFile(results)
    for group in range(parquet.num_row_groups):
        batch = parquet.read_row_group(group, columns=columns).to_pandas()
        batch = batch[batch["lab"].notna()].rename(columns={"patient_id": "person_id"})
        batch["sample_time"] = batch["sample_time"].astype("datetime64[ns]")
        batch = batch.sort_values("sample_time", kind="stable")
        found = pd.merge_asof(
            events, batch, left_on="index_date", right_on="sample_time", by="person_id",
            allow_exact_matches=False, direction="backward",
        ).set_index("index")  # fmt: skip
        newer = found["sample_time"].notna() & ~(found["sample_time"] < best_time[found.index])
        rows = found.index[newer.to_numpy()]
        best_time[rows] = found.loc[rows, "sample_time"]
        best_lab[rows] = found.loc[rows, "lab"]
    return best_lab


def birth_dates(index: pd.DataFrame) -> pd.Series:
    """Per patient (indexed by patient_id), a birth date at which each of their referrals has its
    recorded `age` in completed years on its index day: the latest such date (what an exporter
    writes for a simulated cohort, which records ages, not birth dates). ValueError when a
    patient's ages contradict each other."""
    day = pd.to_datetime(index["index_date"]).dt.normalize()
    year = day.dt.year - index["age"].astype("int64")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    feb29 = (day.dt.month == 2) & (day.dt.day == 29) & ~leap  # -> 28 Feb in a common year
    latest = pd.to_datetime(
        pd.DataFrame({"year": year, "month": day.dt.month, "day": day.dt.day - feb29})
    )
    birth = latest.groupby(index["patient_id"].to_numpy()).min()
    check = completed_years(
        birth.reindex(index["patient_id"]).reset_index(drop=True), day.reset_index(drop=True)
    )
    wrong = check.to_numpy() != index["age"].to_numpy("int64")
    if wrong.any():
        first = index.iloc[int(np.flatnonzero(wrong)[0])]
        raise ValueError(
            f"{int(wrong.sum())} referrals' ages cannot come from one birth date per patient "
            f"(e.g. patient {first['patient_id']}, age {first['age']} on {first['index_date']})"
        )
    return birth
