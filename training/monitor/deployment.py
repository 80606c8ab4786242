"""A simulated deployment, for rehearsing surveillance before go-live and for testing it: a wide
cohort's referrals sent to a running server as an EHR sends them (one FHIR Bundle each, `asOf` =
the referral day, as an evaluator replaying history), and the registry extract that arrives
later (every recorded diagnosis of those patients, inside the horizon or not).

    .venv/bin/python -m training.monitor.deployment --url http://127.0.0.1:3000 \\
        --cohort var/cohorts/referrals-w2-n300000-s7/referrals_wide.parquet --from 2019-01-01 \\
        --n 5000 --model any_cancer --outcomes /tmp/deployment/outcomes.csv

Patients are referenced as `Patient/p<patient_id>` in both (the Bundle's Patient has that id and
no fullUrl, so the server pseudonymises exactly that text, as the monitor does the outcomes').
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from models.analytes import CATALOGUE


def patient_reference(patient_id: Any) -> str:
    return f"Patient/p{patient_id}"


def referral_bundle(row: pd.Series, as_of: date, sample: date) -> dict[str, Any]:
    """One referral as an EHR would send it: its Patient (born `age` years before `as_of`) and a
    LOINC/UCUM Observation per result, dated `sample`, in the unit the cohort recorded."""
    reference = patient_reference(row["patient_id"])
    birth = as_of.replace(year=as_of.year - int(row["age"]), day=min(as_of.day, 28))
    patient = {"resourceType": "Patient", "id": reference.removeprefix("Patient/"),
               "gender": row["sex"], "birthDate": birth.isoformat()}  # fmt: skip
    entries: list[dict[str, Any]] = [{"resource": patient}]
    for analyte in CATALOGUE:
        code = analyte.code
        if code not in row or pd.isna(row[code]):
            continue
        unit = str(row.get(f"{code}_unit") or analyte.unit)
        entries.append({"resource": {
            "resourceType": "Observation", "id": f"o{row['referral_id']}-{code.replace('_', '-')}",
            "status": "final", "subject": {"reference": reference},
            "code": {"coding": [{"system": "http://loinc.org", "code": analyte.loinc}]},
            "effectiveDateTime": sample.isoformat(),
            "valueQuantity": {"value": float(row[code]), "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit},
        }})  # fmt: skip
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def registry_outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    """The diagnoses a registry would send for these referrals' patients: `patient_reference`,
    `diagnosis_date`, `site`, for every row with a diagnosis date (within the horizon or not)."""
    diagnosed = rows.loc[rows["diagnosis_date"].notna()]
    return pd.DataFrame({
        "patient_reference": [patient_reference(p) for p in diagnosed["patient_id"]],
        "diagnosis_date": pd.to_datetime(diagnosed["diagnosis_date"]).dt.strftime("%Y-%m-%d"),
        "site": diagnosed["cancer_site"].astype("string").fillna(""),
    }).drop_duplicates(ignore_index=True)  # fmt: skip


def send_referrals(
    client: httpx.Client,
    rows: pd.DataFrame,
    model: str,
    *,
    as_of: date | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Any, int]]:
    """POST each row to /v1/fhir/score in order (the trail's order is the cohort's), dated at
    its referral (or at `as_of`, with the blood taken that day); (patient_id, status) each."""
    statuses = []
    for i, (_, row) in enumerate(rows.iterrows()):
        day = as_of or pd.Timestamp(row["index_date"]).date()
        sample = as_of or pd.Timestamp(row["sample_date"]).date()
        params = {"model": model, "pathway": str(row["pathway"]), "asOf": day.isoformat()}
        answer = client.post("/v1/fhir/score", json=referral_bundle(row, day, sample),
                             params=params)  # fmt: skip
        statuses.append((row["patient_id"], answer.status_code))
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1)
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the server (loopback)")
    parser.add_argument("--cohort", type=Path, required=True, help="a wide cohort (Parquet)")
    parser.add_argument("--from", dest="start", type=date.fromisoformat, required=True)
    parser.add_argument("--n", type=int, default=5000, help="referrals, one per patient")
    parser.add_argument("--model", default="any_cancer")
    parser.add_argument("--outcomes", type=Path, required=True, help="registry extract to write")
    args = parser.parse_args()
    cohort = pd.read_parquet(args.cohort)
    later = cohort.loc[pd.to_datetime(cohort["index_date"]).dt.date >= args.start]
    rows = later.drop_duplicates("patient_id").head(args.n)
    headers = {"X-API-Key": os.environ["TRIAGE_API_KEY"]} if "TRIAGE_API_KEY" in os.environ else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        statuses = send_referrals(client, rows, args.model,
                                  progress=lambda n: print(f"{n:,} sent", flush=True))  # fmt: skip
    counts = pd.Series([s for _, s in statuses]).value_counts().sort_index()
    print(
        f"{len(statuses):,} referrals sent: " + ", ".join(f"{n:,} x {s}" for s, n in counts.items())
    )
    args.outcomes.parent.mkdir(parents=True, exist_ok=True)
    extract = registry_outcomes(rows)
    extract.to_csv(args.outcomes, index=False)
    print(f"{len(extract):,} diagnoses -> {args.outcomes}")


if __name__ == "__main__":
    main()
