"""The report's figures: the ROC band and operating points, the decision curve's range, the SHAP
beeswarm's colours, labels and layout, all drawn without touching pyplot or the global RNG."""

from __future__ import annotations

import base64
import pickle
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from tests.training.evaluation.test_evaluate import synthetic_predictions
from training.evaluation.basics import bootstrap_indices
from training.evaluation.beeswarm import (
    MISSING_COLOUR,
    feature_colours,
    feature_label,
    swarm_offsets,
)
from training.evaluation.evaluate import ROC_BAND_FPR, evaluate_predictions
from training.evaluation.plots import (
    decision_plot,
    decision_range,
    operating_points,
    roc_plot,
    shap_plot,
)

PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_predictions(3000, seed=3)


@pytest.fixture(scope="module")
def evaluation(frame: pd.DataFrame) -> dict[str, Any]:
    return evaluate_predictions(frame, rule_out=0.03, rule_in=0.3, n_boot=60, seed=4)


def _png_bytes(img: str) -> bytes:
    match = PNG.search(img)
    assert match, "the figure is an inline PNG"
    return base64.b64decode(match.group(1))


def test_roc_band_is_the_bootstrap_percentiles_of_sensitivity(frame: pd.DataFrame) -> None:
    one = evaluate_predictions(frame, rule_out=0.03, rule_in=0.3, n_boot=1, seed=9)
    band = one["roc"]["band"]
    assert band["fpr"] == ROC_BAND_FPR.tolist(), "the band lies on the fixed FPR grid"
    # With one resample the band is that resample's curve: rebuild it with sklearn.
    rows = next(bootstrap_indices(frame["patient_id"].to_numpy(), 1, 9))
    fpr, tpr, _ = roc_curve(frame["cancer"].to_numpy()[rows], frame["probability"].to_numpy()[rows])
    expected = np.interp(ROC_BAND_FPR, fpr, tpr)
    inner = (ROC_BAND_FPR > 0) & (ROC_BAND_FPR < 1)  # ends: vertical steps are ambiguous
    np.testing.assert_allclose(np.array(band["low"])[inner], expected[inner], atol=1e-9)
    np.testing.assert_allclose(band["low"], band["high"], err_msg="one resample: no width")


def test_roc_band_covers_the_curve_and_has_width(
    frame: pd.DataFrame, evaluation: dict[str, Any]
) -> None:
    band = evaluation["roc"]["band"]
    low, high = np.array(band["low"]), np.array(band["high"])
    assert (low <= high).all(), "a band's low edge is never above its high edge"
    fpr, tpr, _ = roc_curve(frame["cancer"], frame["probability"])
    full = np.interp(ROC_BAND_FPR, fpr, tpr)
    inside = (full >= low - 1e-9) & (full <= high + 1e-9)
    assert inside.mean() > 0.9, f"the full-sample curve lies in its band ({inside.mean():.0%})"
    middle = (ROC_BAND_FPR > 0.05) & (ROC_BAND_FPR < 0.5)
    assert (high - low)[middle].min() > 0.01, "3,000 rows leave a visible band"


def test_operating_points_are_the_thresholds_rates(
    frame: pd.DataFrame, evaluation: dict[str, Any]
) -> None:
    points = {p["band"]: p for p in operating_points(evaluation)}
    y, p = frame["cancer"].to_numpy(), frame["probability"].to_numpy()
    for band, threshold in (("green", 0.03), ("red", 0.3)):
        # Both bands' sensitivity is the share of cases at or above the threshold.
        assert points[band]["tpr"] == pytest.approx((p[y == 1] >= threshold).mean())
        assert points[band]["fpr"] == pytest.approx((p[y == 0] >= threshold).mean())
        assert points[band]["threshold"] == threshold
    assert (
        points["green"]["label"] == "green: p < 0.03" and points["red"]["label"] == "red: p ≥ 0.3"
    )


def test_roc_renders_with_and_without_a_band(evaluation: dict[str, Any]) -> None:
    old = {**evaluation, "roc": {k: v for k, v in evaluation["roc"].items() if k != "band"}}
    without, with_band = roc_plot(old, None), roc_plot(evaluation, None)
    assert _png_bytes(without) != _png_bytes(with_band), "the band is drawn when present"
    no_bands = {**evaluation, "thresholds": {"green": None, "red": None}}
    assert operating_points(no_bands) == [], "no threshold, no operating point"
    assert PNG.search(roc_plot(no_bands, None)), "and the ROC still renders"


@pytest.mark.parametrize(
    ("prevalence", "thresholds", "expected"),
    [
        (0.01, (0.002, 0.05, 0.03), (0.001, 0.15)),  # 1%: from a tenth of it to 3x the red cut
        (0.1, (0.02, 0.3, 0.03), (0.01, 0.5)),  # 10%: capped at 0.5
        (0.0006, (0.00005, 0.0009, 0.0009), (0.00004, 0.0027)),  # green below prevalence/10
        (0.01, (), (0.001, 0.03)),  # no threshold: 3x the prevalence
    ],
)
def test_decision_range_suits_the_prevalence(
    prevalence: float, thresholds: tuple[float, ...], expected: tuple[float, float]
) -> None:
    low, high = decision_range(prevalence, thresholds)
    assert (low, high) == pytest.approx(expected), "range from the prevalence and thresholds"
    treat_all_at_left = prevalence - (1 - prevalence) * low / (1 - low)
    assert treat_all_at_left >= 0.85 * prevalence, "treat-all starts near its maximum, on the axis"
    assert all(low <= t <= high for t in thresholds), "every threshold falls in the range"


def test_decision_plot_renders_for_an_evaluation_without_a_curve(
    evaluation: dict[str, Any],
) -> None:
    assert PNG.search(decision_plot(evaluation, evaluation)), "a full decision curve"
    empty = {**evaluation, "net_benefit": [], "net_benefit_at": {}}
    assert PNG.search(decision_plot(empty, None)), "an empty one still renders"


def test_categorical_features_are_coloured_by_category_not_low_high() -> None:
    sex = pd.Series([0.0, 1.0, 1.0, np.nan, 0.0])
    coloured = feature_colours("sex", sex)
    assert coloured.categories is not None and set(coloured.categories) == {"female", "male"}
    rgba = coloured.rgba
    assert (rgba[0] == rgba[4]).all() and (rgba[1] == rgba[2]).all(), "one colour per category"
    assert not (rgba[0] == rgba[1]).all(), "two categories, two colours"
    assert tuple(rgba[3]) == MISSING_COLOUR, "missing stays grey"
    assert MISSING_COLOUR not in coloured.categories.values(), "no category is grey"
    words = feature_colours("site", pd.Series(["lung", "skin", "lung"]), first_colour=2)
    assert words.categories is not None and list(words.categories) == ["lung", "skin"]
    assert words.categories["lung"] != coloured.categories["female"], "offset palettes differ"
    pathway = feature_colours("pathway", pd.Series([0.0, 3.0]))
    assert pathway.categories is not None and "code" not in " ".join(pathway.categories)


def test_numeric_features_run_from_low_to_high() -> None:
    values = pd.Series(np.linspace(0, 100, 101))
    coloured = feature_colours("crp", values)
    assert coloured.categories is None, "numeric: a colour bar, not a legend"
    low, high = coloured.rgba[0], coloured.rgba[-1]
    assert low[2] > low[0] and high[0] > high[2], "low blue, high red (coolwarm)"
    assert (coloured.rgba[:5] == low).all(), "values below the 5th percentile clip to low"


@pytest.mark.parametrize(
    ("feature", "label"),
    [
        ("crp", "crp (mg/L)"),
        ("age", "age (years)"),
        ("platelets", "platelets (×10⁹/L)"),
        ("nlr", "nlr (ratio)"),
        ("sex", "sex"),
        ("pathway", "pathway"),
    ],
)
def test_feature_labels_carry_their_units(feature: str, label: str) -> None:
    assert feature_label(feature) == label


def test_swarm_offsets_are_deterministic_and_bounded() -> None:
    x = np.random.default_rng(0).normal(0, 1, 500)
    offsets = swarm_offsets(x)
    assert np.array_equal(offsets, swarm_offsets(x)), "no random jitter"
    assert np.abs(offsets).max() == pytest.approx(0.4), "the densest bin fills the row"
    same = swarm_offsets(np.zeros(5))
    assert sorted(same.tolist()) == pytest.approx([-0.4, -0.2, 0.0, 0.2, 0.4]), "stacked both ways"


def test_beeswarm_is_byte_identical_and_leaves_the_global_rng_alone() -> None:
    rng = np.random.default_rng(5)
    features = ("crp", "age", "sex", "pathway")
    sample = pd.DataFrame(
        {
            **{f"contrib__{f}": rng.normal(0, 0.3, 300) for f in features},
            "value__crp": rng.lognormal(1, 1, 300),
            "value__age": rng.uniform(18, 90, 300),
            "value__sex": rng.integers(0, 2, 300).astype(float),
            "value__pathway": rng.integers(0, 9, 300).astype(float),
            "base": -2.0,
        }
    )
    np.random.seed(123)
    before = pickle.dumps(np.random.get_state())
    first, second = shap_plot(sample, seed=7), shap_plot(sample, seed=7)
    assert pickle.dumps(np.random.get_state()) == before, "the global RNG is not used"
    assert first == second, "the same sample draws the same bytes"
    assert first != shap_plot(sample, seed=8), "the seed is written in the figure"
