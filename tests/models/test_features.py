"""Derived features on a hand-written frame with exact expected values."""

import math

import numpy as np
import pandas as pd
import pytest

from models.analytes import CATALOGUE, Analyte
from models.features import (
    SEX_CODES,
    DerivedExpression,
    DerivedFeature,
    build_feature_frame,
    compute_derived,
    feature_columns,
    map_codes,
    resolve_derived,
    stack_columns,
)

FLC = [
    Analyte.model_validate(
        {
            "code": f"{chain}_flc",
            "name": f"{chain.capitalize()} free light chain",
            "loinc": loinc,
            "unit": "mg/L",
            "display_unit": "mg/L",
            "reference": {"low": low, "high": high},
            "limits": {"low": 0, "high": 10000},
            "panel": "protein",
            "cancer_direction": "high",
            "decimals": 1,
        }
    )
    for chain, loinc, low, high in (
        ("kappa", "36916-5", 3.3, 19.4),
        ("lambda", "33944-0", 5.7, 26.3),
    )
]  # serum free light chains: a spec's own analytes (extra_analytes)

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


# --- a spec's own derived features (expressions) ----------------------------------------------

FIVE = pd.DataFrame(
    {
        "kappa_flc": [20.0, 12.0, 30.0, np.nan, 8.0],
        "lambda_flc": [10.0, 0.0, 15.0, 5.0, 16.0],
        "urea": [5.0, 7.5, 2.0, 4.0, 6.0],
        "sodium": [140.0, 135.0, 130.0, 142.0, np.nan],
        "potassium": [4.0, 5.0, 3.5, 4.2, 4.5],
        "crp": [np.e, 0.0, 1.0, -1.0, np.nan],
    }
)


def _resolve(*expressions: dict[str, object]) -> tuple[DerivedFeature, ...]:
    entries = [DerivedExpression.model_validate(e) for e in expressions]
    return resolve_derived(entries, CATALOGUE.extended(FLC))


def test_expression_features_hand_computed() -> None:
    features = _resolve(
        {"name": "kl_ratio", "ratio": ["kappa_flc", "lambda_flc"]},
        {"name": "na_minus_k", "difference": ["sodium", "potassium"]},
        {"name": "urea_x_k", "product": ["urea", "potassium"]},
        {"name": "log_crp", "log": "crp"},
        {"name": "log_kl", "log": "kl_ratio"},
    )
    out = compute_derived(FIVE, features)
    assert list(out.columns) == ["kl_ratio", "na_minus_k", "urea_x_k", "log_crp", "log_kl"]
    assert out["kl_ratio"].tolist()[::2] == [2.0, 2.0, 0.5], "kappa / lambda"
    assert math.isnan(out["kl_ratio"][1]), "zero denominator: undefined, not infinite"
    assert math.isnan(out["kl_ratio"][3]), "missing input: missing feature"
    assert out["na_minus_k"].tolist()[:4] == [136.0, 130.0, 126.5, 137.8]
    assert math.isnan(out["na_minus_k"][4]), "missing input: missing feature"
    assert out["urea_x_k"].tolist() == [20.0, 37.5, 7.0, 16.8, 27.0]
    assert out["log_crp"][0] == 1.0 and out["log_crp"][2] == 0.0, "natural log"
    assert out["log_crp"][1:].isna().tolist() == [True, False, True, True], (
        "log of zero, of a negative value or of a missing value is missing"
    )
    assert out["log_kl"][0] == np.log(2.0), "an expression over an earlier derived feature"
    assert math.isnan(out["log_kl"][1]), "a missing input stays missing down the chain"


def test_expression_units_from_the_catalogue() -> None:
    features = _resolve(
        {"name": "kl_ratio", "ratio": ["kappa_flc", "lambda_flc"]},
        {"name": "kappa_per_urea", "ratio": ["kappa_flc", "urea"]},
        {"name": "na_minus_k", "difference": ["sodium", "potassium"]},
        {"name": "kappa_x_kl", "product": ["kappa_flc", "kl_ratio"]},
        {"name": "log_kappa", "log": "kappa_flc"},
        {"name": "log_kl", "log": "kl_ratio"},
    )
    assert {f.name: f.unit for f in features} == {
        "kl_ratio": "1",
        "kappa_per_urea": "(mg/L)/(mmol/L)",
        "na_minus_k": "mmol/L",
        "kappa_x_kl": "mg/L",
        "log_kappa": "log(mg/L)",
        "log_kl": "1",
    }, "same units cancel; a difference keeps its unit; a log of a ratio is dimensionless"
    assert features[0].title == "Kappa free light chain / Lambda free light chain", (
        "the default title names the inputs"
    )
    assert features[0].panel == "protein", "the first input's panel"


def test_built_ins_by_name_are_the_resolved_built_ins() -> None:
    resolved = resolve_derived(["nlr", "ag_ratio"], CATALOGUE)
    by_name = compute_derived(FRAME, ["nlr", "ag_ratio"])
    by_feature = compute_derived(FRAME, resolved)
    assert by_name.equals(by_feature), "a built-in named in a spec computes as it always has"
