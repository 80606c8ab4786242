"""Validation: every issue code, the unit hint, and frame == record-by-record."""

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.analytes import CATALOGUE
from models.validation import ISSUE_CODES, Eligibility, Issue, validate_frame, validate_record

FBC = {"haemoglobin": {"value": 140, "unit": "g/L"}, "wbc": 7.0, "platelets": 250}
REQUIRE_FBC = Eligibility(min_age=40, max_age=100, required_panels=("fbc",))


def _record(analytes: dict[str, Any], age: Any = 60, sex: Any = "female") -> dict[str, Any]:
    return {"age": age, "sex": sex, "analytes": analytes}


# One record per issue code that must raise it; the test below checks every code is covered.
CASES: dict[str, tuple[dict[str, Any], Eligibility | None]] = {
    "unknown_field": (_record({"serum_unobtainium": 1.0}), None),
    "duplicate_analyte": (_record({"haemoglobin": 140, "718-7": 141}), None),
    "not_a_number": (_record({"sodium": {"value": "high", "unit": "mmol/L"}}), None),
    "unknown_unit": (_record({"haemoglobin": {"value": 140, "unit": "mg/L"}}), None),
    "out_of_limits": (_record({"haemoglobin": {"value": 9.8, "unit": "g/L"}}), None),
    "age_out_of_range": (_record(FBC, age=35), REQUIRE_FBC),
    "invalid_sex": (_record({}, sex="unknown"), None),
    "missing_required_panel": (_record({"haemoglobin": 140}), REQUIRE_FBC),
    "missing_required_analyte": (
        _record(FBC),
        Eligibility(required_analytes=("crp",)),
    ),
    "unit_converted": (_record({"haemoglobin": {"value": 9.8, "unit": "g/dL"}}), None),
    "unit_assumed": (_record({"sodium": 140}), None),
    "ambiguous_unit": (_record({"crp": {"value": 2.7, "unit": "mg/dL"}}), None),
    "differential_exceeds_wbc": (
        _record({"wbc": 5.0, "neutrophils": 4.0, "lymphocytes": 2.0}),
        None,
    ),
    "albumin_exceeds_total_protein": (_record({"albumin": 45, "total_protein": 40}), None),
    "mch_inconsistent": (_record({"haemoglobin": 140, "rbc": 4.7, "mch": 36.0}), None),
    "globulin_inconsistent": (
        _record({"albumin": 40, "total_protein": 70, "globulin": 20}),
        None,
    ),
    "possible_haemolysis": (_record({"potassium": 6.8}), None),
}


def test_every_issue_code_has_a_case() -> None:
    assert set(CASES) == set(ISSUE_CODES), "each issue code needs a test case that raises it"


@pytest.mark.parametrize("code", sorted(ISSUE_CODES))
def test_issue_code_is_raised(code: str) -> None:
    record, eligibility = CASES[code]
    result = validate_record(record, eligibility=eligibility)
    codes = [i.code for i in result.issues]
    assert code in codes, f"{code} expected, got {codes}"
    severity = ISSUE_CODES[code][0]
    assert result.eligible == (severity == "warning" and not result.errors), (
        "an error makes the record ineligible; a warning alone does not"
    )


# Frames are keyed by catalogue code: a column cannot be unknown or repeated.
RECORD_ONLY = {"unknown_field", "duplicate_analyte"}


@pytest.mark.parametrize("code", sorted(set(ISSUE_CODES) - RECORD_ONLY))
def test_issue_code_is_raised_by_the_frame_path_too(code: str) -> None:
    record, eligibility = CASES[code]
    frame = _frame_from_records([record])
    assert code in set(validate_frame(frame, eligibility=eligibility).issues["code"])


def test_clean_record_has_no_issue() -> None:
    record = _record(
        {
            "haemoglobin": {"value": 138, "unit": "g/L"},
            "rbc": {"value": 4.6, "unit": "10*12/L"},
            "mch": {"value": 30.0, "unit": "pg"},
            "wbc": {"value": 6.5, "unit": "10*9/L"},
            "neutrophils": {"value": 4.0, "unit": "10*9/L"},
            "lymphocytes": {"value": 2.0, "unit": "10*9/L"},
            "platelets": {"value": 260, "unit": "10*9/L"},
        }
    )
    result = validate_record(record, eligibility=REQUIRE_FBC)
    assert result.issues == (), f"a clean record raises nothing, got {result.issues}"
    assert result.eligible


def test_declared_unit_is_never_silently_changed() -> None:
    result = validate_record(_record({"haemoglobin": {"value": 9.8, "unit": "g/L"}}))
    assert "haemoglobin" not in result.values, "an implausible value is not scored"
    (issue,) = [i for i in result.issues if i.code == "out_of_limits"]
    assert "9.8 g/dL = 98 g/L" in issue.message, f"the hint names the likely unit: {issue.message}"
    assert issue.field == "haemoglobin" and issue.severity == "error"


def test_conversion_is_recorded() -> None:
    result = validate_record(_record({"718-7": {"value": 9.8, "unit": "g/dL"}}))
    assert result.values["haemoglobin"] == pytest.approx(98.0)
    conversion = result.conversions["haemoglobin"]
    assert (conversion.unit, conversion.canonical_unit) == ("g/dL", "g/L")


def test_age_limits_apply_without_a_spec() -> None:
    assert validate_record(_record({}, age=150)).errors[0].code == "age_out_of_range"
    assert validate_record(_record({}, age=None)).errors[0].code == "age_out_of_range"
    assert validate_record(_record({}, age=17)).eligible, "no spec: only plausibility applies"


def test_frame_units_argument_and_summary() -> None:
    frame = pd.DataFrame({"age": [50, 60], "sex": ["m", "f"], "haemoglobin": [13.5, 9.0]})
    result = validate_frame(frame, units={"haemoglobin": "g/dL"})
    assert result.values["haemoglobin"].tolist() == pytest.approx([135.0, 90.0])
    summary = result.summary()
    assert summary.iloc[0]["code"] == "unit_converted" and summary.iloc[0]["count"] == 2


# --- frame == record by record ---------------------------------------------------------------

PROPERTY_CODES = [
    "haemoglobin", "rbc", "mch", "wbc", "neutrophils", "lymphocytes", "platelets", "albumin",
    "total_protein", "globulin", "potassium", "crp", "creatinine", "hba1c", "calcium",
]  # fmt: skip


@st.composite
def _cell(draw: st.DrawFn, code: str) -> tuple[Any, Any]:
    analyte = CATALOGUE[code]
    unit = draw(st.sampled_from([None, "", "furlongs", *analyte.units, analyte.unit.upper()]))
    low, high = analyte.limits.low or 0.0, analyte.limits.high or 1.0
    value = draw(
        st.one_of(
            st.none(),
            st.floats(min_value=low, max_value=high),
            st.floats(min_value=-10 * high, max_value=10 * high),
            st.sampled_from(["abc", math.inf, "12.5", float("nan")]),
        )
    )
    return value, unit


@st.composite
def _records(draw: st.DrawFn) -> list[dict[str, Any]]:
    codes = draw(st.lists(st.sampled_from(PROPERTY_CODES), min_size=1, max_size=8, unique=True))
    n = draw(st.integers(min_value=1, max_value=6))
    records = []
    for _ in range(n):
        analytes = {}
        for code in codes:
            value, unit = draw(_cell(code))
            analytes[code] = {"value": value, "unit": unit}
        age = draw(st.one_of(st.none(), st.floats(-5, 130), st.just("sixty")))
        sex = draw(st.sampled_from(["male", "F", "x", None]))
        records.append({"age": age, "sex": sex, "analytes": analytes})
    return records


def _frame_from_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    columns: dict[str, list[Any]] = {"age": [r["age"] for r in records]}
    columns["sex"] = [r["sex"] for r in records]
    codes = sorted({c for r in records for c in r["analytes"]})
    for code in codes:
        cells = []
        for r in records:
            entry = r["analytes"].get(code)
            cells.append(entry if isinstance(entry, dict) else {"value": entry, "unit": None})
        columns[code] = pd.Series([c["value"] for c in cells], dtype=object)
        columns[f"{code}_unit"] = pd.Series([c["unit"] for c in cells], dtype=object)
    return pd.DataFrame(columns)


@settings(max_examples=150, deadline=None)
@given(records=_records(), eligible=st.booleans())
def test_frame_validation_equals_record_by_record(
    records: list[dict[str, Any]], eligible: bool
) -> None:
    eligibility = (
        Eligibility(min_age=30, max_age=90, required_panels=("fbc",)) if eligible else None
    )
    frame = _frame_from_records(records)
    framed = validate_frame(frame, eligibility=eligibility)
    for row, record in enumerate(records):
        single = validate_record(record, eligibility=eligibility)
        got = framed.issues[framed.issues["row"] == row]
        frame_issues = sorted(
            Issue(r.severity, r.code, r.field, r.message) for r in got.itertuples(index=False)
        )
        assert frame_issues == sorted(single.issues), f"row {row}: issues differ"
        assert bool(framed.eligible[row]) == single.eligible, f"row {row}: eligibility differs"
        for code in PROPERTY_CODES:
            if code not in frame:
                continue
            value = framed.values[code].iloc[row]
            if code in single.values:
                assert value == single.values[code], f"row {row} {code}: {value} != record"
            else:
                assert np.isnan(value), f"row {row} {code}: frame kept a value the record dropped"


def test_frame_and_record_agree_on_a_mixed_example() -> None:
    records = [CASES[c][0] for c in sorted(set(CASES) - RECORD_ONLY)]
    frame = _frame_from_records(records)
    framed = validate_frame(frame)
    total = sum(len(validate_record(r).issues) for r in records)
    assert len(framed.issues) == total, "the same issues, in total, by either path"
