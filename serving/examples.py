"""Example requests: one made-up patient, as JSON for /v1/score and as a FHIR R4 Bundle.

The patient is invented (no real record): a 71-year-old man referred on the lower GI pathway with
microcytic anaemia (Hb reported in g/dL), thrombocytosis and a raised CRP. The full blood count is
complete and self-consistent (MCHC = MCH / MCV, haematocrit = Hb / MCHC, red cells = Hb / MCH),
because the models require every input they never saw missing in training. The blood was taken a
week before today, so the example stays inside the 90-day look-back window whenever it is run.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from models.analytes import CATALOGUE

EXAMPLE_PATIENT: dict[str, Any] = {
    "model": "lower_gi",
    "age": 71,
    "sex": "male",
    "patient_reference": "example-patient-0001",
    "sample_date": (datetime.now(UTC).date() - timedelta(days=7)).isoformat(),
    "analytes": {
        "haemoglobin": {"value": 10.9, "unit": "g/dL"},
        "mcv": {"value": 76, "unit": "fL"},
        "mch": {"value": 24.8, "unit": "pg"},
        "mchc": {"value": 326, "unit": "g/L"},
        "haematocrit": {"value": 0.334, "unit": "L/L"},
        "rbc": {"value": 4.4, "unit": "10*12/L"},
        "rdw": {"value": 16.8, "unit": "%"},
        "mpv": {"value": 9.8, "unit": "fL"},
        "platelets": {"value": 455, "unit": "10*9/L"},
        "wbc": {"value": 7.1, "unit": "10*9/L"},
        "neutrophils": {"value": 4.6, "unit": "10*9/L"},
        "lymphocytes": {"value": 1.7, "unit": "10*9/L"},
        "monocytes": {"value": 0.6, "unit": "10*9/L"},
        "eosinophils": {"value": 0.2, "unit": "10*9/L"},
        "basophils": {"value": 0.05, "unit": "10*9/L"},
        "sodium": {"value": 139, "unit": "mmol/L"},
        "potassium": {"value": 4.4, "unit": "mmol/L"},
        "urea": {"value": 5.9, "unit": "mmol/L"},
        "creatinine": {"value": 88, "unit": "umol/L"},
        "albumin": {"value": 36, "unit": "g/L"},
        "alp": {"value": 96, "unit": "U/L"},
        "crp": {"value": 14, "unit": "mg/L"},
    },
}


def fhir_bundle(patient: dict[str, Any] = EXAMPLE_PATIENT) -> dict[str, Any]:
    """The same patient as a FHIR R4 collection Bundle (Patient + LOINC/UCUM Observations)."""
    sampled = date.fromisoformat(patient["sample_date"])
    birth = _years_before(sampled, int(patient["age"]))
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:patient-0001",
            "resource": {
                "resourceType": "Patient",
                "id": "patient-0001",
                "gender": patient["sex"],
                "birthDate": birth.isoformat(),
            },
        }
    ]
    for i, (code, result) in enumerate(patient["analytes"].items(), start=1):
        analyte = CATALOGUE[code]
        entries.append(
            {
                "fullUrl": f"urn:uuid:observation-{i:04d}",
                "resource": {
                    "resourceType": "Observation",
                    "id": f"observation-{i:04d}",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": analyte.loinc,
                             "display": analyte.name}
                        ]
                    },
                    "subject": {"reference": "urn:uuid:patient-0001"},
                    "effectiveDateTime": patient["sample_date"],
                    "valueQuantity": {
                        "value": result["value"],
                        "unit": result["unit"],
                        "system": "http://unitsofmeasure.org",
                        "code": result["unit"],
                    },
                },
            }
        )  # fmt: skip
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _years_before(day: date, years: int) -> date:
    """The same calendar day `years` earlier (28 February for a 29 February without a leap)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)
