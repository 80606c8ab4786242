"""Validation: every issue code, the unit hint, and frame == record-by-record."""

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.analytes import CATALOGUE, Analyte
from models.frame_validation import _canonical_column, as_objects, validate_frame
from models.validation import ISSUE_CODES, Eligibility, Issue, validate_record

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


def _values(analyte: Analyte, extras: list[Any]) -> st.SearchStrategy[Any]:
    """An analyte's value: missing, within its hard limits, well beyond them, or one of `extras`."""
    low, high = analyte.limits.low or 0.0, analyte.limits.high or 1.0
    return st.one_of(
        st.none(),
        st.floats(min_value=low, max_value=high),
        st.floats(min_value=-10 * high, max_value=10 * high),
        st.sampled_from(extras),
    )


@st.composite
def _cell(draw: st.DrawFn, code: str) -> tuple[Any, Any]:
    analyte = CATALOGUE[code]
    unit = draw(st.sampled_from([None, "", "furlongs", *analyte.units, analyte.unit.upper()]))
    value = draw(_values(analyte, ["abc", math.inf, "12.5", float("nan")]))
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


def _typed_frame_from_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The frame a Parquet extract gives: numbers as float64 where every cell is a number or
    absent, text (units, sex) as categoricals, and no unit column where every cell declares the
    canonical unit (the frame's default): the layout of validate_frame's fast path."""
    frame = _frame_from_records(records)
    for column in list(frame.columns):
        cells = frame[column]
        if column.endswith("_unit"):
            canonical = CATALOGUE[column.removesuffix("_unit")].unit
            if (cells == canonical).all():
                frame = frame.drop(columns=column)
            else:
                frame[column] = cells.astype("category")
        elif column == "sex":
            frame[column] = cells.astype("category")
        elif all(c is None or isinstance(c, float) for c in cells):
            frame[column] = cells.astype(np.float64)
    return frame


def _assert_frame_equals_records(
    frame: pd.DataFrame, records: list[dict[str, Any]], eligibility: Eligibility | None
) -> None:
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


@settings(max_examples=150, deadline=None)
@given(records=_records(), eligible=st.booleans())
def test_frame_validation_equals_record_by_record(
    records: list[dict[str, Any]], eligible: bool
) -> None:
    eligibility = (
        Eligibility(min_age=30, max_age=90, required_panels=("fbc",)) if eligible else None
    )
    _assert_frame_equals_records(_frame_from_records(records), records, eligibility)


@st.composite
def _canonical_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records whose analytes are numbers, each analyte declared in its canonical unit in
    every record or in any unit per record: what the fast path sees, and just beside it."""
    codes = draw(st.lists(st.sampled_from(PROPERTY_CODES), min_size=1, max_size=6, unique=True))
    canonical = {code: draw(st.booleans()) for code in codes}
    n = draw(st.integers(min_value=1, max_value=6))
    records = []
    for _ in range(n):
        analytes = {}
        for code in codes:
            analyte = CATALOGUE[code]
            low, high = analyte.limits.low or 0.0, analyte.limits.high or 1.0
            value = draw(_values(analyte, [math.inf, -math.inf, float("nan"), low, high]))
            units = [analyte.unit] if canonical[code] else [None, "", "furlongs", *analyte.units]
            analytes[code] = {"value": value, "unit": draw(st.sampled_from(units))}
        age = draw(st.one_of(st.none(), st.floats(-5, 130)))
        sex = draw(st.sampled_from(["male", "F", "x", None]))
        records.append({"age": age, "sex": sex, "analytes": analytes})
    return records


@settings(max_examples=150, deadline=None)
@given(records=_canonical_records(), eligible=st.booleans())
def test_typed_frame_validation_equals_record_by_record(
    records: list[dict[str, Any]], eligible: bool
) -> None:
    """float64 columns in the canonical unit take the fast path when clean and fall back to the
    general path when a value is infinite or implausible; both agree with the record path."""
    eligibility = (
        Eligibility(min_age=30, max_age=90, required_panels=("fbc",)) if eligible else None
    )
    _assert_frame_equals_records(_typed_frame_from_records(records), records, eligibility)


def _general_path(frame: pd.DataFrame) -> pd.DataFrame:
    """The same cells as Python objects: the fast path takes numeric dtypes only."""
    return frame.astype({c: object for c in frame.columns if c in CATALOGUE})


def _assert_same_validation(frame: pd.DataFrame, **options: Any) -> None:
    fast, general = (
        validate_frame(frame, **options),
        validate_frame(_general_path(frame), **options),
    )
    pd.testing.assert_frame_equal(fast.issues, general.issues, obj="issues, fast vs general path")
    pd.testing.assert_frame_equal(fast.values, general.values, obj="values, fast vs general path")
    assert np.array_equal(fast.eligible, general.eligible), "eligibility, fast vs general path"


def test_fast_path_takes_clean_canonical_columns_and_changes_nothing() -> None:
    frame = pd.DataFrame(
        {
            "age": [50.0, 60.0, 70.0],
            "sex": pd.Categorical(["male", "female", None]),
            "haemoglobin": [135.0, np.nan, 90.0],  # g/L, the canonical unit
            "crp": [1.0, 250.0, np.nan],
            "sodium": [np.nan, np.nan, np.nan],
        }
    )
    for code in ("haemoglobin", "crp", "sodium"):
        taken = _canonical_column(CATALOGUE[code], frame[code], CATALOGUE[code].unit)
        assert taken is not None, f"{code}: a clean canonical column takes the fast path"
    _assert_same_validation(frame, eligibility=REQUIRE_FBC)


@pytest.mark.parametrize(
    ("value", "units", "code"),
    [
        (9.8, None, "out_of_limits"),  # Hb 9.8 g/L: implausible
        (math.inf, None, "not_a_number"),
        (-math.inf, None, "not_a_number"),
        (13.5, {"haemoglobin": "g/dL"}, "unit_converted"),  # declared, not canonical
        (135.0, {"haemoglobin": "furlongs"}, "unknown_unit"),
        (135.0, {"haemoglobin": "G/L"}, None),  # a canonical spelling: fast path, no issue
    ],
)
def test_fast_path_falls_back_to_the_general_path_with_the_same_issues(
    value: float, units: dict[str, str] | None, code: str | None
) -> None:
    frame = pd.DataFrame({"age": [50.0, 60.0], "sex": ["m", "f"], "haemoglobin": [140.0, value]})
    analyte = CATALOGUE["haemoglobin"]
    declared = (units or {}).get("haemoglobin", analyte.unit)
    taken = _canonical_column(analyte, frame["haemoglobin"], declared)
    assert (taken is None) == (code is not None), "only a column with nothing to report is fast"
    result = validate_frame(frame, units=units)
    if code is not None:
        assert code in set(result.issues["code"]), f"{code} is still raised"
    _assert_same_validation(frame, units=units)


def test_categorical_unit_column_groups_like_text() -> None:
    units = ["g/dL", None, " ", "g/L", "mg/L", "g/dL"]
    frame = pd.DataFrame(
        {"age": [60.0] * 6, "sex": ["f"] * 6, "haemoglobin": [13.5, 140, 140, 9.8, 140, np.nan]}
    )
    text = frame.assign(haemoglobin_unit=pd.Series(units, dtype=object))
    categorical = frame.assign(haemoglobin_unit=pd.Categorical(units))
    a, b = validate_frame(text), validate_frame(categorical)
    pd.testing.assert_frame_equal(a.issues, b.issues, obj="issues, text vs categorical units")
    pd.testing.assert_frame_equal(a.values, b.values, obj="values, text vs categorical units")
    assert set(a.issues["code"]) >= {"unit_converted", "unit_assumed", "unknown_unit"}


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(pd.Categorical(["male", None, "female"])),
        pd.Series(["male", None, "x"], dtype=object),
        pd.Series(pd.Categorical([1, None, 2])),  # numbers: converted row by row
    ],
)
def test_as_objects_equals_to_numpy_object(column: pd.Series) -> None:
    got, expected = as_objects(column), column.to_numpy(dtype=object)
    assert [repr(v) for v in got] == [repr(v) for v in expected], "element for element"


def test_frame_and_record_agree_on_a_mixed_example() -> None:
    records = [CASES[c][0] for c in sorted(set(CASES) - RECORD_ONLY)]
    frame = _frame_from_records(records)
    framed = validate_frame(frame)
    total = sum(len(validate_record(r).issues) for r in records)
    assert len(framed.issues) == total, "the same issues, in total, by either path"


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([True, False, None], dtype=object),
        pd.Series([True, False, True]),
        pd.Series([True, False, None], dtype="boolean"),
    ],
    ids=["objects", "bool", "nullable-boolean"],
)
def test_a_boolean_value_is_not_a_number_in_a_frame_either(column: pd.Series) -> None:
    assert validate_record(_record({"sodium": True})).issues[0].code == "not_a_number"
    frame = pd.DataFrame({"age": [60] * 3, "sex": ["female"] * 3, "sodium": column})
    framed = validate_frame(frame)
    refused = framed.issues[framed.issues["code"] == "not_a_number"]
    assert sorted(refused["row"]) == sorted(
        i for i in range(3) if column.iloc[i] is not None and column.iloc[i] is not pd.NA
    )
    assert framed.values["sodium"].isna().all(), "no boolean became 1.0 or 0.0 mmol/L"
