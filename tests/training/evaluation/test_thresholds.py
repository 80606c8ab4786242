"""Threshold choice (Wilson and bootstrap lower bounds, minimum events, weighted PPV), the risk
in the green band, subgroup flags and the net-benefit grid, checked against hand computations
and brute-force resampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from training.evaluation.evaluate import evaluate_predictions
from training.evaluation.metrics import (
    bootstrap_indices,
    choose_rule_in,
    choose_rule_out,
    net_benefit,
    net_benefit_grid,
    threshold_metrics,
)
from training.evaluation.subgroups import subgroup_table


def wilson_low(k: int, n: int) -> float:
    return float(binomtest(k, n).proportion_ci(method="wilson").low)


# --------------------------------------------------------------------------- rule-out


def test_wilson_bound_threshold_by_hand_with_60_events() -> None:
    # 60 cases at 0.01, 0.02, ..., 0.60 and 200 controls; target 0.9.
    case_p = np.round(np.arange(1, 61) / 100, 2)
    control_p = np.linspace(0.001, 0.5, 200)
    y = np.r_[np.ones(60), np.zeros(200)]
    p = np.r_[case_p, control_p]
    # Wilson lower bounds: 60/60 -> 0.940, 59/60 -> 0.911, 58/60 -> 0.886 < 0.9.
    assert wilson_low(59, 60) >= 0.9 > wilson_low(58, 60), "the hand-computed boundary"
    choice = choose_rule_out(y, p, 0.9, bound="wilson", min_events=50)
    assert choice.threshold == pytest.approx(0.02), "p >= 0.02 detects 59 of 60: green misses one"
    assert choice.lower_bound == pytest.approx(wilson_low(59, 60)), "the bound reached"
    assert choice.estimate == pytest.approx(59 / 60) and choice.events == 60
    assert choice.events_in_band == 1, "one cancer is ruled out"
    assert choice.reason is None and choice.method == "wilson"
    point = choose_rule_out(y, p, 0.9, bound="point", min_events=50)
    assert point.threshold == pytest.approx(0.07), "the bare estimate allows 54/60 = 0.9"
    json.dumps(choice.to_dict())  # stored with the model


def test_no_threshold_below_the_minimum_number_of_events() -> None:
    y = np.r_[np.ones(37), np.zeros(300)]
    p = np.r_[np.linspace(0.2, 0.9, 37), np.linspace(0.0, 0.5, 300)]
    choice = choose_rule_out(y, p, 0.9, min_events=50, events_name="cancers")
    assert choice.threshold is None, "37 events < 50: no rule-out threshold"
    assert choice.reason == (
        "only 37 calibration-period cancers; at least 50 are needed to set a rule-out "
        "threshold (triage.min_events)"
    )
    rule_in = choose_rule_in(y, p, 0.5, min_events=50, events_name="cancers")
    assert rule_in.threshold is None and "at least 50" in str(rule_in.reason)


def test_unreachable_bound_says_why() -> None:
    # 60 events can never give a Wilson lower bound of 0.99 (60/60 gives 0.940).
    y = np.r_[np.ones(60), np.zeros(100)]
    p = np.r_[np.linspace(0.3, 0.9, 60), np.linspace(0.0, 0.5, 100)]
    choice = choose_rule_out(y, p, 0.99, min_events=50)
    assert choice.threshold is None
    assert choice.lower_bound == pytest.approx(wilson_low(60, 60)), "the best bound is reported"
    assert "no threshold reaches a lower 95% bound" in str(choice.reason)


def test_bootstrap_bound_matches_brute_force_resampling() -> None:
    rng = np.random.default_rng(3)
    n_cases, n_controls = 80, 320
    y = np.r_[np.ones(n_cases), np.zeros(n_controls)].astype(int)
    p = np.r_[rng.beta(4, 2, n_cases), rng.beta(2, 4, n_controls)]
    groups = np.r_[np.arange(n_cases), np.repeat(np.arange(n_cases), 4)]  # matched sets 1:4
    choice = choose_rule_out(y, p, 0.9, bound="bootstrap", groups=groups, n_boot=200, seed=5)
    # Brute force: sensitivity at each case value in each resample of whole matched sets.
    candidates = np.sort(p[y == 1])[::-1]
    samples = []
    for rows in bootstrap_indices(groups, 200, 5):
        cases = p[rows][y[rows] == 1]
        samples.append([(cases >= t).mean() for t in candidates])
    low = np.percentile(np.array(samples), 2.5, axis=0)
    estimate = np.array([(p[y == 1] >= t).mean() for t in candidates])
    meets = np.flatnonzero((estimate >= 0.9) & (low >= 0.9))
    assert choice.threshold == pytest.approx(candidates[meets[0]]), "highest t whose bound meets"
    assert choice.lower_bound == pytest.approx(low[meets[0]])
    assert choice.method == "bootstrap"


def test_rule_in_weighted_ppv_by_hand() -> None:
    y = np.array([1, 0, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.5, 0.4, 0.1])
    w = np.array([1.0, 10.0, 2.0, 1.0, 5.0])
    # Weighted PPV of p >= t: 0.9 -> 1, 0.8 -> 1/11, 0.5 -> 1/13, 0.4 -> 2/14, 0.1 -> 2/19.
    assert choose_rule_in(y, p, 0.1, weights=w, min_events=1).threshold == 0.1
    weighted = choose_rule_in(y, p, 0.12, weights=w, min_events=1)
    assert weighted.threshold == 0.4 and weighted.estimate == pytest.approx(2 / 14)
    assert weighted.method == "weighted ppv" and weighted.events_in_band == 2
    assert choose_rule_in(y, p, 0.5, weights=w, min_events=1).threshold == 0.9
    assert choose_rule_in(y, p, 0.12, min_events=1).threshold == 0.1, "unweighted: 2/5"


# --------------------------------------------------------------------------- the green band


def test_risk_in_green_by_hand() -> None:
    y = np.array([1, 0, 0, 0, 1, 0, 1, 1])
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.2, 0.3, 0.4, 0.5])
    green = threshold_metrics(y, p, 0.1, "rule_out", referral_threshold=0.03)
    # Green (p < 0.1): 4 patients, 1 cancer.
    assert green["risk_in_green"]["estimate"] == pytest.approx(1 / 4)
    assert green["risk_in_green"]["low"] == pytest.approx(wilson_low(1, 4)), "Wilson CI"
    assert green["risk_in_green_below_referral"] is False, "upper bound above 3%"
    w = np.array([1.0, 100.0, 100.0, 100.0, 1.0, 5.0, 1.0, 1.0])
    weighted = threshold_metrics(y, p, 0.1, "rule_out", weights=w, referral_threshold=0.03)
    assert weighted["risk_in_green"]["estimate"] == pytest.approx(1 / 301), "1 in 301 people"
    assert weighted["share_ruled_out"] == pytest.approx(301 / 309)
    assert weighted["specificity"]["estimate"] == pytest.approx(300 / 305)
    assert weighted["sensitivity"]["estimate"] == pytest.approx(3 / 4), "cases weigh 1"
    assert weighted["sensitivity"]["low"] == pytest.approx(wilson_low(3, 4)), "Wilson on cases"
    assert math.isnan(weighted["risk_in_green"]["low"]), "no resamples given: no weighted CI"


def test_evaluation_reports_the_green_risk_beside_the_referral_threshold() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    p = rng.beta(1, 30, n)
    frame = pd.DataFrame(
        {"patient_id": np.arange(n), "cancer": (rng.random(n) < p).astype(int), "probability": p}
    )
    result = evaluate_predictions(
        frame, rule_out=0.01, rule_in=None, referral_threshold=0.03, n_boot=20,
        true_risk_col=None, net_benefit_at=0.03, net_benefit_reason="the guideline's 3%",
    )  # fmt: skip
    green = result["thresholds"]["green"]
    ruled_out = frame["probability"] < 0.01
    events = int(frame.loc[ruled_out, "cancer"].sum())
    assert green["risk_in_green"]["estimate"] == pytest.approx(events / ruled_out.sum())
    assert green["referral_threshold"] == 0.03
    assert green["risk_in_green_below_referral"] == (green["risk_in_green"]["high"] < 0.03)
    assert result["net_benefit_at"]["reason"] == "the guideline's 3%"


# --------------------------------------------------------------------------- subgroups


def flagged_frame(seed: int = 1) -> pd.DataFrame:
    """Site A: well calibrated, cases high; site B: cases low (green misses them); site C:
    probabilities three times too high; site D: bad but only 5 events."""
    rng = np.random.default_rng(seed)
    parts = []
    for site, n, cases, case_p, scale in (
        ("A", 1500, 150, (0.2, 0.6), 1.0),
        ("B", 1500, 150, (0.001, 0.02), 1.0),
        ("C", 1500, 150, (0.2, 0.6), 3.0),
        ("D", 300, 5, (0.001, 0.002), 1.0),
    ):
        y = np.r_[np.ones(cases), np.zeros(n - cases)].astype(int)
        p = np.r_[rng.uniform(*case_p, cases), rng.uniform(0.0, 0.2 * cases / n * 2, n - cases)]
        p = np.clip(p * (cases / n) / p.mean() * scale, 1e-4, 0.99)
        parts.append(pd.DataFrame({"site": site, "cancer": y, "probability": p}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(patient_id=np.arange(len(frame)))


def test_subgroup_flags_fire_on_poor_sensitivity_and_oe_only_with_enough_events() -> None:
    frame = flagged_frame()
    table = subgroup_table(
        frame, "cancer", "probability", ["site"], 0.05, patient_col="patient_id", n_boot=200,
        seed=0, sensitivity_target=0.9, flag_min_events=20,
    )  # fmt: skip
    rows = {r["level"]: r for r in table}
    assert rows["A"]["flags"] == [], "site A: good sensitivity and O/E"
    assert "rule_out_sensitivity" in rows["B"]["flags"], "site B: the green band misses cancers"
    assert rows["B"]["rule_out_sensitivity"]["high"] < 0.9
    assert rows["C"]["flags"] == ["observed_expected"], "site C: O/E about 1/3"
    assert rows["C"]["observed_expected_ci"]["high"] < 0.8
    assert rows["D"]["flags"] == [] and not rows["D"]["checked"], "5 events: not checked"
    result = evaluate_predictions(
        frame, rule_out=0.05, rule_in=None, subgroups=("site",), n_boot=50, true_risk_col=None,
        sensitivity_target=0.9, subgroup_min_events=20,
    )  # fmt: skip
    flagged = {(f["level"], tuple(f["flags"])) for f in result["subgroups"]["flagged"]}
    assert ("C", ("observed_expected",)) in flagged and any(lv == "B" for lv, _ in flagged)
    assert all(lv in ("B", "C") for lv, _ in flagged), "only the constructed bad sites"


def test_subgroup_auc_ci_is_the_patient_bootstrap_of_sklearn_auc() -> None:
    rng = np.random.default_rng(2)
    n = 900
    frame = pd.DataFrame(
        {
            "patient_id": rng.integers(0, 700, n),
            "sex": rng.choice(["female", "male"], n),
            "cancer": (rng.random(n) < 0.3).astype(int),
        }
    )
    frame["probability"] = np.clip(0.3 + 0.2 * frame["cancer"] + rng.normal(0, 0.2, n), 0.01, 0.99)
    rows = subgroup_table(frame, "cancer", "probability", ["sex"], None, patient_col="patient_id",
                          n_boot=40, seed=9)  # fmt: skip
    y, p, sex = frame["cancer"].to_numpy(), frame["probability"].to_numpy(), frame["sex"]
    for row in rows:
        mask = (sex == row["level"]).to_numpy()
        samples = [
            roc_auc_score(y[r][mask[r]], p[r][mask[r]])
            for r in bootstrap_indices(frame["patient_id"].to_numpy(), 40, 9)
        ]
        assert row["auc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
        assert (row["auc_low"], row["auc_high"]) == pytest.approx(
            tuple(np.percentile(samples, [2.5, 97.5]))
        ), f"{row['level']}: the vectorised subgroup bootstrap equals sklearn on the resamples"
        expected = [y[r][mask[r]].sum() / p[r][mask[r]].sum() for r in
                    bootstrap_indices(frame["patient_id"].to_numpy(), 40, 9)]  # fmt: skip
        oe = row["observed_expected_ci"]
        assert (oe["low"], oe["high"]) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))


# --------------------------------------------------------------------------- net benefit


def test_net_benefit_grid_suits_the_prevalence() -> None:
    rare = net_benefit_grid(0.0006)
    assert rare.min() == pytest.approx(0.00012) and rare.max() == pytest.approx(0.018)
    common = net_benefit_grid(0.05)
    assert common.min() == pytest.approx(0.01) and common.max() == pytest.approx(0.5)
    assert np.all(np.diff(np.log(common)) > 0), "ascending log grid"


def test_weighted_net_benefit_by_hand() -> None:
    y, p = np.array([1, 0, 1, 0]), np.array([0.6, 0.5, 0.2, 0.1])
    w = np.array([1.0, 20.0, 1.0, 50.0])
    row = net_benefit(y, p, np.array([0.3]), w).iloc[0]
    # p >= 0.3: TP weight 1, FP weight 20, of 72 people; odds 3/7.
    assert row["model"] == pytest.approx(1 / 72 - 20 / 72 * 3 / 7)
    assert row["treat_all"] == pytest.approx(2 / 72 - 70 / 72 * 3 / 7)


def test_a_bootstrap_sensitivity_bound_is_used_for_the_green_band_too() -> None:
    """The evaluation's interval follows the method the threshold was chosen with (the gate)."""
    rng = np.random.default_rng(4)
    n = 1200
    frame = pd.DataFrame({"patient_id": rng.integers(0, 900, n), "cancer": rng.random(n) < 0.2})
    frame["cancer"] = frame["cancer"].astype(int)
    frame["probability"] = np.clip(0.1 + 0.3 * frame["cancer"] + rng.normal(0, 0.1, n), 0.01, 0.99)
    result = evaluate_predictions(
        frame, rule_out=0.2, rule_in=None, sensitivity_bound="bootstrap", n_boot=40, seed=3,
        true_risk_col=None,
    )  # fmt: skip
    green = result["thresholds"]["green"]
    assert green["sensitivity_ci_method"] == "bootstrap" and green["ci_method"] == "wilson"
    y, p = frame["cancer"].to_numpy(), frame["probability"].to_numpy()
    samples = [
        (p[r][y[r] == 1] >= 0.2).mean()
        for r in bootstrap_indices(frame["patient_id"].to_numpy(), 40, 3)
    ]
    low, high = np.percentile(samples, [2.5, 97.5])
    assert (green["sensitivity"]["low"], green["sensitivity"]["high"]) == pytest.approx((low, high))


def test_rule_out_holds_within_every_subgroup_level_with_enough_events() -> None:
    # 100 old cases at p 0.5-0.99; 40 young cases, 36 at p 0.30-0.49 and 4 at p 0.02; 1,000
    # non-cases at p 0.01. Overall, 0.9 sensitivity allows 14 missed cases, 10 of them young
    # ones: the young level then has 26/40 = 0.65. Within age band, the young level must reach
    # 0.9 itself (36/40: every case at 0.30-0.49 caught), which lowers the cut-off.
    old = np.linspace(0.5, 0.99, 100)
    young_high = np.linspace(0.3, 0.49, 36)
    young_low = np.full(4, 0.02)
    p = np.concatenate([old, young_high, young_low, np.full(1000, 0.01)])
    y = np.concatenate([np.ones(140), np.zeros(1000)]).astype(int)
    band = np.array(["old"] * 100 + ["young"] * 40 + ["old"] * 1000, dtype=object)
    plain = choose_rule_out(y, p, 0.9, bound="point", min_events=50)
    # 0.9 x 140 = 126 cases caught: the 126th highest case value is young_high's 11th lowest.
    assert plain.threshold == pytest.approx(np.sort(young_high)[10])
    assert plain.limited_by is None
    within = choose_rule_out(y, p, 0.9, bound="point", min_events=50, within={"age": band},
                             within_min_events=20)  # fmt: skip
    # Young: 36 of 40 = 0.9 only when every young_high case is caught: t = min(young_high).
    assert within.threshold == pytest.approx(young_high.min())
    assert within.limited_by == "age young"
    assert within.estimate == pytest.approx(136 / 140)
    few = choose_rule_out(y, p, 0.9, bound="point", min_events=50, within={"age": band},
                          within_min_events=41)  # fmt: skip
    assert few.threshold == plain.threshold, "a level with too few cases does not bind"
