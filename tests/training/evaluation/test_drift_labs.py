"""Drift judged per lab against each lab's own training reference: the lab-mix reference by hand,
standing differences between labs, empty input, and the console summary."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.reference import reference_statistics
from training.evaluation import drift
from training.evaluation.drift_reference import lab_mix

# One feature with edges [10, 20]: value bins (<10), [10, 20), (>=20), then missing. Lab a sits
# low, lab b high and is missing half the time; the pooled shares are their 1000:500 mixture.
LAB_A: dict[str, Any] = {"n": 1000, "missing_rate": 0.0, "shares": [0.6, 0.3, 0.1, 0.0]}
LAB_B: dict[str, Any] = {"n": 500, "missing_rate": 0.5, "shares": [0.05, 0.15, 0.3, 0.5]}
POOLED = {
    "n": 1500, "missing_rate": 250 / 1500, "edges": [10.0, 20.0],
    "shares": [(600 + 25) / 1500, (300 + 75) / 1500, (100 + 150) / 1500, 250 / 1500],
}  # fmt: skip
REFERENCE: dict[str, Any] = {
    "features": {"x": POOLED},
    "score": {"n": 1500, "missing_rate": 0.0, "edges": [0.5], "shares": [0.5, 0.5, 0.0]},
    "by_lab": {
        "a": {"n": 1000, "features": {"x": LAB_A}, "score": {**LAB_A, "shares": [0.5, 0.5, 0]}},
        "b": {"n": 500, "features": {"x": LAB_B}, "score": {**LAB_B, "shares": [0.5, 0.5, 0]}},
    },
}
EDGES_X = [10.0, 20.0]
BIN_VALUES = [5.0, 15.0, 25.0, np.nan]  # one value per bin of x


def _rows(shares: list[float], n: int) -> list[float]:
    """n values of x spread over the bins in exactly these shares."""
    counts = np.round(np.asarray(shares) * n).astype(int)
    return [v for v, c in zip(BIN_VALUES, counts, strict=True) for _ in range(c)]


def _table(labs: dict[str, list[float]], reference: dict[str, Any] = REFERENCE) -> pd.DataFrame:
    values = [v for rows in labs.values() for v in rows]
    lab = [name for name, rows in labs.items() for _ in rows]
    counts = drift.bin_counts(pd.DataFrame({"x": values}), reference, ["2017"] * len(lab), lab)
    return drift.drift_table(counts, reference)


def _row(table: pd.DataFrame, lab: str, period: str = "2017") -> pd.Series:
    rows = table[(table["feature"] == "x") & (table["lab"] == lab) & (table["period"] == period)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_lab_mix_reference_by_hand() -> None:
    # A segment of 300 rows at a (300 observed) and 100 at b (50 observed).
    mixed = lab_mix(REFERENCE, "x", {"a": (300, 300), "b": (100, 50)})
    a_observed, b_observed = np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.3, 0.6])
    assert mixed.shares == pytest.approx((300 * a_observed + 50 * b_observed) / 350)
    assert mixed.missing_rate == pytest.approx((300 * 0.0 + 100 * 0.5) / 400)
    # Effective rows of the mixture: 1 / sum(w^2 / n) with w the segment's shares.
    assert mixed.n == pytest.approx(1 / (0.75**2 / 1000 + 0.25**2 / 500))
    assert mixed.n_observed == pytest.approx(1 / ((300 / 350) ** 2 / 1000 + (50 / 350) ** 2 / 250))
    assert mixed.source == "lab mix"
    only_a = lab_mix(REFERENCE, "x", {"a": (10, 10)})
    assert only_a.shares == pytest.approx(a_observed) and only_a.n == 1000, "one lab: its own"


def test_a_lab_unknown_to_the_reference_mixes_in_the_pooled_one() -> None:
    mixed = lab_mix(REFERENCE, "x", {"a": (100, 100), "new": (100, 100)})
    pooled = np.array([625, 375, 250]) / 1250
    assert mixed.shares == pytest.approx((np.array([0.6, 0.3, 0.1]) + pooled) / 2)
    assert mixed.n == pytest.approx(1 / (0.25 / 1000 + 0.25 / 1500))
    old = {k: v for k, v in REFERENCE.items() if k != "by_lab"}
    assert lab_mix(old, "x", {"a": (100, 100), "b": (5, 5)}).source == "pooled"
    # A lab that never measured x in training but does now: the pooled shares and rows stand in.
    never = {"n": 400, "missing_rate": 1.0, "shares": [0.0, 0.0, 0.0, 1.0]}
    with_c = {**REFERENCE, "by_lab": {**REFERENCE["by_lab"], "c": {"features": {"x": never}}}}
    mixed = lab_mix(with_c, "x", {"a": (100, 100), "c": (100, 100)})
    assert mixed.shares == pytest.approx((np.array([0.6, 0.3, 0.1]) + pooled) / 2)
    assert mixed.n_observed == pytest.approx(1 / (0.25 / 1000 + 0.25 / 1250))
    assert mixed.missing_rate == pytest.approx(0.5), "missingness: c's own rate (100%)"


def test_a_change_in_lab_mix_alone_is_not_drift_at_all_labs() -> None:
    # 2017: nine rows in ten from lab a (training: two in three), each lab as in training.
    labs = {"a": _rows(LAB_A["shares"], 1800), "b": _rows(LAB_B["shares"], 200)}
    table = _table(labs)
    everyone = _row(table, "all")
    assert everyone["reference"] == "lab mix"
    assert everyone["psi"] == pytest.approx(0, abs=1e-9) and not everyone["flagged"], everyone
    assert everyone["reference_missing_rate"] == pytest.approx(0.05), "the segment's own mix"
    assert _row(table, "a")["reference"] == "own lab" and not table["flagged"].any()
    # Against the pooled reference (a model saved before per-lab references) it would be drift.
    pooled = _table(labs, {k: v for k, v in REFERENCE.items() if k != "by_lab"})
    assert set(pooled["reference"]) == {"pooled"}, "the output says what it compared with"
    assert drift.console_summary(pooled)[-1].startswith("every lab compared with the pooled")
    assert drift.console_summary(table) == ["no drift flags"]
    assert _row(pooled, "all")["flagged"] and _row(pooled, "b")["missingness_flag"]


def test_a_large_change_at_one_lab_shows_at_that_lab_and_at_all_labs() -> None:
    shifted = [0.0, 0.0, 0.5, 0.5]  # every value of lab b now in the top bin
    table = _table({"a": _rows(LAB_A["shares"], 1000), "b": _rows(shifted, 3000)})
    b, everyone = _row(table, "b"), _row(table, "all")
    assert b["psi"] == pytest.approx(_psi([0.1, 0.3, 0.6], [1e-4, 1e-4, 1.0]))
    assert b["psi_flag"] == "major" and b["reference"] == "own lab", b
    # All labs: 1000 observed at a, 1500 at b, against the mix of their references.
    observed = np.array([600, 300, 100 + 1500]) / 2500
    mixed = (1000 * np.array([0.6, 0.3, 0.1]) + 1500 * np.array([0.1, 0.3, 0.6])) / 2500
    assert everyone["psi"] == pytest.approx(_psi(mixed.tolist(), observed.tolist()))
    assert everyone["psi_flag"] == "major" and not _row(table, "a")["flagged"]


def _psi(expected: list[float], actual: list[float]) -> float:
    e, a = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
    return float(sum((x - y) * math.log(x / y) for y, x in zip(e, a, strict=True)))


def _labs_world(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """ESR measured at labs a and b (60% of rows), never at lab c, which measures plasma
    viscosity instead; albumin everywhere."""
    lab = rng.choice(np.array(["a", "b", "c"], dtype=object), size=n, p=[0.5, 0.3, 0.2])
    esr = np.where((lab != "c") & (rng.random(n) < 0.6), rng.gamma(2.0, 8.0, n), np.nan)
    pv = np.where((lab == "c") & (rng.random(n) < 0.6), rng.normal(1.6, 0.1, n), np.nan)
    frame = pd.DataFrame({"esr": esr, "plasma_viscosity": pv, "albumin": rng.normal(40, 3, n)})
    return frame, lab


def test_a_lab_that_never_measures_an_analyte_is_a_standing_difference_not_drift() -> None:
    rng = np.random.default_rng(3)
    train, train_labs = _labs_world(6000, rng)
    reference = reference_statistics(train, rng.random(6000), labs=train_labs)
    later, later_labs = _labs_world(8000, rng)
    periods = np.where(np.arange(8000) < 4000, "2017", "2018").astype(object)
    counts = drift.bin_counts(later, reference, periods, later_labs, score=rng.random(8000))
    table = drift.drift_table(counts, reference)
    assert not table["flagged"].any(), drift.flagged(table).to_string()
    esr_c = table[(table["feature"] == "esr") & (table["lab"] == "c")]
    assert (esr_c["missing_rate"] == 1).all() and (esr_c["reference"] == "own lab").all()
    standing = drift.standing_differences(reference, kinds={"esr": "analyte"})
    found = standing.set_index(["feature", "lab"])
    assert found.loc[("esr", "c"), "missing_rate"] == 1.0
    pooled = float(np.isnan(train["esr"]).mean())
    assert found.loc[("esr", "c"), "pooled_missing_rate"] == pytest.approx(pooled)
    assert found.loc[("esr", "c"), "what"] == f"not measured here (missing 100% vs {pooled:.0%})"
    assert found.loc[("esr", "c"), "kind"] == "analyte"
    assert ("plasma_viscosity", "a") in found.index and ("albumin", "a") not in found.index
    # The same replay against the pooled reference (an older model): ESR at c flagged each year.
    old = {k: v for k, v in reference.items() if k != "by_lab"}
    before = drift.flagged(drift.drift_table(counts, old))
    assert {("esr", "c", "2017"), ("esr", "c", "2018")} <= set(
        zip(before["feature"], before["lab"], before["period"], strict=True)
    )
    assert drift.standing_differences(old).empty and list(drift.standing_differences(old)) == (
        drift.STANDING_COLUMNS
    )


def test_standing_distribution_difference_gives_the_psi_against_the_pooled_values() -> None:
    standing = drift.standing_differences(REFERENCE).set_index(["feature", "lab"])
    pooled = np.array([625, 375, 250]) / 1250
    by_hand = sum((a - p) * math.log(a / p) for a, p in zip([0.1, 0.3, 0.6], pooled, strict=True))
    assert standing.loc[("x", "b"), "psi_vs_pooled"] == pytest.approx(by_hand)
    assert standing.loc[("x", "b"), "what"] == (
        f"measured less often (missing 50% vs 17%); distribution differs (PSI {by_hand:.2f})"
    )


def test_empty_counts_give_an_empty_table_that_every_reader_takes() -> None:
    empty = drift.combine_counts([])
    table = drift.drift_table(empty, REFERENCE)
    assert list(table.columns) == drift.DRIFT_COLUMNS and table.empty
    assert drift.flagged(table).empty and drift.flag_groups(table) == []
    summary = drift.drift_summary(table)
    assert summary["flagged"] == 0 and summary["by_group"] == [] and summary["rows"] == []
    assert drift.console_summary(table) == ["no drift flags"]
    score = table[table["feature"] == drift.SCORE]
    pivot = score.pivot_table(index="period", columns="lab", values="psi", aggfunc="first")
    assert pivot.empty


def _flag_rows(rows: list[tuple[str, str, str, float, str, float, bool]]) -> pd.DataFrame:
    """A drift table of flagged rows: (feature, lab, period, psi, psi_flag, missing_change,
    missingness_flag)."""
    frame = pd.DataFrame(
        rows,
        columns=[
            "feature",
            "lab",
            "period",
            "psi",
            "psi_flag",
            "missing_change",
            "missingness_flag",
        ],
    )
    flags = (frame["psi_flag"] != "") | frame["missingness_flag"]
    return frame.assign(flagged=flags, psi_p_value=0.0, missing_p_value=0.0, n=1000)


def test_console_summary_groups_flags_by_analyte_and_lab_biggest_first() -> None:
    table = _flag_rows(
        [
            ("esr", "lab_b", "2019", float("nan"), "", 0.4, True),
            ("albumin", "lab_c", "2017", 2.0, "major", 0.0, False),
            ("albumin", "lab_c", "2018", 4.5, "major", 0.0, False),
            ("albumin", "lab_c", "2019", 4.4, "major", 0.0, False),
            ("albumin", "lab_c", "all", 0.9, "major", 0.0, False),
            ("alt", "all", "2016", 0.12, "moderate", 0.0, False),
            ("alt", "all", "2018", 0.3, "major", 0.0, False),
            ("alt", "all", "2019", 0.2, "moderate", -0.2, True),
            ("crp", "lab_a", "2015", 0.01, "", 0.0, False),  # not flagged
        ]
    )
    assert drift.console_summary(table) == [
        "albumin at lab_c: PSI major in 2017\u20132019 (max 4.50)",
        "alt at all labs: PSI major in 2018; moderate in 2016, 2019 (max 0.30); "
        "missingness -0.20 in 2019",
        "esr at lab_b: missingness +0.40 in 2019",
    ]
    assert drift.console_summary(table, limit=1)[1:] == ["\u2026 and 2 more groups"]
    groups = drift.drift_summary(table)["by_group"]
    assert [(g["feature"], g["lab"], g["flags"]) for g in groups] == [
        ("albumin", "lab_c", 4), ("alt", "all", 3), ("esr", "lab_b", 1)
    ]  # fmt: skip
    assert groups[0]["periods"] == ["2017", "2018", "2019", "all"] and groups[0]["max_psi"] == 4.5
    assert groups[2]["max_psi"] is None and groups[2]["missing_change"] == 0.4


def test_a_flag_needs_its_p_value_below_0_001_shared_among_the_tables_tests() -> None:
    from training.evaluation.drift_reference import noise_threshold

    assert noise_threshold([0.5, float("nan"), 0.2, 0.01]) == pytest.approx(0.001 / 3)
    # Lab b measured in 20% more rows than in training: 400 rows, p about 2e-9.
    labs = {"a": _rows(LAB_A["shares"], 1000), "b": _rows([0.1, 0.3, 0.3, 0.3], 400)}
    table = _table(labs)
    b = _row(table, "b")
    tests = np.isfinite(table["psi_p_value"]).sum() + np.isfinite(table["missing_p_value"]).sum()
    assert drift.drift_summary(table)["thresholds"]["tests"] == tests == 12, (
        "psi + missing: a, b, all in 2017 and overall"
    )
    assert b["missingness_flag"] and b["missing_p_value"] < 0.001 / tests
    # Missing 34% against 50% in 150 rows: z = 0.16 / 0.0464, p about 0.00057: beyond 0.001 on its
    # own, not beyond 0.001 / 12.
    few = {"a": _rows(LAB_A["shares"], 1000), "b": _rows([0.2, 0.2, 0.26, 0.34], 150)}
    small = _row(_table(few), "b")
    assert small["missing_p_value"] == pytest.approx(0.00057, abs=0.00002)
    assert not small["missingness_flag"] and abs(small["missing_change"]) > 0.1, small
