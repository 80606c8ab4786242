"""As-of selection on hand-written extracts: exact expected values, boundaries and ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.cohorts.asof import as_of_wide

INDEX = pd.Timestamp("2018-06-15")


def results(rows: list[tuple[int, str, str, float, str]]) -> pd.DataFrame:
    """(patient, sample time, code, value, unit) rows as a lab extract."""
    return pd.DataFrame(
        rows, columns=["patient_id", "sample_time", "code", "value", "unit"]
    ).astype({"sample_time": "datetime64[ns]"})


def events(*patients: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": list(patients),
            "referral_id": [10 * p for p in patients],
            "index_date": [INDEX] * len(patients),
        }
    )


def test_latest_result_inside_the_window_wins() -> None:
    extract = results(
        [
            (1, "2018-03-01 09:00", "718-7", 150.0, "g/L"),  # 106 days before: outside
            (1, "2018-05-01 09:00", "718-7", 140.0, "g/L"),  # inside
            (1, "2018-06-10 09:00", "718-7", 13.1, "g/dL"),  # inside, latest
            (1, "2018-06-15 00:00", "718-7", 99.0, "g/L"),  # on the index date: never used
            (1, "2018-06-20 09:00", "718-7", 98.0, "g/L"),  # after: never used
            (1, "2018-06-01 09:00", "albumin", 41.0, "g/L"),  # a local code (catalogue code)
        ]
    )
    wide = as_of_wide(extract, events(1))
    assert wide.loc[0, "haemoglobin"] == 13.1, "the latest result before the index date"
    assert wide.loc[0, "haemoglobin_unit"] == "g/dL", "the unit as reported"
    assert wide.loc[0, "albumin"] == 41.0, "catalogue codes resolve like LOINC"
    assert list(wide.columns[:3]) == ["patient_id", "referral_id", "index_date"]
    assert [c for c in wide.columns if not c.endswith("_unit")][3:] == ["haemoglobin", "albumin"]


def test_window_boundaries() -> None:
    extract = results(
        [
            (1, "2018-03-17 00:00", "718-7", 120.0, "g/L"),  # exactly 90 days before: inside
            (2, "2018-03-16 23:59", "718-7", 121.0, "g/L"),  # just outside
            (3, "2018-06-14 23:59", "718-7", 122.0, "g/L"),  # the last minute before: inside
        ]
    )
    wide = as_of_wide(extract, events(1, 2, 3))
    np.testing.assert_array_equal(wide["haemoglobin"], [120.0, np.nan, 122.0])
    assert wide["haemoglobin_unit"].isna().tolist() == [False, True, False], "no result, no unit"
    shorter = as_of_wide(extract, events(1, 2, 3), window_days=30)
    np.testing.assert_array_equal(shorter["haemoglobin"], [np.nan, np.nan, 122.0])


def test_each_event_of_a_patient_gets_its_own_window() -> None:
    extract = results(
        [
            (1, "2018-06-01 09:00", "718-7", 130.0, "g/L"),
            (1, "2019-01-10 09:00", "718-7", 110.0, "g/L"),
        ]
    )
    index = pd.DataFrame(
        {
            "patient_id": [1, 1],
            "referral_id": [1, 2],
            "index_date": [INDEX, pd.Timestamp("2019-02-01")],
        }
    )
    wide = as_of_wide(extract, index)
    np.testing.assert_array_equal(wide["haemoglobin"], [130.0, 110.0])
    np.testing.assert_array_equal(wide["referral_id"], [1, 2], "events keep their order")


def test_ties_go_to_the_later_row_and_unknown_codes_are_ignored() -> None:
    extract = results(
        [
            (1, "2018-06-01 09:00", "718-7", 130.0, "g/L"),
            (1, "2018-06-01 09:00", "haemoglobin", 131.0, "g/L"),
            (1, "2018-06-01 09:00", "9999-9", 5.0, "mg"),
            (1, "2018-06-02 09:00", "718-7", np.nan, "g/L"),  # no value: ignored
        ]
    )
    wide = as_of_wide(extract, events(1))
    assert wide.loc[0, "haemoglobin"] == 131.0, "same time: the later row in the extract"
    assert "9999-9" not in wide.columns


def test_patients_without_results_get_an_empty_row() -> None:
    extract = results([(1, "2018-06-01 09:00", "718-7", 130.0, "g/L")])
    wide = as_of_wide(extract, events(2, 1))
    np.testing.assert_array_equal(wide["haemoglobin"], [np.nan, 130.0])


def test_missing_columns_are_named() -> None:
    with pytest.raises(KeyError, match="unit"):
        as_of_wide(results([]).drop(columns="unit"), events(1))


def test_urea_nitrogen_keeps_its_own_factor_through_the_as_of_spread() -> None:
    """BUN (LOINC 3094-0) 14 mg/dL is 14 x 10 / 28.014 = 4.998 mmol/L of urea, not the
    14 x 10 / 60.06 = 2.33 that urea's own mg/dL would give; a unit BUN does not use is refused."""
    from models.validation import validate_record

    extract = results(
        [
            (1, "2018-06-10 09:00", "3094-0", 14.0, "mg/dL"),  # urea nitrogen, US units
            (2, "2018-06-10 09:00", "3091-6", 14.0, "mg/dL"),  # urea by mass (2.33 mmol/L)
            (3, "2018-06-10 09:00", "3094-0", 14.0, "furlongs"),
        ]
    )
    wide = as_of_wide(extract, events(1, 2, 3))
    read = [
        validate_record({"age": 60, "sex": "male", "analytes": {"urea": {
            "value": wide.loc[i, "urea"], "unit": wide.loc[i, "urea_unit"]}}})
        for i in range(3)
    ]  # fmt: skip
    assert read[0].values["urea"] == pytest.approx(14 * 10 / 28.014, rel=1e-3)
    assert read[1].values["urea"] == pytest.approx(14 * 10 / 60.06, rel=1e-3)
    assert "urea" not in read[2].values and any(i.code == "unknown_unit" for i in read[2].issues)
