"""Calibration maps, prevalence shift, triage bands and wording: hand-computed values."""

import math

import numpy as np
import pytest

from models.calibration import LogitCalibration, expit, logit, prevalence_shift
from models.spec import load_spec
from models.triage import BANDS, Thresholds, assign_band, assign_bands, band_codes, recommend


def test_prevalence_shift_hand_computed() -> None:
    # Leeds style: 1 case in 5 in the sample, 60 per 100,000 in the population.
    expected = math.log(0.0006 / 0.9994) - math.log(0.2 / 0.8)
    assert prevalence_shift(0.0006, 0.2) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="strictly between"):
        prevalence_shift(0.0, 0.2)


def test_shifted_probability_reaches_the_population_prevalence() -> None:
    # A sample-scale probability equal to the sample fraction maps to the population prevalence.
    calibration = LogitCalibration(slope=1.0, intercept=0.0, shift=prevalence_shift(0.0006, 0.2))
    assert calibration.probability(np.array([logit(0.2)]))[0] == pytest.approx(0.0006)


def test_logit_affine_map() -> None:
    calibration = LogitCalibration(slope=0.5, intercept=-1.0, shift=0.25)
    assert calibration.log_odds(np.array([2.0]))[0] == pytest.approx(0.5 * 2 - 1 + 0.25)
    assert calibration.offset == pytest.approx(-0.75)
    assert expit(np.array([0.0]))[0] == 0.5
    assert LogitCalibration.from_dict(calibration.to_dict()) == calibration


def test_bands_hand_made() -> None:
    thresholds = Thresholds(rule_out=0.02, rule_in=0.2)
    probabilities = np.array([0.0, 0.0199, 0.02, 0.1999, 0.2, 0.9])
    expected = ["green", "green", "amber", "amber", "red", "red"]
    assert list(assign_bands(probabilities, thresholds)) == expected
    codes = band_codes(probabilities, thresholds)
    assert [BANDS[c] for c in codes] == expected, "codes are positions in BANDS"
    assert [assign_band(float(p), thresholds) for p in probabilities] == expected


def test_missing_threshold_means_no_such_band() -> None:
    no_rule_in = Thresholds(rule_out=0.02, rule_in=None)
    assert assign_band(0.99, no_rule_in) == "amber", "no rule-in threshold: never red"
    assert assign_band(0.0, Thresholds(None, 0.3)) == "amber", "no rule-out: never green"
    with pytest.raises(ValueError, match="below rule-out"):
        Thresholds(rule_out=0.3, rule_in=0.1)


def test_recommendation_wording_by_cohort() -> None:
    assert "expedite" in recommend("red", load_spec("any_cancer"))
    assert "electrophoresis" in recommend("red", load_spec("myeloma")), "the myeloma spec's text"
