"""The spline model as a document: hand-computed margins and contributions, exact additivity for
any input (Hypothesis), the JSON round trip, and refusal of corrupt or incompatible documents.
(Fitting is tested in tests/training/fit/test_baseline.py.)"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.spline import FORMAT, FORMAT_VERSION, SplineModel, SplineModelError, rcs_basis


def tiny_document() -> dict[str, Any]:
    """CRP (log scale, knots 0 < 1 < 2 in log units) and pathway, every kind of term once."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_names": ["crp", "pathway"],
        "features": [
            {"name": "crp", "kind": "continuous", "low": 0.0, "high": 500.0, "log": True,
             "floor": 0.1, "median": 1.0, "knots": [0.0, 1.0, 2.0]},
            {"name": "pathway", "kind": "pathway"},
        ],
        "terms": [
            {"kind": "linear", "feature": "crp", "coefficient": 0.5, "mean": 1.0},
            {"kind": "spline", "feature": "crp", "index": 0, "coefficient": 0.2, "mean": 0.1},
            {"kind": "missing", "feature": "crp", "coefficient": 0.3, "mean": 0.1},
            {"kind": "level", "feature": "pathway", "level": 1.0, "coefficient": -0.4,
             "mean": 0.5},
            {"kind": "interaction", "feature": "crp", "level": 1.0, "coefficient": 0.6,
             "mean": 0.05},
        ],
        "intercept": -2.0,
    }  # fmt: skip


def rich_document(seed: int = 0) -> dict[str, Any]:
    """A document shaped like a fitted one (4-, 3- and no-knot inputs, a log input, missing
    indicators, nine pathways with interactions), with arbitrary coefficients and means."""
    rng = np.random.default_rng(seed)
    features: list[dict[str, Any]] = [
        {"name": "haemoglobin", "low": 30.0, "high": 250.0, "log": False, "floor": None,
         "median": 135.0, "knots": [110.0, 128.0, 140.0, 160.0]},
        {"name": "crp", "low": 0.0, "high": 500.0, "log": True, "floor": 0.1, "median": 1.2,
         "knots": [-0.5, 1.2, 3.5]},
        {"name": "nlr", "low": 0.2, "high": 60.0, "log": False, "floor": None, "median": 2.5,
         "knots": []},
        {"name": "age", "low": 0.0, "high": 120.0, "log": False, "floor": None, "median": 64.0,
         "knots": [35.0, 55.0, 70.0, 85.0]},
        {"name": "sex", "low": 0.0, "high": 1.0, "log": False, "floor": None, "median": 0.0,
         "knots": []},
    ]  # fmt: skip
    features = [{**f, "kind": "continuous"} for f in features]
    terms: list[dict[str, Any]] = [{"kind": "linear", "feature": f["name"]} for f in features]
    for f in features:
        terms += [{"kind": "spline", "feature": f["name"], "index": i}
                  for i in range(max(len(f["knots"]) - 2, 0))]  # fmt: skip
    terms += [{"kind": "missing", "feature": n} for n in ("haemoglobin", "crp", "nlr")]
    levels = [float(v) for v in range(9)]
    terms += [{"kind": "level", "feature": "pathway", "level": v} for v in levels]
    terms += [
        {"kind": "interaction", "feature": n, "level": v}
        for n in ("haemoglobin", "crp", "age")
        for v in levels
    ]
    for term in terms:
        term["coefficient"] = float(rng.normal(0, 0.5))
        term["mean"] = float(rng.normal(0, 2))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_names": [*(f["name"] for f in features), "pathway"],
        "features": [*features, {"name": "pathway", "kind": "pathway"}],
        "terms": terms,
        "intercept": float(rng.normal(-3, 1)),
    }


RICH = SplineModel(rich_document())


def test_rcs_basis_hand_computed_and_linear_beyond_the_outer_knots() -> None:
    # Knots 0, 1, 2: (x^3 - 2 (x - 1)+^3 + (x - 2)+^3) / 4.
    assert rcs_basis(np.array([-1.0, 0.5, 1.5]), [0, 1, 2])[:, 0].tolist() == [
        0.0,
        0.5**3 / 4,
        (1.5**3 - 2 * 0.5**3) / 4,
    ]
    knots = [1.0, 2.0, 4.0, 7.0]
    far = rcs_basis(np.array([8.0, 9.0, 10.0, 11.0]), knots)
    assert far.shape == (4, 2)
    np.testing.assert_allclose(np.diff(far, n=2, axis=0), 0.0, atol=1e-9)
    below = rcs_basis(np.array([-5.0, 0.0, 1.0]), knots)
    assert (below == 0).all(), "zero (so linear overall) below the first knot"


def test_margin_and_contributions_hand_computed() -> None:
    model = SplineModel(tiny_document())
    x = np.array(
        [
            [math.exp(1.5), 1.0],  # log CRP 1.5, pathway 1
            [np.nan, np.nan],  # missing CRP: the median 1.0 plus the indicator; no pathway
            [0.0, 0.0],  # below the floor: log(0.1); pathway 0 has no terms
            [1e9, 1.0],  # beyond the hard limit: as 500
            [500.0, 1.0],
        ]
    )
    spline = (1.5**3 - 2 * 0.5**3) / 4
    expected = [
        -2.0 + 0.5 * 1.5 + 0.2 * spline - 0.4 + 0.6 * (1.5 - 1.0),
        -2.0 + 0.5 * 1.0 + 0.2 * 0.25 + 0.3,
        -2.0 + 0.5 * math.log(0.1),
    ]
    margin = model.predict(x, raw_score=True)
    np.testing.assert_allclose(margin[:3], expected, rtol=0, atol=1e-12)
    assert margin[3] == margin[4]
    contributions = model.predict(x, pred_contrib=True)
    crp = 0.5 * (1.5 - 1.0) + 0.2 * (spline - 0.1) + 0.3 * (0 - 0.1) + 0.5 * 0.6 * (0.5 - 0.05)
    pathway = -0.4 * (1 - 0.5) + 0.5 * 0.6 * (0.5 - 0.05)  # the interaction split in halves
    bias = -2.0 + 0.5 * 1.0 + 0.2 * 0.1 + 0.3 * 0.1 - 0.4 * 0.5 + 0.6 * 0.05
    np.testing.assert_allclose(contributions[0], [crp, pathway, bias], rtol=0, atol=1e-12)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-12)
    assert model.predict(x[:1])[0] == pytest.approx(1 / (1 + math.exp(-expected[0])), abs=1e-15)
    assert model.decision_function(x[:1])[0] == margin[0]
    assert model.feature_name() == ["crp", "pathway"] and model.num_feature() == 2


def test_the_design_matches_the_folded_prediction() -> None:
    """`design` builds every term as written in the document; scoring folds them into cubes
    and lookup tables: the two must agree."""
    rng = np.random.default_rng(1)
    x = np.column_stack([
        rng.normal(135, 25, 500), np.exp(rng.normal(1, 2, 500)), rng.gamma(2, 2, 500),
        rng.uniform(10, 110, 500), rng.integers(0, 2, 500), rng.integers(-1, 11, 500),
    ]).astype(np.float64)  # fmt: skip
    x[rng.random(x.shape) < 0.1] = np.nan
    coefficients = np.array([t["coefficient"] for t in RICH.terms])
    by_terms = RICH.design(x) @ coefficients + RICH.document["intercept"]
    np.testing.assert_allclose(RICH.predict(x, raw_score=True), by_terms, rtol=0, atol=1e-9)
    assert RICH.design(x).shape == (500, len(RICH.terms))


# Inputs a request or a replay may send: typical, missing, infinite, far beyond the limits.
ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 600),
    st.just(np.nan),
)
ROWS = arrays(np.float64, st.tuples(st.integers(1, 20), st.just(6)), elements=ANY_FLOAT)
PATHWAY_CODES = st.lists(
    st.sampled_from([*range(9), -1.0, 2.5, 42.0, np.nan, np.inf]), min_size=20, max_size=20
)


@settings(max_examples=200, deadline=None)
@given(rows=ROWS, codes=PATHWAY_CODES)
def test_contributions_add_up_to_the_margin_for_any_input(
    rows: np.ndarray, codes: list[float]
) -> None:
    rows[:, -1] = codes[: len(rows)]
    margin = RICH.predict(rows, raw_score=True)
    contributions = RICH.predict(rows, pred_contrib=True)
    assert np.isfinite(margin).all() and np.isfinite(contributions).all()
    assert contributions.shape == (len(rows), 7)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-9)
    assert (contributions[:, -1] == contributions[0, -1]).all(), "one base for every row"
    fortran = RICH.predict(np.asfortranarray(rows), raw_score=True)  # as a frame's to_numpy
    np.testing.assert_array_equal(fortran, margin)
    for i in range(len(rows)):  # a row alone scores exactly as in a batch (API == replay)
        assert RICH.predict(rows[i : i + 1], raw_score=True)[0] == margin[i]
        np.testing.assert_array_equal(RICH.predict(rows[i : i + 1], pred_contrib=True)[0],
                                      contributions[i])  # fmt: skip


def test_large_batches_score_as_rows_do() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([
        rng.normal(135, 25, 9000), np.exp(rng.normal(1, 2, 9000)), rng.gamma(2, 2, 9000),
        rng.uniform(10, 110, 9000), rng.integers(0, 2, 9000), rng.integers(0, 9, 9000),
    ]).astype(np.float64)  # fmt: skip
    margin = RICH.predict(x, raw_score=True)  # several blocks
    for part in (x[-5:], x[::-1], x[4000:4001]):
        positions = [int(np.flatnonzero((x == row).all(axis=1))[0]) for row in part[:50]]
        assert (RICH.predict(part, raw_score=True)[:50] == margin[positions]).all()
    contributions = RICH.predict(x, pred_contrib=True)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-9)


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "spline.json"
    assert RICH.save_model(path) is RICH
    loaded = SplineModel.load(path)
    rng = np.random.default_rng(3)
    x = rng.normal(50, 60, (300, 6))
    x[:, -1] = rng.integers(0, 9, 300)
    x[rng.random(x.shape) < 0.1] = np.nan
    for flags in ({"raw_score": True}, {"pred_contrib": True}, {}):
        np.testing.assert_array_equal(loaded.predict(x, **flags), RICH.predict(x, **flags))
    assert loaded.to_dict() == RICH.to_dict() == json.loads(path.read_text())
    assert RICH.predict(np.zeros((0, 6)), pred_contrib=True).shape == (0, 7)


def test_the_model_keeps_its_own_copy_of_the_document() -> None:
    document = tiny_document()
    model = SplineModel(document)
    document["intercept"] = 5.0
    assert model.to_dict()["intercept"] == -2.0 == model.document["intercept"]


def _edit(edit: Any) -> dict[str, Any]:
    document = copy.deepcopy(tiny_document())
    edit(document)
    return document


CORRUPT = {
    "an unknown format": lambda d: d.update(format="lightgbm"),
    "a newer version": lambda d: d.update(format_version=FORMAT_VERSION + 1),
    "no terms": lambda d: d.pop("terms"),
    "a text coefficient": lambda d: d["terms"][0].update(coefficient="0.5"),
    "a non-finite mean": lambda d: d["terms"][1].update(mean=math.inf),
    "an unknown term kind": lambda d: d["terms"][0].update(kind="quadratic"),
    "a term on an unknown input": lambda d: d["terms"][0].update(feature="alp"),
    "a term twice": lambda d: d["terms"].append(dict(d["terms"][0])),
    "knots out of order": lambda d: d["features"][0].update(knots=[0.0, 2.0, 1.0]),
    "a spline term beyond its knots": lambda d: d["terms"][1].update(index=1),
    "a zero log floor": lambda d: d["features"][0].update(floor=0.0),
    "limits out of order": lambda d: d["features"][0].update(low=600.0),
    "names that disagree": lambda d: d.update(feature_names=["crp", "age"]),
    "two pathway inputs": lambda d: d["features"][0].update(kind="pathway"),
    "a log flag as text": lambda d: d["features"][0].update(log="yes"),
}


@pytest.mark.parametrize("problem", sorted(CORRUPT))
def test_corrupt_documents_are_refused_with_a_reason(problem: str, tmp_path: Path) -> None:
    path = tmp_path / "spline.json"
    path.write_text(json.dumps(_edit(CORRUPT[problem])))
    with pytest.raises(SplineModelError, match=str(path)):
        SplineModel.load(path)
    assert issubclass(SplineModelError, ValueError)


def test_unreadable_files_and_wrong_inputs_are_refused(tmp_path: Path) -> None:
    for text in ("{not json", "[1, 2]", ""):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(SplineModelError, match=r"bad\.json"):
            SplineModel.load(tmp_path / "bad.json")
    with pytest.raises(SplineModelError, match=r"missing\.json"):
        SplineModel.load(tmp_path / "missing.json")
    model = SplineModel(tiny_document())
    with pytest.raises(SplineModelError, match="rows of 2 inputs"):
        model.predict(np.zeros(2))
    with pytest.raises(SplineModelError, match="differ"):
        model.predict(pd.DataFrame({"pathway": [1.0], "crp": [3.0]}))
    frame = pd.DataFrame({"crp": [3.0], "pathway": [1.0]})
    assert (
        model.predict(frame, raw_score=True)[0]
        == model.predict(frame.to_numpy(), raw_score=True)[0]
    )
