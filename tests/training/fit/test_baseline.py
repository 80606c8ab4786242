"""Fitting the spline model (the baseline, and a family a spec may serve): the restricted cubic
spline basis, the transforms it records, what it learns on simulated truths (smooth, skewed,
pathway-specific), and the comparator's contract with training's calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

import training.fit.baseline as baseline
from models.analytes import AGE_LIMITS, CATALOGUE, Catalogue
from models.spline import SplineModel
from training.fit.baseline import (
    C_GRID,
    KNOTS_4,
    SplineLogisticBaseline,
    choose_knots,
    fit_spline_model,
    rcs_term,
)


def expit(v: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-v)))


def test_rcs_term_hand_computed() -> None:
    knots = (0.0, 1.0, 2.0)
    # Below the first knot the term is 0; between knots 1 and 2 only the first cube is active.
    assert rcs_term(np.array([-1.0, 0.0]), knots).tolist() == [0.0, 0.0]
    assert rcs_term(np.array([0.5]), knots)[0] == pytest.approx(0.5**3 / 4)
    # Beyond the last knot the spline is linear: equal steps give equal increments.
    far = rcs_term(np.array([3.0, 4.0, 5.0]), knots)
    assert far[2] - far[1] == pytest.approx(far[1] - far[0])
    assert rcs_term(np.array([1.0]), (1.0, 1.0, 2.0)).tolist() == [0.0], "tied knots: no bend"


def test_knots_four_then_three_then_none() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 1000)
    assert choose_knots(values) == pytest.approx(np.quantile(values, KNOTS_4))
    tied = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], [400, 300, 150, 100, 50])  # 5% and 35% coincide
    assert choose_knots(tied) == (0.0, 1.0, 3.0)
    assert choose_knots(np.repeat([0.0, 1.0], 50)) == (), "two values (sex): linear"
    assert choose_knots(np.repeat([0.0, 1.0, 2.0, 3.0], 50)) == (), "four values: linear"
    assert choose_knots(values[:9]) == (), "too few values to bend"


def test_baseline_learns_a_u_shape_and_handles_missing() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x**2 - 2)))).astype(int)
    x[rng.random(4000) < 0.1] = np.nan
    frame = pd.DataFrame({"x": x, "sex": rng.integers(0, 2, 4000).astype(float)})
    model = SplineLogisticBaseline(continuous=["x"]).fit(frame, y)
    probe = pd.DataFrame({"x": [-2.0, 0.0, 2.0, np.nan], "sex": [0.0, 0.0, 0.0, 0.0]})
    risk = model.predict_proba(probe)[:, 1]
    assert risk[0] > risk[1] < risk[2], "a U-shaped effect needs the spline term"
    assert np.isfinite(risk[3]), "a missing value is imputed, never an error"


NAMES = ["haemoglobin", "crp", "nlr", "age", "sex", "pathway"]


def mixed_cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of every kind: a plain and a skewed analyte, a derived ratio, age, sex, pathway."""
    rng = np.random.default_rng(seed)
    hb, crp = rng.normal(135, 16, n), np.round(np.exp(rng.normal(1.3, 1.2, n)), 1)
    nlr, age = rng.gamma(3, 0.8, n), rng.uniform(20, 95, n)
    sex, pathway = rng.integers(0, 2, n), rng.integers(0, 4, n)
    logit = -3.5 - 0.03 * (hb - 135) + 0.4 * np.log(np.maximum(crp, 0.1)) + 0.03 * (age - 60)
    y = (rng.random(n) < expit(logit)).astype(int)
    x = np.column_stack([hb, crp, nlr, age, sex, pathway]).astype(np.float64)
    x[rng.random(n) < 0.2, 1] = np.nan  # CRP not always requested
    return x, y


@pytest.fixture(scope="module")
def fitted() -> SplineModel:
    x, y = mixed_cohort(4000, seed=1)
    return fit_spline_model(x, y, NAMES, seed=1)


def test_the_document_records_each_transform(fitted: SplineModel) -> None:
    features = {f["name"]: f for f in fitted.document["features"]}
    assert features["crp"] | {"median": 0, "knots": 0} == {
        "name": "crp", "kind": "continuous", "low": 0.0, "high": 500.0, "log": True,
        "floor": 0.1, "median": 0, "knots": 0,
    }, "skewed in the catalogue: log of the value, floored at its reporting step"  # fmt: skip
    assert (features["haemoglobin"]["low"], features["haemoglobin"]["high"]) == (30.0, 250.0)
    assert features["haemoglobin"]["log"] is False and len(features["haemoglobin"]["knots"]) == 4
    assert (features["age"]["low"], features["age"]["high"]) == AGE_LIMITS
    x, _ = mixed_cohort(4000, seed=1)
    assert (features["nlr"]["low"], features["nlr"]["high"]) == (x[:, 2].min(), x[:, 2].max())
    assert features["sex"]["knots"] == [] and features["pathway"] == {
        "name": "pathway",
        "kind": "pathway",
    }
    kinds: dict[str, set[str]] = {}
    for term in fitted.terms:
        kinds.setdefault(term["kind"], set()).add(term["feature"])
    assert kinds["missing"] == {"crp"}, "an indicator only where training had missing values"
    assert kinds["interaction"] == {"haemoglobin", "crp", "age"}, "the key inputs present"
    levels = sorted(t["level"] for t in fitted.terms if t["kind"] == "level")
    assert levels == [0.0, 1.0, 2.0, 3.0]
    assert fitted.document["fit"]["c"] in C_GRID and fitted.document["fit"]["converged"]


def test_a_fitted_model_is_additive_finite_and_round_trips(
    fitted: SplineModel, tmp_path: Path
) -> None:
    x, _ = mixed_cohort(2000, seed=2)
    x[::7] = np.nan
    x[::11, :4] = [1e12, -1e12, np.inf, -np.inf]  # beyond every limit
    x[::13, 5] = 7.0  # a pathway not seen in training
    margin = fitted.predict(x, raw_score=True)
    contributions = fitted.predict(x, pred_contrib=True)
    assert np.isfinite(margin).all() and np.isfinite(contributions).all()
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-9)
    fitted.save_model(tmp_path / "model.json")
    loaded = SplineModel.load(tmp_path / "model.json")
    np.testing.assert_array_equal(loaded.predict(x, pred_contrib=True), contributions)
    np.testing.assert_array_equal(loaded.predict(x, raw_score=True), margin)


def test_on_a_smooth_truth_with_few_events_the_auc_nears_the_true_risks() -> None:
    """3,000 rows, ~100 events, log-odds a smooth function of three inputs (a U in haemoglobin,
    log CRP, a sigmoid in age) plus a useless one: judged on 200,000 fresh rows against the
    AUC of the true risks themselves (the ceiling no model can pass)."""

    def cohort(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hb, crp = rng.normal(135, 16, n), np.exp(rng.normal(1.3, 1.1, n))
        age, sex = rng.uniform(25, 90, n), rng.integers(0, 2, n).astype(float)
        logit = (
            -4.6 + 0.0012 * (hb - 140) ** 2 - 0.01 * (hb - 140) + 0.5 * np.log(crp)
            + 1.2 * np.tanh((age - 65) / 15)
        )  # fmt: skip
        risk = expit(logit)
        return np.column_stack([hb, crp, age, sex]), (rng.random(n) < risk).astype(int), risk

    x_test, y_test, risk = cohort(200_000, np.random.default_rng(999))
    ceiling = roc_auc_score(y_test, risk)
    gaps = []
    for seed in (0, 1, 2):
        x, y, _ = cohort(3000, np.random.default_rng(seed))
        assert 90 <= y.sum() <= 140
        model = fit_spline_model(x, y, ["haemoglobin", "crp", "age", "sex"], seed=seed)
        gaps.append(ceiling - roc_auc_score(y_test, model.predict(x_test, raw_score=True)))
    assert np.mean(gaps) < 0.01 and max(gaps) < 0.015, f"AUC below the true risks': {gaps}"


def test_a_skewed_analyte_is_fitted_on_the_log_scale() -> None:
    """Truth: log-odds linear in log CRP. With the catalogue's `skewed` the fitted curve follows
    it over 0.5-400 mg/L; on the raw scale the linear tail beyond the last knot overshoots."""
    rng = np.random.default_rng(4)
    crp = np.round(np.exp(rng.normal(1.0, 1.4, 20_000)), 1)
    y = (rng.random(len(crp)) < expit(-3.2 + 0.9 * np.log(np.maximum(crp, 0.1)))).astype(int)
    grid = np.geomspace(0.5, 400, 40)
    truth = 0.9 * np.log(grid)

    def error(catalogue: Catalogue) -> float:
        model = fit_spline_model(crp[:, None], y, ["crp"], catalogue=catalogue, seed=0)
        curve = model.predict(grid[:, None], raw_score=True)
        return float(np.abs((curve - curve.mean()) - (truth - truth.mean())).max())

    raw = Catalogue(a.model_copy(update={"skewed": False}) for a in CATALOGUE)
    assert error(CATALOGUE) < 0.25
    assert error(raw) > 1.0, "the raw scale should miss the log shape (else this test is moot)"


def test_pathway_interactions_recover_a_slope_per_pathway() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    hb, age, pathway = rng.normal(135, 15, n), rng.uniform(30, 90, n), rng.integers(0, 3, n)
    slopes = np.array([-1.0, 0.0, 0.6])  # log-odds per 10 g/L in pathways 0, 1, 2
    logit = (
        -3.0 + np.array([0.0, 0.3, -0.2])[pathway] + slopes[pathway] * (hb - 135) / 10
        + 0.03 * (age - 60)
    )  # fmt: skip
    y = (rng.random(n) < expit(logit)).astype(int)
    x = np.column_stack([hb, age, pathway]).astype(np.float64)
    names = ["haemoglobin", "age", "pathway"]

    def fitted_slopes(model: SplineModel) -> np.ndarray:
        probe = np.array([[h, 60.0, p] for p in range(3) for h in (125.0, 145.0)])
        return np.diff(model.predict(probe, raw_score=True).reshape(3, 2), axis=1)[:, 0] / 2

    with_interactions = fitted_slopes(fit_spline_model(x, y, names, seed=0))
    np.testing.assert_allclose(with_interactions, slopes, atol=0.2)
    without = fitted_slopes(fit_spline_model(x, y, names, seed=0, key_features=()))
    assert np.ptp(without) < 1e-9, "without interactions one slope serves every pathway"


def test_the_comparator_calibrates_as_training_does(fitted: SplineModel) -> None:
    """training.fit.train.calibrate wraps the model in CalibratedClassifierCV(FrozenEstimator)."""
    x, y = mixed_cohort(3000, seed=5)
    frame = pd.DataFrame(x, columns=NAMES)
    wrapper = SplineLogisticBaseline.from_model(fitted)
    platt = CalibratedClassifierCV(FrozenEstimator(wrapper), method="sigmoid").fit(frame, y)
    slope = -platt.calibrated_classifiers_[0].calibrators[0].a_
    assert 0.5 < slope < 1.5, "a fitted model needs little recalibration on fresh rows"
    np.testing.assert_array_equal(
        wrapper.decision_function(frame), fitted.predict(x, raw_score=True)
    )


def test_the_penalty_is_given_or_chosen_on_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = mixed_cohort(3000, seed=6)
    given = fit_spline_model(x, y, NAMES, c=0.1)
    assert given.document["fit"]["c"] == 0.1 and given.document["fit"]["cv_deviance"] == {}
    monkeypatch.setattr(baseline, "CV_MAX_ROWS", 1000)
    chosen = fit_spline_model(x, y, NAMES, seed=6).document["fit"]
    assert chosen["c"] in C_GRID and set(chosen["cv_deviance"]) == {str(c) for c in C_GRID}
    assert chosen["rows"] == 3000, "the final fit uses every row"


def test_inputs_that_cannot_be_fitted_are_refused() -> None:
    x, y = mixed_cohort(200, seed=7)
    with pytest.raises(ValueError, match="disagree"):
        fit_spline_model(x[:, :3], y, NAMES)
    with pytest.raises(ValueError, match="both outcomes"):
        fit_spline_model(x, np.zeros(len(x)), NAMES)
    with pytest.raises(ValueError, match="columns"):
        fit_spline_model(pd.DataFrame(x, columns=NAMES[::-1]), y, NAMES)
