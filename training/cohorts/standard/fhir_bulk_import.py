"""A FHIR Bulk Data export (Flat FHIR: `$export` NDJSON files) -> a long cohort folder.

Files and lines are found and read by `fhir_bulk_files` (the Bulk manifest, else every
`*.ndjson`). Organization, Patient, ServiceRequest and Condition files are read first (they are
small), then Observation files are streamed line by line: results are batched BATCH_ROWS at a
time into `cohort_results.parquet` (`ResultsWriter`), so memory stays flat however many
Observations there are, but for 8 bytes per Observation id kept to spot duplicates.

- Patient -> people: `birthDate` full or partial (`date_spans`; a partial one is read as its
  middle by `build_index`, as the FHIR route does), `gender` as written.
- Observation -> results by the FHIR route's rules (`fhir_bulk_rules`, which lists them): aware
  times become naive local times in `time_zone`, a date alone is 00:00 of that day, a partial
  date is excluded `imprecise_date` (the route places one only when it lies wholly inside its
  single look-back window; a bulk cohort has one window per referral and the results are written
  before the referrals are joined, so it is never placed). `code` is the LOINC code, `unit` as
  written, `lab` the performing Organization's name. An Observation id seen again among the
  usable results is counted `duplicate_id` and skipped: the first in file order is kept (ids are
  compared by their 64-bit hash; with 30 million ids a false match has odds about 1 in 40,000).
- ServiceRequest whose code is in the index concept set -> an index event (index day: the local
  day of `authoredOn`); others are counted `not_an_index_event`; entered-in-error `withdrawn`.
- Condition with an ICD-10 coding of a cancer site (`cancer_site_of`) -> a cancer dated by
  `onsetDateTime` (else `onsetPeriod.start`, else `recordedDate`); refuted or entered-in-error
  verification `refuted`; other codes `not_a_cancer`.
- Patient and ServiceRequest ids become the integer `patient_id`/`referral_id` when every id of
  that type is a plain number; otherwise they are numbered 1, 2, ... in file order.

Then `build_index` (no observation periods in FHIR: outcomes count up to `followup_end`, the
Bulk manifest's `transactionTime` as a local date unless given) and `write_manifest`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.cohorts.standard import INDEX_FILE, RESULTS_FILE, SourceError, check_time_zone
from training.cohorts.standard.concept_sets import cancer_site_of, load_index_concepts
from training.cohorts.standard.fhir_bulk_files import LineReader, bulk_files, resources_of
from training.cohorts.standard.fhir_bulk_rules import (
    ObservationReader,
    coded_as,
    condition_date,
    date_spans,
    icd10_code,
    is_partial,
    local_times,
    subject_id,
    text,
    verification,
    vocabulary_system,
)
from training.cohorts.standard.index_events import build_index
from training.cohorts.standard.manifest import Exclusions, write_manifest
from training.cohorts.standard.results_writer import ResultsWriter
from training.provenance import files_sha256

BATCH_ROWS = 200_000
FIRST_TYPES = ("Organization", "Patient", "ServiceRequest", "Condition")
REQUIRED_TYPES = ("Patient", "ServiceRequest", "Observation")
OBSERVATION_REASONS = {
    "no_id": "no Observation.id",
    "no_subject": "no subject",
    "unknown_patient": "the subject is not a Patient of the export",
    "withdrawn": "status entered-in-error or cancelled",
    "status_not_final": "status not final, amended or corrected",
    "unknown_code": "no LOINC coding the catalogue knows",
    "no_value": "no valueQuantity.value (e.g. a dataAbsentReason)",
    "comparator": "a comparator (<, <=, >=, >): not an exact value",
    "undated": "no readable effective date or time",
    "imprecise_date": "a partial effective date (a year, or a year and month)",
    "no_unit": "neither valueQuantity.code nor valueQuantity.unit",
    "duplicate_id": "an Observation id already read (the first is kept)",
}
RESOURCE_RULES = {
    "no_id": "no id",
    "duplicate_id": "an id already read (the first is kept)",
    "withdrawn": "status entered-in-error",
    "not_an_index_event": "no coding of the index concept set",
    "unknown_patient": "the subject is not a Patient of the export",
    "refuted": "verificationStatus refuted or entered-in-error",
    "not_a_cancer": "no ICD-10 coding of a cancer",
    "imprecise_date": "a partial date (a year, or a year and month)",
    "undated": "no readable date",
}
RULES = {
    "observations": OBSERVATION_REASONS,
    "times": "aware times converted to naive local time in the manifest's time zone; "
    "a date alone is 00:00; a partial date is excluded",
    "units": "valueQuantity.code when its system is UCUM or absent, else valueQuantity.unit",
    "index_events": "ServiceRequests coded with a concept of the index concept set",
    "outcomes": "Conditions with an ICD-10 cancer code (onset, else recorded date)",
}


def import_fhir_bulk(
    folder: Path,
    out: Path,
    *,
    index_concepts: Path | None = None,
    horizon_days: int = 365,
    time_zone: str = "Europe/London",
    followup_end: date | None = None,
) -> dict[str, Any]:
    """Import the export in `folder` into the cohort folder `out`; return its manifest."""
    check_time_zone(time_zone)
    files, transaction_time = bulk_files(folder)
    missing = [kind for kind in REQUIRED_TYPES if kind not in {k for k, _ in files}]
    if missing:
        raise SourceError(
            f"missing_resource_type: {folder} has no {' / '.join(missing)} file; a cohort needs "
            f"{', '.join(REQUIRED_TYPES)} (Condition and Organization are optional)"
        )
    end = followup_end or _local_date(transaction_time, time_zone)
    if end is None:
        raise SourceError(
            f"no_followup_end: {folder} has no Bulk manifest transactionTime; "
            "give the date up to which outcomes are complete (--followup-end)"
        )
    exclusions = Exclusions()
    lines = LineReader(exclusions)
    labs = _organizations(resources_of(files, "Organization", lines))
    people, patients = _patients(resources_of(files, "Patient", lines), exclusions)
    events = _events(
        resources_of(files, "ServiceRequest", lines),
        patients,
        index_concepts,
        time_zone,
        exclusions,
    )
    conditions = _conditions(
        resources_of(files, "Condition", lines), patients, time_zone, exclusions
    )
    out.mkdir(parents=True, exist_ok=True)
    reader = ObservationReader(patients, labs)
    written = _observations(
        resources_of(files, "Observation", lines), reader, out / RESULTS_FILE, time_zone, exclusions
    )
    index = build_index(
        people,
        events,
        conditions,
        periods=None,
        followup_end=end,
        horizon_days=horizon_days,
        results=out / RESULTS_FILE,
        exclusions=exclusions,
    )
    index.to_parquet(out / INDEX_FILE, index=False)
    counts = {
        **{f"{kind}_read": lines.read[kind] for kind in (*FIRST_TYPES, "Observation")},
        "people": len(people),
        "index_events": len(index),
        "cancers": int(index["cancer"].sum()),
        "results": written,
        "followup_end": end.isoformat(),
        "invalid_lines_sample": lines.invalid,
    }
    rules = {**RULES, "horizon_days": horizon_days, "followup_end": end.isoformat()}
    return write_manifest(
        out,
        kind="fhir-bulk",
        location=str(folder),
        source_sha256=files_sha256(
            [p for _, p in files] + [p for p in [folder / "manifest.json"] if p.is_file()]
        ),
        rules=rules,
        exclusions=exclusions,
        counts=counts,
        time_zone=time_zone,
    )


def _local_date(text: str | None, time_zone: str) -> date | None:
    if text is None:
        return None
    moment = local_times(pd.Series([text]), time_zone).iloc[0]
    if pd.isna(moment):
        raise SourceError(f"invalid_manifest: transactionTime {text!r} is not a FHIR instant")
    return pd.Timestamp(moment).date()


def _numbering(ids: pd.Series) -> pd.Series:
    """FHIR ids -> int64: the number itself when every id is a plain number, else 1, 2, ..."""
    plain = ids.str.fullmatch(r"[1-9]\d{0,17}|0").all()
    return ids.astype("int64") if plain else pd.Series(np.arange(1, len(ids) + 1), index=ids.index)


def _first_ids(frame: pd.DataFrame, step: str, exclusions: Exclusions) -> pd.DataFrame:
    """Rows with an id, the first of each id (`no_id`, `duplicate_id` counted under `step`)."""
    frame = _drop(frame, frame["id"].isna() | (frame["id"] == ""), step, "no_id", exclusions)
    return _drop(frame, frame["id"].duplicated(), step, "duplicate_id", exclusions)


def _drop(
    frame: pd.DataFrame, bad: pd.Series, step: str, reason: str, exclusions: Exclusions
) -> pd.DataFrame:
    """The rows not `bad`; the others counted under (step, reason)."""
    bad_rows = bad.fillna(False).to_numpy(bool)
    exclusions.add(step, reason, int(bad_rows.sum()), RESOURCE_RULES[reason])
    return frame[~bad_rows]


# --- Organization, Patient, ServiceRequest, Condition -------------------------------------------


def _organizations(resources: Iterator[dict[str, Any]]) -> dict[str, str]:
    """Organization id -> its name (the id when it has none)."""
    return {str(r["id"]): str(r.get("name") or r["id"]) for r in resources if r.get("id")}


def _patients(
    resources: Iterator[dict[str, Any]], exclusions: Exclusions
) -> tuple[pd.DataFrame, dict[str, int]]:
    """People for `build_index`, and FHIR Patient id -> person_id."""
    rows = [(text(r.get("id")), text(r.get("birthDate")), text(r.get("gender"))) for r in resources]
    frame = pd.DataFrame(rows, columns=["id", "birth", "gender"], dtype="string")
    frame = _first_ids(frame, "patients", exclusions)
    person = _numbering(frame["id"])
    first, last = date_spans(frame["birth"])
    people = pd.DataFrame(
        {
            "person_id": person.to_numpy("int64"),
            "birth_first": first.to_numpy(),
            "birth_last": last.to_numpy(),
            "gender": frame["gender"].astype(object).where(frame["gender"].notna(), None),
        }
    ).reset_index(drop=True)
    return people, dict(zip(frame["id"], person.tolist(), strict=True))


def _events(
    resources: Iterator[dict[str, Any]],
    patients: Mapping[str, int],
    index_concepts: Path | None,
    time_zone: str,
    exclusions: Exclusions,
) -> pd.DataFrame:
    """Index events: ServiceRequests coded with an index concept, dated by authoredOn."""
    concepts = load_index_concepts(index_concepts)
    pathways = {
        (vocabulary_system(vocabulary), code): pathway
        for vocabulary, code, pathway in concepts[
            ["vocabulary_id", "concept_code", "pathway"]
        ].itertuples(index=False)
    }
    rows = [
        (
            text(r.get("id")),
            subject_id(r),
            text(r.get("status")),
            coded_as(r.get("code"), pathways),
            text(r.get("authoredOn")),
        )
        for r in resources
    ]
    frame = pd.DataFrame(
        rows, columns=["id", "subject", "status", "pathway", "when"], dtype="string"
    )
    step = "service_requests"
    frame = _first_ids(frame, step, exclusions)
    frame = frame.assign(referral=_numbering(frame["id"]), person=frame["subject"].map(patients))
    frame = _drop(frame, frame["status"] == "entered-in-error", step, "withdrawn", exclusions)
    frame = _drop(frame, frame["pathway"].isna(), step, "not_an_index_event", exclusions)
    frame = _drop(frame, frame["person"].isna(), step, "unknown_patient", exclusions)
    frame = frame.assign(index_date=_days(frame, step, exclusions, time_zone)).dropna(
        subset=["index_date"]
    )
    return pd.DataFrame(
        {
            "referral_id": frame["referral"].to_numpy("int64"),
            "person_id": frame["person"].to_numpy("int64"),
            "index_date": frame["index_date"].to_numpy("datetime64[ns]"),
            "pathway": frame["pathway"].astype(str).to_numpy(),
        }
    )


def _conditions(
    resources: Iterator[dict[str, Any]],
    patients: Mapping[str, int],
    time_zone: str,
    exclusions: Exclusions,
) -> pd.DataFrame:
    """Cancers: Conditions with an ICD-10 code of a cancer site, dated by onset or record."""
    rows = [
        (
            text(r.get("id")),
            subject_id(r),
            verification(r),
            icd10_code(r.get("code")),
            condition_date(r),
        )
        for r in resources
    ]
    columns = ["id", "subject", "verification", "icd10", "when"]
    frame = pd.DataFrame(rows, columns=columns, dtype="string")
    step = "conditions"
    frame = _first_ids(frame, step, exclusions)
    refuted = frame["verification"].isin(["refuted", "entered-in-error"])
    frame = _drop(frame, refuted, step, "refuted", exclusions)
    frame = frame.assign(site=cancer_site_of(frame["icd10"].fillna("")))
    frame = _drop(frame, frame["site"].isna(), step, "not_a_cancer", exclusions)
    frame = frame.assign(person=frame["subject"].map(patients))
    frame = _drop(frame, frame["person"].isna(), step, "unknown_patient", exclusions)
    frame = frame.assign(day=_days(frame, step, exclusions, time_zone)).dropna(subset=["day"])
    return pd.DataFrame(
        {
            "person_id": frame["person"].to_numpy("int64"),
            "condition_date": frame["day"].to_numpy("datetime64[ns]"),
            "site": frame["site"].astype(str).to_numpy(),
        }
    )


def _days(frame: pd.DataFrame, step: str, exclusions: Exclusions, time_zone: str) -> pd.Series:
    """The local day of each row's `when` (NaT, counted, when partial or missing)."""
    partial = pd.Series(is_partial(frame["when"]), index=frame.index)
    day = local_times(frame["when"].mask(partial), time_zone).dt.normalize()
    _drop(frame, partial, step, "imprecise_date", exclusions)
    _drop(frame, day.isna() & ~partial, step, "undated", exclusions)
    return day


# --- Observation --------------------------------------------------------------------------------


def _observations(
    resources: Iterator[dict[str, Any]],
    reader: ObservationReader,
    path: Path,
    time_zone: str,
    exclusions: Exclusions,
) -> int:
    """Stream Observations into `path`, BATCH_ROWS usable rows at a time; rows written."""
    reasons: Counter[str] = Counter()
    seen = np.empty(0, dtype=np.int64)  # sorted hashes of the ids written so far
    batch: list[tuple[Any, ...]] = []
    with ResultsWriter(path) as writer:
        for resource in resources:
            row = reader.read(resource)
            if isinstance(row, str):
                reasons[row] += 1
                continue
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                seen = _write_batch(batch, seen, writer, time_zone, reasons)
                batch = []
        _write_batch(batch, seen, writer, time_zone, reasons)
        written = writer.rows
    for reason, rule in OBSERVATION_REASONS.items():
        exclusions.add("observations", reason, reasons[reason], rule)
    return written


RESULT_FIELDS = ["id", "patient_id", "code", "value", "unit", "when", "lab"]


def _write_batch(
    batch: list[tuple[Any, ...]],
    seen: np.ndarray[Any, np.dtype[np.int64]],
    writer: ResultsWriter,
    time_zone: str,
    reasons: Counter[str],
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Write one batch (file order kept); the ids seen, with this batch's added."""
    frame = pd.DataFrame.from_records(batch, columns=RESULT_FIELDS)
    hashes = np.fromiter((hash(i) for i in frame["id"]), dtype=np.int64, count=len(frame))
    earlier = np.zeros(len(frame), dtype=bool)
    if len(seen):
        at = np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)
        earlier = seen[at] == hashes
    repeated = earlier | frame["id"].duplicated().to_numpy()
    reasons["duplicate_id"] += int(repeated.sum())
    frame, hashes = frame[~repeated], hashes[~repeated]
    taken = local_times(frame["when"], time_zone)
    dated = taken.notna().to_numpy()
    reasons["undated"] += int((~dated).sum())
    writer.write(frame.assign(sample_time=taken)[dated].drop(columns=["id", "when"]))
    # only written ids count as seen; timsort merges the two sorted runs in linear time
    return np.sort(np.concatenate([seen, np.sort(hashes[dated])]), kind="stable")
