"""Derived features on a hand-written frame with exact expected values."""

import math

import numpy as np
import pandas as pd
import pytest

from models.features import (
    SEX_CODES,
    build_feature_frame,
    compute_derived,
    feature_columns,
    map_codes,
    stack_columns,
)

FRAME = pd.DataFrame(
    {
        "neutrophils": [4.0, 3.0, np.nan],
        "lymphocytes": [2.0, 0.0, 1.0],
        "platelets": [300.0, 450.0, 200.0],
        "albumin": [40.0, 30.0, 35.0],
        "total_protein": [70.0, 80.0, np.nan],
        "calcium": [2.40, 2.30, np.nan],
        "urea": [5.0, 10.0, 4.0],
        "creatinine": [100.0, 200.0, 0.0],
        "age": [60, 70, 80],
        "sex": ["female", "male", "unknown"],
    }
)


def test_derived_features_hand_computed() -> None:
    names = ["nlr", "plr", "globulin_calc", "ag_ratio", "calcium_adjusted_calc",
             "urea_creatinine_ratio"]  # fmt: skip
    out = compute_derived(FRAME, names)
    assert out["nlr"].tolist()[0] == 2.0
    assert math.isnan(out["nlr"][1]), "zero lymphocytes: ratio undefined, not infinite"
    assert math.isnan(out["nlr"][2]), "missing input: missing feature"
    assert out["plr"].tolist()[0] == 150.0
    assert out["globulin_calc"].tolist()[:2] == [30.0, 50.0]
    assert out["ag_ratio"][0] == pytest.approx(40 / 30)
    assert out["calcium_adjusted_calc"][:2].tolist() == pytest.approx([2.40, 2.50])
    assert out["urea_creatinine_ratio"][:2].tolist() == pytest.approx([50.0, 50.0])
    assert math.isnan(out["urea_creatinine_ratio"][2])


def test_feature_frame_order_and_encoding() -> None:
    out = build_feature_frame(FRAME, ["platelets", "ferritin"], ["nlr"], ["age", "sex"])
    assert list(out.columns) == ["platelets", "ferritin", "nlr", "age", "sex"]
    assert out["ferritin"].isna().all(), "an analyte absent from the cohort is all-missing"
    assert out["sex"].tolist()[:2] == [0.0, 1.0] and math.isnan(out["sex"][2])
    assert (out.dtypes == "float64").all()


def test_feature_columns_of_chosen_rows_equal_the_frame_rows() -> None:
    names = (["platelets", "ferritin"], ["nlr", "ag_ratio"], ["age", "sex"])
    frame = build_feature_frame(FRAME, *names)
    rows = np.array([2, 0], dtype=np.int64)
    columns = feature_columns(FRAME, *names, rows=rows)
    matrix = stack_columns(columns, len(rows))
    assert matrix.flags["C_CONTIGUOUS"], "row-major, as the booster reads it without a copy"
    expected = frame.to_numpy(np.float64)[rows]
    assert np.array_equal(matrix, expected, equal_nan=True), "the same inputs, bit for bit"
    scratch = np.full(100, -1.0)
    reused = stack_columns(columns, len(rows), scratch)
    assert np.shares_memory(reused, scratch), "a large enough scratch buffer is filled"
    assert np.array_equal(reused, expected, equal_nan=True), "with the same inputs"
    small = stack_columns(columns, len(rows), np.empty(3))
    assert np.array_equal(small, expected, equal_nan=True), "too small: a new matrix"


@pytest.mark.parametrize(
    "sex",
    [
        pd.Series(["female", "male", "unknown", None, "male"], dtype=object),
        pd.Series(pd.Categorical(["female", "male", "unknown", None, "male"])),
    ],
)
def test_map_codes_equals_series_map(sex: pd.Series) -> None:
    expected = sex.map(SEX_CODES).to_numpy(np.float64)
    assert np.array_equal(map_codes(sex, SEX_CODES), expected, equal_nan=True), "as Series.map"
