"""A spec's `column_map` on frames laid out by someone else: roles, coded sex and outcome, units
declared per column, and mapping twice changing nothing (the reader and the scorer both map)."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.columns import ColumnError, map_columns
from models.frame_validation import validate_frame
from models.spec import ModelSpec, SpecError, load_spec, parse_spec


def spec_with(column_map: dict) -> ModelSpec:
    data = load_spec("any_cancer").model_dump(mode="json")
    data.update(name="mine", column_map=column_map)
    return parse_spec(data, "mine.yaml")


MAP = {
    "pid": {"code": "patient_id"},
    "sexe": {"code": "sex", "values": {1: "male", 2: "female"}},
    "died": {"code": "outcome", "values": {"Y": 1, "N": 0}},
    "when": {"code": "index_date"},
    "hb": {"code": "haemoglobin", "unit": "g/dL"},
    "imd": {"code": "deprivation"},
}
FRAME = pd.DataFrame(
    {
        "pid": [10, 11, 12],
        "sexe": [1, 2, 3],
        "died": ["Y", "N", "N"],
        "when": ["2015", "2016-02", "2017-03-04"],
        "hb": [12.5, 13.0, None],
        "imd": [1, 5, 3],
        "age": [70, 55, 61],
    }
)


def test_roles_codes_and_units_map_onto_the_models_names() -> None:
    mapped, units = map_columns(FRAME, spec_with(MAP))
    assert list(mapped["patient_id"]) == [10, 11, 12]
    assert list(mapped["sex"]) == ["male", "female", "3"], "an unlisted code is kept, refused"
    assert list(mapped["cancer"]) == [1, 0, 0], "the outcome lands in the spec's outcome column"
    assert "index_date" in mapped and "deprivation" in mapped
    assert units == {"haemoglobin": "g/dL"}
    checked = validate_frame(mapped, units=units)
    assert checked.values["haemoglobin"].iloc[0] == pytest.approx(125.0), "g/dL -> g/L"
    assert "invalid_sex" in set(checked.issues.loc[checked.issues["row"] == 2, "code"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 1.0, 2.0, "1", "2", None]), min_size=1, max_size=20))
def test_mapping_twice_changes_nothing(codes: list[object]) -> None:
    spec = spec_with({"sexe": {"code": "sex", "values": {"1": "male", "2": "female"}}})
    frame = pd.DataFrame({"sexe": pd.Series(codes, dtype=object)})
    once, _ = map_columns(frame, spec)
    twice, _ = map_columns(once, spec)
    pd.testing.assert_frame_equal(once, twice)
    known = [c for c in codes if c is not None]
    assert once["sex"].notna().sum() == len(known), "1, 1.0 and '1' are the same code"
    assert set(once["sex"].dropna()) <= {"male", "female"}


def test_an_outcome_code_not_listed_is_refused() -> None:
    frame = FRAME.assign(died=["Y", "N", "unknown"])
    with pytest.raises(ColumnError, match=r"codes \['unknown'\] are not listed"):
        map_columns(frame, spec_with(MAP))


def test_a_missing_mapped_column_names_it_and_what_the_cohort_has() -> None:
    with pytest.raises(ColumnError, match=r"missing: \['pid'\]; the cohort has sexe"):
        map_columns(FRAME.drop(columns=["pid"]), spec_with(MAP), strict=True)
    with pytest.raises(ColumnError, match=r"missing: \['hb'\]"):
        map_columns(FRAME.drop(columns=["hb"]), spec_with(MAP))


def test_rows_to_score_need_the_model_inputs_but_no_patient_id_date_or_outcome() -> None:
    inputs_only = FRAME.drop(columns=["pid", "when", "died", "imd"])
    mapped, _ = map_columns(inputs_only, spec_with(MAP))
    assert {"sex", "haemoglobin", "age"} <= set(mapped.columns), "the model inputs are mapped"


@pytest.mark.parametrize(
    ("column_map", "message"),
    [
        ({"x": {"code": "patient_number"}}, "unknown target 'patient_number'"),
        ({"x": {"code": "age", "unit": "years"}}, "`unit` is only for analytes"),
        ({"x": {"code": "sex", "values": {"F": "woman"}}}, "sex codes must mean female or male"),
        ({"x": {"code": "outcome", "values": {"Y": 2}}}, "outcome codes must mean 0 or 1"),
        ({"x": {"code": "outcome", "values": {"0": 1, "1": 0}}}, "both a code and a meaning"),
        ({"x": {"code": "haemoglobin", "unit": "mg/L"}}, "not accepted for haemoglobin"),
        ({"x": {"code": "age"}, "y": {"code": "age"}}, "several columns are mapped to ['age']"),
    ],
)
def test_a_bad_column_map_names_the_field(column_map: dict, message: str) -> None:
    with pytest.raises(SpecError) as error:
        spec_with(column_map)
    assert message in str(error.value), str(error.value)
