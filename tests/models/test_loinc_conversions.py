"""Every LOINC code's accepted units against figures worked out by hand.

What each code measures (LOINC long names) decides what its units mean: 3094-0 is urea NITROGEN
[Mass/volume], so its mg/dL is mg of nitrogen (28.014 g/mol per urea molecule), not mg of urea
(60.06 g/mol, LOINC 3091-6). The hand figures below come from the molar masses and conventions
named beside them, not from the catalogue, so a wrong factor there fails here.
"""

from __future__ import annotations

from datetime import date

import pytest

from models.analytes import CATALOGUE
from models.units import to_canonical, unit_key
from models.validation import validate_record
from serving.fhir import parse_bundle

# (LOINC, unit) -> (value in that unit, the canonical value worked out by hand)
HAND: dict[tuple[str, str], tuple[float, float]] = {
    ("718-7", "g/dL"): (13.5, 135.0),  # Hb: 1 g/dL = 10 g/L
    ("718-7", "mmol/L"): (8.0, 128.9),  # Hb monomer 16 114.5 g/mol: 8 x 16.11
    ("4544-3", "%"): (45.0, 0.45),  # haematocrit: a volume fraction
    ("789-8", "10*6/uL"): (4.5, 4.5),  # 10^6/uL = 10^12/L
    ("787-2", "um3"): (90.0, 90.0),  # 1 um3 = 1 fL
    ("786-4", "g/dL"): (33.0, 330.0),
    ("777-3", "10*3/uL"): (250.0, 250.0),  # 10^3/uL = 10^9/L
    ("777-3", "/uL"): (250_000.0, 250.0),
    **{(loinc, "10*3/uL"): (7.1, 7.1) for loinc in ("6690-2", "751-8", "731-0", "742-7")},
    **{(loinc, "10*3/uL"): (0.2, 0.2) for loinc in ("711-2", "704-7")},
    ("2951-2", "meq/L"): (140.0, 140.0),  # monovalent: 1 mEq = 1 mmol
    ("2823-3", "meq/L"): (4.2, 4.2),
    # urea: 30 mg/dL of urea = 300 mg/L / 60.06 = 4.995 mmol/L
    ("22664-7", "mg/dL"): (30.0, 4.995),
    ("3091-6", "mg/dL"): (30.0, 4.995),
    # urea nitrogen: 14 mg/dL of N = 140 mg/L / 28.014 g/mol = 4.998 mmol/L of urea
    ("22664-7", "mg/dL{BUN}"): (14.0, 4.998),
    ("3091-6", "mg/dL{BUN}"): (14.0, 4.998),
    ("3094-0", "mg/dL"): (14.0, 4.998),
    ("3094-0", "mg/dL{BUN}"): (14.0, 4.998),
    ("14682-9", "mg/dL"): (1.0, 88.40),  # creatinine 113.12 g/mol: 10 000 / 113.12
    ("2160-0", "mg/dL"): (1.0, 88.40),
    ("1751-7", "g/dL"): (4.0, 40.0),
    ("2885-2", "g/dL"): (7.0, 70.0),
    ("10834-0", "g/dL"): (3.0, 30.0),
    # calcium 40.078 g/mol, divalent (2 mEq = 1 mmol): 10 mg/dL = 2.495 mmol/L
    **{(loinc, "mg/dL"): (10.0, 2.495) for loinc in ("29265-6", "2000-8", "17861-6")},
    **{(loinc, "meq/L"): (5.0, 2.5) for loinc in ("29265-6", "2000-8", "17861-6")},
    # phosphate is reported as phosphorus (30.974 g/mol): 3.1 mg/dL = 1.001 mmol/L
    ("14879-1", "mg/dL"): (3.1, 1.001),
    ("2777-1", "mg/dL"): (3.1, 1.001),
    # enzymes: 1 ukat/L = 1 umol/s/L = 60 umol/min/L = 60 U/L
    **{
        (loinc, "ukat/L"): (1.0, 60.0)
        for loinc in ("6768-6", "1742-6", "1920-8", "2324-2", "2532-0", "14804-9")
    },
    # bilirubin 584.66 g/mol: 1 mg/dL = 10 000 / 584.66 = 17.10 umol/L
    ("14631-6", "mg/dL"): (1.0, 17.10),
    ("1975-2", "mg/dL"): (1.0, 17.10),
    ("1988-5", "mg/dL"): (1.4, 14.0),  # CRP
    ("4691-2", "cP"): (1.6, 1.6),  # 1 cP = 1 mPa.s
    ("2276-4", "ng/mL"): (100.0, 100.0),  # 1 ng/mL = 1 ug/L
    # glucose 180.16 g/mol: 100 mg/dL = 1000 / 180.16 = 5.551 mmol/L
    ("14749-6", "mg/dL"): (100.0, 5.551),
    ("2345-7", "mg/dL"): (100.0, 5.551),
    # HbA1c NGSP % -> IFCC mmol/mol: 10.929 x (6.5 - 2.15) = 47.54 (the 48 mmol/mol threshold)
    ("4548-4", "%"): (6.5, 47.54),
    ("2857-1", "ng/mL"): (4.0, 4.0),
    ("10334-1", "U/mL"): (35.0, 35.0),  # 1 U/mL = 1 kU/L
    ("2039-6", "ng/mL"): (5.0, 5.0),
}

# Units refused under a code although the analyte accepts them under another.
REFUSED: dict[tuple[str, str], str] = {
    ("59261-8", "%"): "IFCC HbA1c: a % could be IFCC % (x10) or NGSP %; not guessed",
}


def _all_loinc() -> list[str]:
    return [code for a in CATALOGUE for code in (a.loinc, *a.alt_loinc)]


def test_every_accepted_unit_of_every_loinc_has_a_hand_figure() -> None:
    accepted = {
        (loinc, unit)
        for loinc in _all_loinc()
        for unit in CATALOGUE.as_measured(loinc).units  # type: ignore[union-attr]
        if unit != CATALOGUE.as_measured(loinc).unit  # type: ignore[union-attr]
    }
    assert accepted - set(HAND) == set(), "a unit accepted without a hand-checked figure"
    assert set(HAND) - accepted == set(), "a hand figure for a unit the code does not accept"


@pytest.mark.parametrize(("loinc", "unit"), sorted(HAND), ids=lambda x: str(x))
def test_conversion_matches_the_hand_figure(loinc: str, unit: str) -> None:
    value, expected = HAND[(loinc, unit)]
    analyte = CATALOGUE.as_measured(loinc)
    assert analyte is not None
    assert to_canonical(analyte, value, unit) == pytest.approx(expected, rel=1e-3), (
        f"{loinc} {value} {unit} should be {expected} {analyte.unit}"
    )


@pytest.mark.parametrize(("loinc", "unit"), sorted(REFUSED))
def test_ambiguous_units_are_refused_under_their_code(loinc: str, unit: str) -> None:
    analyte = CATALOGUE.as_measured(loinc)
    assert analyte is not None
    assert unit_key(unit) not in {unit_key(u) for u in analyte.units}, REFUSED[(loinc, unit)]


def test_bun_is_not_urea() -> None:
    """The issue's reproduction: BUN 14 mg/dL was read as urea (2.33 mmol/L); it is 4.998."""
    bun, urea = CATALOGUE.as_measured("3094-0"), CATALOGUE.as_measured("22664-7")
    assert bun is not None and urea is not None
    assert to_canonical(bun, 14, "mg/dL") == pytest.approx(140 / 28.014, rel=1e-9)
    assert to_canonical(urea, 14, "mg/dL") == pytest.approx(140 / 60.06, rel=1e-9)
    assert to_canonical(bun, 14, "mg/dL") / to_canonical(urea, 14, "mg/dL") == pytest.approx(
        60.06 / 28.014, rel=1e-9
    ), "BUN and urea differ by the nitrogen's share of urea's mass (2.14x)"
    assert to_canonical(bun, 5.0, "mmol/L") == 5.0, "urea nitrogen in moles (N2) is urea in moles"


def test_resolve_keeps_the_entry_and_as_measured_keeps_the_code() -> None:
    for loinc in _all_loinc():
        entry, measured = CATALOGUE.resolve(loinc), CATALOGUE.as_measured(loinc)
        assert entry is not None and measured is not None
        assert entry is CATALOGUE[entry.code], "resolve still returns the catalogue entry"
        assert measured.code == entry.code and measured.limits == entry.limits
    assert CATALOGUE.as_measured("urea") is CATALOGUE["urea"]
    assert CATALOGUE.as_measured("nonsense") is None


def test_a_record_keyed_by_code_keeps_the_loinc_meaning() -> None:
    """What the FHIR reader writes for BUN (`mg/dL{BUN}` under `urea`) converts as BUN."""
    record = {"age": 60, "sex": "male", "analytes": {"urea": {"value": 14, "unit": "mg/dL{BUN}"}}}
    assert validate_record(record).values["urea"] == pytest.approx(4.998, rel=1e-3)


def test_the_json_api_reads_a_loinc_key_under_that_loinc() -> None:
    record = {"age": 60, "sex": "male", "analytes": {"3094-0": {"value": 14, "unit": "mg/dL"}}}
    assert validate_record(record).values["urea"] == pytest.approx(4.998, rel=1e-3)


def test_fhir_bun_observation_is_scored_as_urea_nitrogen() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:p",
                "resource": {
                    "resourceType": "Patient",
                    "id": "p",
                    "gender": "male",
                    "birthDate": "1960-01-01",
                },
            },
            {
                "fullUrl": "urn:uuid:bun",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "3094-0"}]},
                    "subject": {"reference": "urn:uuid:p"},
                    "effectiveDateTime": "2026-11-01",
                    "valueQuantity": {
                        "value": 14,
                        "unit": "mg/dL",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/dL",
                    },
                },
            },
        ],
    }
    request = parse_bundle(bundle, CATALOGUE, as_of=date(2026, 11, 2))
    assert request.record["analytes"] == {"urea": {"value": 14.0, "unit": "mg/dL{BUN}"}}
    assert validate_record(request.record).values["urea"] == pytest.approx(4.998, rel=1e-3)
