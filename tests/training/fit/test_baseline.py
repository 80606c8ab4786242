"""The restricted cubic spline basis and the baseline's contract."""

import numpy as np
import pandas as pd
import pytest

from training.fit.baseline import SplineLogisticBaseline, rcs_term


def test_rcs_term_hand_computed() -> None:
    knots = (0.0, 1.0, 2.0)
    # Below the first knot the term is 0; between knots 1 and 2 only the first cube is active.
    assert rcs_term(np.array([-1.0, 0.0]), knots).tolist() == [0.0, 0.0]
    assert rcs_term(np.array([0.5]), knots)[0] == pytest.approx(0.5**3 / 4)
    # Beyond the last knot the spline is linear: equal steps give equal increments.
    far = rcs_term(np.array([3.0, 4.0, 5.0]), knots)
    assert far[2] - far[1] == pytest.approx(far[1] - far[0])


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
