"""Unit conversion: hand-computed factors, spellings, round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.analytes import CATALOGUE
from models.units import (
    UnknownUnitError,
    alternative_readings,
    from_canonical,
    match_unit,
    to_canonical,
)


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected", "places"),
    [
        ("haemoglobin", 9.8, "g/dL", 98.0, 9),
        ("calcium", 10.0, "mg/dL", 2.495, 3),  # 10 mg/dL / 40.078 g/mol * 10
        ("calcium_adjusted", 10.0, "mg/dL", 2.495, 3),
        ("creatinine", 1.0, "mg/dL", 88.4, 1),  # 10,000 / 113.12
        ("glucose", 180.0, "mg/dL", 9.99, 2),  # 1,800 / 180.16
        ("bilirubin", 1.0, "mg/dL", 17.10, 2),  # 10,000 / 584.66
        ("phosphate", 3.1, "mg/dL", 1.00, 2),  # 31 / 30.974
        ("urea", 30.0, "mg/dL", 5.00, 2),  # 300 / 60.06
        ("urea", 14.0, "mg/dL{BUN}", 5.00, 2),  # 140 / 28.014 (urea nitrogen)
        ("hba1c", 7.0, "%", 53.0, 1),  # IFCC = 10.929 (% - 2.15)
        ("haematocrit", 42.0, "%", 0.42, 9),
        ("platelets", 250_000, "/uL", 250.0, 9),
        ("alt", 0.5, "ukat/L", 30.0, 9),
        ("crp", 2.7, "mg/dL", 27.0, 9),
    ],
)
def test_hand_computed_conversions(
    code: str, value: float, unit: str, expected: float, places: int
) -> None:
    got = to_canonical(CATALOGUE[code], value, unit)
    assert round(got, places) == pytest.approx(expected), f"{value} {unit} of {code} -> {got}"


@pytest.mark.parametrize(
    ("code", "spelling", "canonical_spelling"),
    [
        ("haemoglobin", "g/dl", "g/dL"),
        ("haemoglobin", " G/DL ", "g/dL"),
        ("platelets", "10*9/L", "10*9/L"),
        ("platelets", "x10^9/L", "10*9/L"),
        ("platelets", "10^9/L", "10*9/L"),
        ("platelets", "×10⁹/L", "10*9/L"),
        ("platelets", "10e9/l", "10*9/L"),
        ("wbc", "x10^3/uL", "10*3/uL"),
        ("rbc", "x10^12/L", "10*12/L"),
        ("creatinine", "umol/L", "umol/L"),
        ("creatinine", "µmol/L", "umol/L"),
        ("creatinine", "μmol/l", "umol/L"),
        ("alt", "IU/L", "U/L"),
        ("esr", "mm/hr", "mm/h"),
        ("plasma_viscosity", "mPa·s", "mPa.s"),
        ("ca125", "kU/L", "k[U]/L"),
        ("egfr", "mL/min/1.73m2", "mL/min/{1.73_m2}"),
        ("sodium", "mEq/L", "meq/L"),
    ],
)
def test_common_spellings_are_accepted(code: str, spelling: str, canonical_spelling: str) -> None:
    assert match_unit(CATALOGUE[code], spelling).unit == canonical_spelling


def test_unknown_unit_names_the_accepted_ones() -> None:
    with pytest.raises(UnknownUnitError) as raised:
        to_canonical(CATALOGUE["haemoglobin"], 12.0, "mg/L")
    message = str(raised.value)
    assert "'mg/L'" in message and "g/dL" in message and "g/L" in message, message


def test_bun_and_urea_mass_units_are_distinct() -> None:
    urea = CATALOGUE["urea"]
    assert match_unit(urea, "mg/dL").unit != match_unit(urea, "mg/dL{BUN}").unit


def test_alternative_readings_give_the_unit_hint() -> None:
    readings = dict(alternative_readings(CATALOGUE["haemoglobin"], 9.8, "g/L"))
    assert readings["g/dL"] == pytest.approx(98.0), "9.8 declared g/L reads as 9.8 g/dL = 98 g/L"


_PAIRS = [(a, u) for a in CATALOGUE for u in a.units]


@given(
    pair=st.sampled_from(_PAIRS),
    fraction=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_round_trip_through_any_accepted_unit_is_identity(pair, fraction: float) -> None:  # type: ignore[no-untyped-def]
    analyte, unit = pair
    low, high = analyte.limits.low or 0.0, analyte.limits.high or 1.0
    canonical = low + fraction * (high - low)
    there = from_canonical(analyte, canonical, unit)
    back = to_canonical(analyte, there, unit)
    assert back == pytest.approx(canonical, rel=1e-12, abs=1e-12), (
        f"{analyte.code}: {canonical} -> {there} {unit} -> {back}"
    )
