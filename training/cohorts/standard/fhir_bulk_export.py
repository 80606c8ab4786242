"""A simulated cohort as a FHIR Bulk Data export (Flat FHIR NDJSON plus its `$export` manifest),
the shape an EHR's `$export` hands over, so that `fhir_bulk_import` can be tested end to end.

Files: `Patient`, `Organization` (the labs), `ServiceRequest` (the referrals: the index events,
coded with the pathway's index concept), `Observation` (the lab results) and `Condition` (the
cancers, ICD-10), one resource per line, and `manifest.json` as the Bulk Data spec words it.
Choices an ETL would make, each undone exactly by the importer:

- `birthDate`: the simulator knows ages, not birth dates; the latest date at which every one of
  a patient's referrals has its recorded age (completed years) is written. None -> ValueError.
- Observation codes: a LOINC coding (a lab's local code, e.g. "haemoglobin", mapped to the
  analyte's primary LOINC) and, for a local code, the local code as a second coding
  (`urn:triage:local-test-code`). A unit is a UCUM `code` (with the UCUM system) when it is
  spelt exactly as one of the units the catalogue accepts under that LOINC; otherwise (e.g.
  "×10⁹/L") only the `unit` text is written. Results without a finite value are left out.
- `effectiveDateTime`: the naive local sample time in `time_zone` with its UTC offset; a time in
  the hour skipped in spring does not exist there and is written as the first instant after it.
- Index concepts: a coding whose system is `vocabulary_system(vocabulary_id)`: HL7's URI for
  SNOMED/LOINC/ICD-10, `urn:triage:vocabulary:<id>` for a local vocabulary.
- `transactionTime`: the follow-up end, midnight (local) of the day after the last index day's
  horizon, so every referral's horizon has elapsed by it.
- Organization ids: the lab name with characters a FHIR id may not hold replaced by `-`
  ("lab_a" -> "lab-a"); the name itself is the Organization's `name`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.analytes import CATALOGUE, Catalogue
from training.cohorts.standard.concept_sets import (
    exported_loinc,
    icd10_for_site,
    index_concept_for,
    is_ucum_unit,
)
from training.cohorts.standard.fhir_bulk_rules import (
    ICD10,
    LOCAL_TEST_CODE_SYSTEM,
    LOINC,
    UCUM,
    vocabulary_system,
)
from training.cohorts.standard.index_events import birth_dates
from training.cohorts.standard.manifest import file_sha256

CHUNK_ROWS = 250_000
EXPORT_REQUEST = "https://simulator.triage.invalid/fhir/$export"
LABORATORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
            "display": "Laboratory",
        }
    ]
}
REFERRAL = {
    "coding": [
        {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
    ]
}
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_NOT_ID = re.compile(r"[^A-Za-z0-9\-.]")


def write_fhir_bulk(
    index: pd.DataFrame,
    results: pd.DataFrame,
    out: Path,
    *,
    horizon_days: int = 365,
    time_zone: str = "Europe/London",
) -> dict[str, str]:
    """Write the export into `out` from the native frames (`*_index.parquet`,
    `*_results.parquet`) and return {file name: SHA-256} (the manifest included)."""
    ZoneInfo(time_zone)  # an unknown zone fails here, before any file is written
    out.mkdir(parents=True, exist_ok=True)
    labs = _organization_ids(pd.concat([index["lab"], results["lab"]]).dropna().astype(str))
    writers = {
        "Patient": lambda: _patients(index),
        "Organization": lambda: _organizations(labs),
        "ServiceRequest": lambda: _service_requests(index),
        "Condition": lambda: _conditions(index),
        "Observation": lambda: _observations(results, labs, time_zone, CATALOGUE),
    }
    counts = {kind: _write_lines(out / f"{kind}.ndjson", make()) for kind, make in writers.items()}
    _write_manifest(out, counts, _transaction_time(index, horizon_days, time_zone))
    return {path.name: file_sha256(path) for path in sorted(out.iterdir()) if path.is_file()}


def _write_lines(path: Path, chunks: Iterator[bytes]) -> int:
    """Write chunks of newline-terminated lines; the number of lines written."""
    lines = 0
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            lines += chunk.count(b"\n")
    return lines


def _dumps(resources: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """Small resource types (people, referrals, cancers, labs): one orjson line each."""
    yield b"".join(orjson.dumps(resource) + b"\n" for resource in resources)


# --- Patient, Organization, ServiceRequest, Condition -------------------------------------------


def _patients(index: pd.DataFrame) -> Iterator[bytes]:
    birth = birth_dates(index)
    sex = index.groupby("patient_id", observed=True)["sex"].first().reindex(birth.index)
    days = birth.dt.strftime("%Y-%m-%d")
    return _dumps(
        {"resourceType": "Patient", "id": str(patient), "gender": str(gender), "birthDate": day}
        for patient, gender, day in zip(birth.index, sex, days, strict=True)
    )


def _organization_ids(labs: pd.Series) -> dict[str, str]:
    """Lab name -> Organization id (ValueError when two names would share an id)."""
    names = sorted(pd.unique(labs))
    ids = {name: _NOT_ID.sub("-", name)[:64] for name in names}
    if len(set(ids.values())) < len(ids):
        raise ValueError(f"lab names {names} do not give distinct FHIR ids")
    return ids


def _organizations(labs: dict[str, str]) -> Iterator[bytes]:
    return _dumps(
        {"resourceType": "Organization", "id": id_, "name": name} for name, id_ in labs.items()
    )


def _service_requests(index: pd.DataFrame) -> Iterator[bytes]:
    concepts = {p: index_concept_for(p) for p in pd.unique(index["pathway"].astype(str))}
    rows = zip(
        index["referral_id"],
        index["patient_id"],
        index["pathway"].astype(str),
        pd.to_datetime(index["index_date"]).dt.strftime("%Y-%m-%d"),
        strict=True,
    )
    return _dumps(
        {
            "resourceType": "ServiceRequest",
            "id": str(referral),
            "status": "completed",
            "intent": "order",
            "category": [REFERRAL],
            "code": {
                "coding": [
                    {
                        "system": vocabulary_system(concepts[pathway][0]),
                        "code": concepts[pathway][1],
                        "display": concepts[pathway][2],
                    }
                ]
            },
            "subject": {"reference": f"Patient/{patient}"},
            "authoredOn": day,
        }
        for referral, patient, pathway, day in rows
    )


def _conditions(index: pd.DataFrame) -> Iterator[bytes]:
    """One Condition per distinct cancer (patient, site, diagnosis day)."""
    cancers = index.loc[index["cancer"] == 1, ["patient_id", "cancer_site", "diagnosis_date"]]
    cancers = cancers.assign(
        cancer_site=cancers["cancer_site"].astype(str),
        diagnosis_date=pd.to_datetime(cancers["diagnosis_date"]),
    )
    cancers = cancers.drop_duplicates().sort_values(["patient_id", "diagnosis_date"])
    codes = {site: icd10_for_site(site) for site in pd.unique(cancers["cancer_site"])}
    rows = zip(
        cancers["patient_id"],
        cancers["cancer_site"],
        cancers["diagnosis_date"].dt.strftime("%Y-%m-%d"),
        strict=True,
    )
    return _dumps(
        {
            "resourceType": "Condition",
            "id": f"{patient}-{number}",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "verificationStatus": {
                "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]
            },
            "code": {
                "coding": [{"system": ICD10, "code": codes[site][0], "display": codes[site][1]}]
            },
            "subject": {"reference": f"Patient/{patient}"},
            "onsetDateTime": day,
        }
        for number, (patient, site, day) in enumerate(rows)
    )


# --- Observation: built column-wise with Arrow --------------------------------------------------


def _observations(
    results: pd.DataFrame, labs: dict[str, str], time_zone: str, catalogue: Catalogue
) -> Iterator[bytes]:
    """Observation lines, CHUNK_ROWS at a time; each line joined from per-row strings (id,
    subject, time, value) and per-distinct-value JSON fragments (code, unit, performer)."""
    results = results[np.isfinite(results["value"].to_numpy("float64"))]
    for start in range(0, len(results), CHUNK_ROWS):
        chunk = results.iloc[start : start + CHUNK_ROWS]
        ids = pa.array(np.arange(start, start + len(chunk)).astype(str), pa.string())
        codes = chunk["code"].astype(str)
        units = chunk["unit"].astype("string")
        coded = _fragments(codes, lambda c: _code_json(c, catalogue))
        quantity = _fragments(
            codes + "\x00" + units.fillna(""), lambda key: _quantity_json(key, catalogue)
        )
        performer = _fragments(
            chunk["lab"].astype("string").fillna(""), lambda lab: _performer(lab, labs)
        )
        values = orjson.dumps(chunk["value"].to_numpy("float64"), option=orjson.OPT_SERIALIZE_NUMPY)
        parts = [
            '{"resourceType":"Observation","id":"',
            ids,
            '","status":"final","category":[' + orjson.dumps(LABORATORY).decode() + '],"code":',
            coded,
            ',"subject":{"reference":"Patient/',
            pa.array(chunk["patient_id"].astype(str), pa.string()),
            '"},"effectiveDateTime":"',
            _aware_times(chunk["sample_time"], time_zone),
            '"',
            performer,
            ',"valueQuantity":{"value":',
            pa.array(values[1:-1].decode().split(","), pa.string()),
            quantity,
            "}}\n",
        ]
        yield _concatenated(pc.binary_join_element_wise(*parts, ""))


def _fragments(keys: pd.Series, make: Any) -> pa.Array:
    """`make(key)` for each distinct key, spread to the rows (one call per distinct value)."""
    positions, uniques = pd.factorize(keys)
    return pa.array(np.array([make(k) for k in uniques], dtype=object)[positions], pa.string())


def _code_json(code: str, catalogue: Catalogue) -> str:
    analyte = catalogue.resolve(code)
    if analyte is None:  # not a catalogue test: only the local code (the importer skips it)
        return orjson.dumps({"coding": [{"system": LOCAL_TEST_CODE_SYSTEM, "code": code}]}).decode()
    loinc = exported_loinc(code, catalogue)
    codings = [{"system": LOINC, "code": loinc, "display": analyte.name}]
    if loinc != code:
        codings.append({"system": LOCAL_TEST_CODE_SYSTEM, "code": code})
    return orjson.dumps({"coding": codings}).decode()


def _quantity_json(key: str, catalogue: Catalogue) -> str:
    """`,"unit":...` (+ UCUM system and code when the unit is a UCUM code of that LOINC) for a
    `code NUL unit` key."""
    code, _, unit = key.partition("\x00")
    if not unit:
        return ""
    quantity: dict[str, str] = {"unit": unit}
    if is_ucum_unit(exported_loinc(code, catalogue) or code, unit, catalogue):
        quantity.update(system=UCUM, code=unit)
    return "," + orjson.dumps(quantity).decode()[1:-1]


def _performer(lab: str, labs: dict[str, str]) -> str:
    if not lab:
        return ""
    reference = {"reference": f"Organization/{labs[lab]}", "display": lab}
    return ',"performer":[' + orjson.dumps(reference).decode() + "]"


def _aware_times(naive_local: pd.Series, time_zone: str) -> pa.Array:
    """Naive local times as `YYYY-MM-DDThh:mm:ss±hh:mm` (the repeated autumn hour read as
    summer time; the skipped spring hour moved to the first instant after it)."""
    local = pd.DatetimeIndex(pd.to_datetime(naive_local))
    aware = local.tz_localize(
        time_zone, ambiguous=np.ones(len(local), bool), nonexistent="shift_forward"
    )
    wall = aware.tz_localize(None)
    minutes = ((wall - aware.tz_convert(None)) // pd.Timedelta(minutes=1)).to_numpy()
    positions, distinct = pd.factorize(minutes)  # a handful of offsets: each formatted once
    offsets = np.array([_offset_text(int(m)) for m in distinct], dtype=str)[positions]
    text = np.char.add(np.datetime_as_string(wall.to_numpy("datetime64[s]"), unit="s"), offsets)
    return pa.array(text.tolist(), pa.string())


def _offset_text(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _concatenated(lines: pa.Array) -> bytes:
    """The bytes of a string array's values, back to back (each already ends in a newline)."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset :]
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[len(lines)]]


# --- the $export manifest -----------------------------------------------------------------------


def _transaction_time(index: pd.DataFrame, horizon_days: int, time_zone: str) -> str:
    last = pd.to_datetime(index["index_date"]).max().normalize()
    end = (last + pd.Timedelta(days=horizon_days + 1)).tz_localize(time_zone)
    return end.isoformat()


def _write_manifest(out: Path, counts: dict[str, int], transaction_time: str) -> None:
    manifest = {
        "transactionTime": transaction_time,
        "request": EXPORT_REQUEST,
        "requiresAccessToken": False,
        "output": [
            {"type": kind, "url": f"{kind}.ndjson", "count": n} for kind, n in counts.items()
        ],
        "error": [],
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
