"""Per-lab reference statistics: the pooled bins, each lab's own shares, small labs left out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.reference import MIN_LAB_ROWS, lab_names, reference_statistics


def _frame(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    n_a, n_b, n_small = 900, 600, MIN_LAB_ROWS - 1
    labs = np.array(["a"] * n_a + ["b"] * n_b + ["tiny"] * n_small, dtype=object)
    x = np.concatenate([rng.normal(10, 2, n_a), rng.normal(14, 2, n_b), rng.normal(12, 2, n_small)])
    x[: n_a // 3] = np.nan  # a third of lab a's rows without a value
    return pd.DataFrame({"x": x}), labs, rng.random(len(labs))


def _shares_by_hand(values: np.ndarray, edges: list[float], weights: np.ndarray) -> list[float]:
    """Weighted share per bin, counting edges at or below each value; the last bin: missing."""
    shares = np.zeros(len(edges) + 2)
    for value, weight in zip(values, weights, strict=True):
        shares[len(edges) + 1 if np.isnan(value) else sum(e <= value for e in edges)] += weight
    return list(shares / weights.sum())


@pytest.mark.parametrize("weighted", [False, True])
def test_each_lab_has_its_shares_in_the_pooled_bins(weighted: bool) -> None:
    rng = np.random.default_rng(1)
    frame, labs, score = _frame(rng)
    weights = rng.uniform(1, 5, len(labs)) if weighted else None
    reference = reference_statistics(frame, score, weights, labs=labs)
    assert set(reference["by_lab"]) == {"a", "b"}, f"fewer than {MIN_LAB_ROWS} rows: pooled only"
    edges = reference["features"]["x"]["edges"]
    w = np.ones(len(labs)) if weights is None else weights
    for lab in ("a", "b"):
        rows = labs == lab
        own = reference["by_lab"][lab]
        assert own["n"] == rows.sum() and own["features"]["x"]["n"] == rows.sum()
        expected = _shares_by_hand(frame["x"].to_numpy()[rows], edges, w[rows])
        assert own["features"]["x"]["shares"] == pytest.approx(expected)
        assert own["features"]["x"]["missing_rate"] == pytest.approx(expected[-1])
        score_edges = reference["score"]["edges"]
        by_hand = _shares_by_hand(score[rows], score_edges, w[rows])
        assert own["score"]["shares"] == pytest.approx(by_hand)
    assert reference["by_lab"]["a"]["features"]["x"]["missing_rate"] == pytest.approx(
        np.average(np.isnan(frame["x"][:900]), weights=w[:900])
    )


def test_without_labs_no_per_lab_reference_and_missing_labs_are_unknown() -> None:
    rng = np.random.default_rng(2)
    frame, labs, score = _frame(rng)
    assert "by_lab" not in reference_statistics(frame, score)
    labs[:MIN_LAB_ROWS] = None
    assert list(lab_names(np.array(["a", None, 3], dtype=object))) == ["a", "unknown", "3"]
    assert "unknown" in reference_statistics(frame, score, labs=labs)["by_lab"]
