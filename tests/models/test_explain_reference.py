"""Explanation wording and grouping; reference statistics and PSI by hand."""

import math

import numpy as np
import pytest

from models.analytes import CATALOGUE
from models.calibration import LogitCalibration
from models.explain import calibrated_contributions, describe_driver, group_by_panel, top_drivers
from models.reference import binned_shares, describe, psi


def test_calibrated_contributions_add_up() -> None:
    raw = np.array([[0.2, -0.1, 0.4, -2.0]])  # three features, then the bias column
    calibration = LogitCalibration(slope=0.8, intercept=0.3, shift=-1.5)
    base, contributions = calibrated_contributions(raw, calibration)
    assert contributions[0].tolist() == pytest.approx([0.16, -0.08, 0.32])
    assert base[0] == pytest.approx(0.8 * -2.0 + 0.3 - 1.5)
    margin = raw[0].sum()
    assert base[0] + contributions.sum() == pytest.approx(calibration.log_odds(margin))


def test_driver_wording_names_value_unit_interval_and_direction() -> None:
    driver = describe_driver("haemoglobin", 98.0, 0.42, CATALOGUE, sex="male", age=70)
    assert driver.text == (
        "Haemoglobin 98 g/L, below the reference interval 130-170 g/L, increased the estimated risk"
    )
    assert driver.position == "below"
    missing = describe_driver("crp", None, -0.05, CATALOGUE)
    assert (
        missing.text == "C-reactive protein not measured; its absence decreased the estimated risk"
    )
    assert describe_driver("age", 72, 0.3, CATALOGUE).text == "Age 72 increased the estimated risk"


def test_grouping_and_top_drivers() -> None:
    contributions = {"haemoglobin": 0.3, "mcv": 0.1, "crp": -0.2, "age": 0.05}
    groups = group_by_panel(contributions, CATALOGUE)
    assert groups == pytest.approx({"fbc": 0.4, "inflammatory": -0.2, "demographics": 0.05})
    assert list(groups) == ["fbc", "inflammatory", "demographics"], "largest absolute first"
    drivers = top_drivers(
        list(contributions), {"haemoglobin": 120.0, "mcv": 85.0, "crp": 3.0, "age": 60.0},
        list(contributions.values()), CATALOGUE, k=2,
    )  # fmt: skip
    assert [d.feature for d in drivers] == ["haemoglobin", "crp"]


def test_binned_shares_and_psi_by_hand() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert binned_shares(values, [2.5]) == [0.4, 0.4, 0.2], "two value bins then the missing bin"
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == 0.0


def test_describe_reports_missing_rate_and_soft_range() -> None:
    stats = describe(np.array([*range(1, 201), np.nan, np.nan], dtype=float))
    assert stats["missing_rate"] == pytest.approx(2 / 202)
    assert 1.0 <= stats["low"] < 3.0 and 198.0 < stats["high"] <= 200.0
    assert len(stats["shares"]) == len(stats["edges"]) + 2
