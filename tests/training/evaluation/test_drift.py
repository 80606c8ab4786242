"""Drift functions on hand-written frames with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.evaluation import drift

# One feature with edges [10, 20]: bins (<10), [10, 20), (>=20), then missing.
REFERENCE = {
    "features": {
        "x": {"n": 1000, "missing_rate": 0.2, "edges": [10.0, 20.0], "shares": [0.2, 0.4, 0.2, 0.2]}
    },
    "score": {"n": 1000, "missing_rate": 0.0, "edges": [0.5], "shares": [0.5, 0.5, 0.0]},
}


def _psi(expected: list[float], actual: list[float]) -> float:
    return sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def test_period_labels_are_years_and_unknown_for_missing_dates() -> None:
    dates = pd.Series(pd.to_datetime(["2016-12-31", "2017-01-01", None]))
    assert list(drift.period_labels(dates)) == ["2016", "2017", "unknown"], "year, or unknown"


@pytest.mark.parametrize("with_missing", [False, True])
def test_period_categories_equal_a_categorical_of_the_labels(with_missing: bool) -> None:
    dates = pd.Series(pd.to_datetime(["2019-03-01", "2011-01-01", None, "2019-12-31"]))
    dates = dates if with_missing else dates.dropna()
    expected = pd.Categorical(drift.period_labels(dates))
    got = drift.period_categories(dates)
    pd.testing.assert_extension_array_equal(got, expected)


def test_segments_number_the_pairs_found_in_order() -> None:
    period = np.array(["2018", "2017", "2018", "2017", "2019"], dtype=object)
    lab = np.array(["b", "a", "b", "b", "a"], dtype=object)
    segment, uniques = drift.segments(period, lab)
    assert [uniques[s] for s in segment] == list(zip(period, lab, strict=True)), "each row's pair"
    assert len(uniques) == 4, "one segment per distinct pair found"
    missing = np.array(["2018", None, "2018", "2017", "2019"], dtype=object)
    segment, uniques = drift.segments(missing, lab)  # a missing period: the np.unique path
    assert len(uniques) == 4 and segment[0] == segment[2], "pairs still numbered consistently"


def test_bin_counts_follow_the_reference_bins_per_segment() -> None:
    features = pd.DataFrame({"x": [5.0, 10.0, 19.9, 20.0, np.nan, 25.0], "y": [1.0] * 6})
    counts = drift.bin_counts(
        features, REFERENCE, ["2017"] * 4 + ["2018"] * 2, ["a", "a", "a", "b", "b", "b"],
        score=[0.1, 0.6, 0.7, 0.2, 0.9, 0.5],
    )  # fmt: skip
    x = counts[counts["feature"] == "x"].set_index(["period", "lab", "bin"])["count"].to_dict()
    # 10.0 and 19.9 fall in [10, 20) (right-closed searchsorted, as in binned_shares).
    assert x == {("2017", "a", 0): 1, ("2017", "a", 1): 2, ("2017", "b", 2): 1,
                 ("2018", "b", 3): 1, ("2018", "b", 2): 1}, x  # fmt: skip
    assert "y" not in set(counts["feature"]), "features without reference statistics are skipped"
    score = counts[counts["feature"] == drift.SCORE]
    assert score["count"].sum() == 6, "the score is counted too"


def test_combine_counts_adds_chunks_up() -> None:
    frame = pd.DataFrame({"x": [5.0, 15.0]})
    one = drift.bin_counts(frame, REFERENCE, ["2017", "2017"], ["a", "a"])
    combined = drift.combine_counts([one, one])
    assert combined["count"].tolist() == [2, 2], "the same chunk twice doubles every count"


def test_psi_of_observed_values_and_missingness_change_by_hand() -> None:
    # 300 rows at lab a in 2017: 60 missing (rate 0.2, as in training), observed values all in
    # the first value bin -> observed shares (1, 0, 0) against (0.25, 0.5, 0.25).
    features = pd.DataFrame({"x": [5.0] * 240 + [np.nan] * 60})
    counts = drift.bin_counts(features, REFERENCE, ["2017"] * 300, ["a"] * 300)
    table = drift.drift_table(counts, REFERENCE, kinds={"x": "analyte"})
    row = table[(table["feature"] == "x") & (table["lab"] == "a") & (table["period"] == "2017")]
    row = row.iloc[0]
    expected = _psi([0.25, 0.5, 0.25], [1.0, 1e-4, 1e-4])
    assert row["psi"] == pytest.approx(expected), "PSI on observed values, empty bins at 1e-4"
    assert row["missing_rate"] == pytest.approx(0.2) and row["missing_change"] == pytest.approx(0)
    assert row["psi_flag"] == "major" and row["flagged"], "a PSI of ~3 is major"
    assert not row["missingness_flag"], "the missing rate did not change"
    assert row["kind"] == "analyte", "kinds are carried"
    levels = set(zip(table["lab"], table["period"], strict=True))
    assert {("all", "all"), ("a", "all"), ("all", "2017"), ("a", "2017")} <= levels, levels


def test_a_lab_that_stops_measuring_is_a_missingness_flag_not_a_psi() -> None:
    features = pd.DataFrame({"x": [np.nan] * 400})
    counts = drift.bin_counts(features, REFERENCE, ["2018"] * 400, ["c"] * 400)
    row = drift.drift_table(counts, REFERENCE).iloc[0]
    assert math.isnan(row["psi"]), "no observed values: no PSI (not an epsilon-driven huge one)"
    assert row["missing_change"] == pytest.approx(0.8) and row["missingness_flag"], row


def test_small_segments_get_no_psi_and_noise_is_not_flagged() -> None:
    small = pd.DataFrame({"x": [5.0] * 50})
    counts = drift.bin_counts(small, REFERENCE, ["2017"] * 50, ["a"] * 50)
    assert math.isnan(drift.drift_table(counts, REFERENCE).iloc[0]["psi"]), "< min_rows: no PSI"
    assert drift.psi_flag(0.3, p_value=0.2) == "", "a PSI within sampling noise is not flagged"
    assert drift.psi_flag(0.3, p_value=1e-6) == "major"
    assert drift.psi_flag(0.15, p_value=1e-6) == "moderate"
    assert drift.psi_flag(0.05, p_value=1e-6) == "", "below 0.1: stable"


def test_psi_p_value_matches_the_chi_squared_approximation() -> None:
    # n_eff = 1 / (1/100 + 1/100) = 50; 50 * 0.2 = 10 on 2 degrees of freedom: exp(-10 / 2).
    assert drift.psi_p_value(0.2, 100, 100, 3) == pytest.approx(math.exp(-5)), "chi2(2) tail"


def test_flagged_rows_and_summary() -> None:
    features = pd.DataFrame({"x": [5.0] * 240 + [np.nan] * 60 + [15.0] * 300})
    counts = drift.bin_counts(features, REFERENCE, ["2017"] * 600, ["a"] * 300 + ["b"] * 300)
    table = drift.drift_table(counts, REFERENCE)
    rows = drift.flagged(table)
    assert rows["flagged"].all() and len(rows) >= 2, "lab a (values) and lab b (missingness)"
    summary = drift.drift_summary(table)
    assert summary["flagged"] == len(rows) and summary["thresholds"]["psi_major"] == 0.25
    assert all(r["psi"] is None or isinstance(r["psi"], float) for r in summary["rows"]), (
        "NaN becomes None so that the manifest is valid JSON"
    )
