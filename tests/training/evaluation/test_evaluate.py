"""Evaluation metrics: hand-computed values on tiny examples, then the whole report on a frame."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from training.evaluation.evaluate import (
    by_period,
    evaluate_predictions,
    oracle_summary,
    subgroup_table,
)
from training.evaluation.metrics import (
    auc,
    auc_ci,
    bayes_ppv_npv,
    bootstrap_indices,
    brier,
    calibration_curve,
    calibration_summary,
    choose_rule_in_threshold,
    choose_rule_out_threshold,
    net_benefit,
    number_needed_to_test,
    paired_auc_difference,
    roc_points,
    threshold_metrics,
    wilson_interval,
)

# Ten patients, four cancers (at 0.2, 0.5, 0.7, 0.8); PPV is not monotone in the threshold.
P10 = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
Y10 = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 0])


def synthetic_predictions(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Predictions with known true risk, repeat patients, dates over 2017-2019 and subgroups."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0.0, 1.2, n)
    true_risk = expit(-2.5 + signal)
    return pd.DataFrame(
        {
            "patient_id": rng.integers(0, int(n * 0.8), n),
            "index_date": pd.Timestamp("2017-01-01")
            + pd.to_timedelta(rng.integers(0, 3 * 365, n), unit="D"),
            "age": rng.uniform(18, 95, n).round(),
            "sex": rng.choice(["female", "male"], n),
            "deprivation": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0, np.nan], n),
            "true_risk": true_risk,
            "cancer": (rng.random(n) < true_risk).astype(int),
            "probability": expit(-2.5 + 0.9 * signal + rng.normal(0.0, 0.5, n)),
        }
    )


# --------------------------------------------------------------------------- basic metrics


def test_auc_matches_a_hand_count_of_pairs_with_a_tie() -> None:
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.4, 0.35, 0.8, 0.6, 0.6]
    # Cases 0.35, 0.8, 0.6 against controls 0.1, 0.4, 0.6: wins 1 + 3 + 2, one tie = 6.5 of 9.
    assert auc(y, p) == pytest.approx(6.5 / 9), "AUC counts concordant pairs, ties as 1/2"
    assert math.isnan(auc([1, 1], [0.2, 0.3])), "AUC is undefined (NaN) with one class"


def test_brier_and_observed_expected_by_hand() -> None:
    y, p = [1, 0, 1, 0], [0.8, 0.3, 0.6, 0.1]
    assert brier(y, p) == pytest.approx((0.04 + 0.09 + 0.16 + 0.01) / 4), "Brier = mean (y-p)^2"
    summary = calibration_summary(y, p)
    assert summary["observed_expected"] == pytest.approx(2 / 1.8), "O/E = sum(y) / sum(p)"
    assert summary["brier"] == pytest.approx(0.075), "the summary carries the same Brier score"


def test_wilson_interval_known_case() -> None:
    interval = wilson_interval(8, 10)
    assert interval["estimate"] == pytest.approx(0.8), "the estimate is the proportion"
    assert interval["low"] == pytest.approx(0.4902, abs=1e-4), "Wilson 8/10 lower bound 0.4902"
    assert interval["high"] == pytest.approx(0.9433, abs=1e-4), "Wilson 8/10 upper bound 0.9433"
    scipy_ci = binomtest(8, 10).proportion_ci(method="wilson")
    assert (interval["low"], interval["high"]) == pytest.approx((scipy_ci.low, scipy_ci.high)), (
        "agrees with scipy's Wilson interval"
    )
    assert math.isnan(wilson_interval(0, 0)["estimate"]), "an empty denominator gives NaN"


# --------------------------------------------------------------------------- thresholds


def test_rule_out_threshold_is_the_highest_meeting_the_sensitivity_target() -> None:
    # Sensitivity of p >= t: 4/4 up to t=0.2, 3/4 for t in 0.3..0.5, 2/4 for 0.6..0.7.
    assert choose_rule_out_threshold(Y10, P10, 0.75) == 0.5, "highest t with sensitivity >= 0.75"
    assert choose_rule_out_threshold(Y10, P10, 1.0) == 0.2, "full sensitivity: the lowest case"
    assert choose_rule_out_threshold(np.zeros(10), P10, 0.9) is None, "no cancers: undefined"


def test_rule_in_threshold_is_the_lowest_meeting_the_ppv_target() -> None:
    # PPV of p >= t: 0.5 -> 3/5, 0.6 -> 2/4, 0.7 -> 2/3, 0.8 -> 1/2, 0.4 -> 3/6, 0.2 -> 4/8.
    assert choose_rule_in_threshold(Y10, P10, 0.6) == 0.5, "lowest t with PPV >= 0.6"
    assert choose_rule_in_threshold(Y10, P10, 0.9) is None, "no threshold reaches PPV 0.9"


def test_rule_in_threshold_at_a_prevalence_uses_bayes() -> None:
    # At prevalence 1%: t=0.7 has sens 2/4, spec 5/6 -> PPV 0.005 / (0.005 + 0.99/6) = 0.0294;
    # t=0.5 (sens 3/4, spec 4/6) gives 0.0222 and t=0.2 (sens 1, spec 2/6) 0.0149.
    assert choose_rule_in_threshold(Y10, P10, 0.025, prevalence=0.01) == 0.7, (
        "PPV is computed by Bayes at the stated prevalence, not from the sample"
    )
    assert choose_rule_in_threshold(Y10, P10, 0.05, prevalence=0.01) is None, "unreachable"


def test_threshold_metrics_by_hand() -> None:
    green = threshold_metrics(Y10, P10, 0.5, "rule_out")
    counts = (green["tp"], green["fp"], green["tn"], green["fn"])
    assert counts == (3, 2, 4, 1), "p >= 0.5 holds cases 0.5, 0.7, 0.8 and controls 0.6, 0.9"
    assert green["sensitivity"]["estimate"] == pytest.approx(0.75), "3 of 4 cancers detected"
    assert green["specificity"]["estimate"] == pytest.approx(4 / 6), "4 of 6 controls negative"
    assert green["ppv"]["estimate"] == pytest.approx(0.6) and green["npv"]["estimate"] == 0.8, (
        "PPV 3/5 and NPV 4/5"
    )
    assert green["share_ruled_out"] == 0.5 and green["cancers_ruled_out"] == 1, (
        "half are green, and the one cancer among them is a false negative"
    )
    assert green["sensitivity"]["low"] < 0.75 < green["sensitivity"]["high"], "CI brackets"
    red = threshold_metrics(Y10, P10, 0.8, "rule_in")
    assert red["share_expedited"] == pytest.approx(0.2) and red["cancers_expedited"] == 1, (
        "p >= 0.8 expedites two patients, one with cancer"
    )
    nobody = threshold_metrics(Y10, P10, 0.95, "rule_in")
    assert math.isnan(nobody["ppv"]["estimate"]), "PPV with no positives is NaN, not an error"


def test_bayes_ppv_npv_and_number_needed_to_test_by_hand() -> None:
    ppv, npv = bayes_ppv_npv(0.9, 0.8, 0.01)
    assert ppv == pytest.approx(0.009 / (0.009 + 0.198)), "PPV = sens*prev / P(positive)"
    assert npv == pytest.approx(0.792 / (0.792 + 0.001)), "NPV = spec*(1-prev) / P(negative)"
    # Leeds: NND = (TP + FP) / TP; 3 cancers among 600 tested -> 200.
    assert number_needed_to_test(3 / 600) == pytest.approx(200), "NND is 1 / PPV"
    assert number_needed_to_test(0.0) == math.inf, "PPV 0: no number of tests finds a case"


# --------------------------------------------------------------------------- curves


def test_net_benefit_by_hand() -> None:
    y, p = np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.6, 0.3, 0.2, 0.05])
    row = net_benefit(y, p, np.array([0.25])).iloc[0]
    # p >= 0.25: TP 2, FP 1 of n 5; odds 1/3. Treat all: 2/5 - 3/5 * 1/3.
    assert row["model"] == pytest.approx(2 / 5 - 1 / 5 / 3), "NB = TP/n - FP/n * t/(1-t)"
    assert row["treat_all"] == pytest.approx(0.2), "treat-all NB = prev - (1-prev) * t/(1-t)"
    assert row["treat_none"] == 0.0, "treat-none has zero net benefit"


def test_calibration_curve_bins_and_roc_points() -> None:
    frame = synthetic_predictions(2000)
    curve = calibration_curve(frame["cancer"], frame["probability"], n_bins=10)
    assert [b["n"] for b in curve] == [200] * 10, "ten equal-frequency bins of 200"
    assert all(b["low"] <= b["observed"] <= b["high"] for b in curve), "Wilson CI brackets"
    means = [b["mean_predicted"] for b in curve]
    assert means == sorted(means), "bins are in order of predicted probability"
    roc = roc_points(frame["cancer"], frame["probability"], max_points=50)
    assert len(roc["fpr"]) <= 50 and len(roc["fpr"]) == len(roc["tpr"]), "thinned to 50 points"
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1), (
        "the thinned ROC curve keeps both ends"
    )


def test_calibration_slope_one_on_calibrated_and_below_one_when_overconfident() -> None:
    rng = np.random.default_rng(1)
    p = expit(rng.normal(-2.0, 1.0, 100_000))
    y = (rng.random(p.size) < p).astype(int)
    good = calibration_summary(y, p)
    assert good["slope"] == pytest.approx(1.0, abs=0.05), "outcomes drawn from p: slope ~1"
    assert good["intercept"] == pytest.approx(0.0, abs=0.05), "and intercept ~0"
    assert good["observed_expected"] == pytest.approx(1.0, abs=0.05), "and O/E ~1"
    assert good["ece"] < 0.01, "and a small expected calibration error"
    overconfident = calibration_summary(y, expit(2 * logit(p)))
    assert overconfident["slope"] == pytest.approx(0.5, abs=0.05), "doubled log-odds: slope 1/2"


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_whole_patients_deterministically() -> None:
    groups = np.array(["a", "a", "a", "b", "c", "c", *[f"p{i}" for i in range(20)]])
    first = list(bootstrap_indices(groups, n_boot=30, seed=7))
    again = list(bootstrap_indices(groups, n_boot=30, seed=7))
    other = list(bootstrap_indices(groups, n_boot=30, seed=8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)), "seeded"
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True)), "seed matters"
    for rows in first:
        drawn = pd.Series(groups[rows]).value_counts()
        assert drawn.get("a", 0) % 3 == 0, "patient a (3 rows) contributes all 3 rows or none"
        assert drawn.get("c", 0) % 2 == 0, "patient c (2 rows) contributes both rows or none"
    sizes = {len(rows) for rows in first}
    assert len(sizes) > 1, "resample sizes vary with which multi-row patients are drawn"


def test_auc_ci_matches_sklearn_on_the_same_resamples() -> None:
    frame = synthetic_predictions(600, seed=3)
    y, p, g = frame["cancer"].to_numpy(), frame["probability"].to_numpy(), frame["patient_id"]
    samples = [roc_auc_score(y[rows], p[rows]) for rows in bootstrap_indices(g.to_numpy(), 40, 5)]
    ci = auc_ci(y, p, g.to_numpy(), n_boot=40, seed=5)
    assert ci["estimate"] == pytest.approx(roc_auc_score(y, p)), "the point estimate is sklearn's"
    assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(samples, [2.5, 97.5]))), (
        "the vectorised bootstrap AUC equals sklearn's AUC on the resampled rows"
    )


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    frame = synthetic_predictions(500)
    y, p, g = frame["cancer"], frame["probability"], frame["patient_id"].to_numpy()
    diff = paired_auc_difference(y, p, p, g, n_boot=50, seed=0)
    assert diff == {"estimate": 0.0, "low": 0.0, "high": 0.0}, "same resamples for A and B"
    better = paired_auc_difference(y, frame["true_risk"], p, g, n_boot=50, seed=0)
    assert better["estimate"] > 0, "the true risk discriminates better than a noisy model"


def test_calibration_cis_match_refits_on_the_same_resamples() -> None:
    frame = synthetic_predictions(800, seed=4)
    result = evaluate_predictions(
        frame, rule_out=None, rule_in=None, n_boot=25, seed=11, true_risk_col=None
    )
    y, p = frame["cancer"].to_numpy(), frame["probability"].to_numpy()
    refits = [
        calibration_summary(y[rows], p[rows])
        for rows in bootstrap_indices(frame["patient_id"].to_numpy(), 25, 11)
    ]
    for key in ("slope", "intercept", "observed_expected"):
        expected = np.percentile([r[key] for r in refits], [2.5, 97.5])
        ci = result["calibration"]["ci"][key]
        assert (ci["low"], ci["high"]) == pytest.approx(tuple(expected), abs=1e-6), (
            f"the bootstrap {key} CI equals scipy/sklearn refits on the same patient resamples"
        )


# --------------------------------------------------------------------------- tables


def test_subgroup_table_levels_missing_and_small_groups() -> None:
    frame = pd.DataFrame(
        {
            "cancer": [1, 0, 1, 0, 0, 1, 0, 0],
            "probability": [0.9, 0.2, 0.6, 0.4, 0.1, 0.3, 0.5, 0.2],
            "sex": ["f", "f", "f", "f", "m", "m", "m", None],
        }
    )
    rows = subgroup_table(frame, "cancer", "probability", ["sex"], 0.35, min_events=2)
    by_level = {r["level"]: r for r in rows}
    assert list(by_level) == ["f", "m", "(missing)"], "levels sorted, missing last"
    assert by_level["f"]["auc"] == 1.0, "women: both cases above both controls"
    assert math.isnan(by_level["m"]["auc"]), "men: 1 case is below min_events, so no AUC"
    assert by_level["f"]["observed_expected"] == pytest.approx(2 / 2.1), "O/E within the level"
    assert by_level["m"]["rule_out_sensitivity"]["estimate"] == 0.0, "the case at 0.3 is green"
    with pytest.raises(KeyError, match="ethnicity"):
        subgroup_table(frame, "cancer", "probability", ["ethnicity"], 0.35)


def test_by_period_and_oracle() -> None:
    frame = synthetic_predictions(2000)
    periods = by_period(frame, "cancer", "probability", "index_date")
    assert [r["period"] for r in periods] == ["2017", "2018", "2019"], "one row per year"
    assert sum(r["n"] for r in periods) == 2000, "every dated row is in one period"
    perfect = oracle_summary(frame["cancer"], frame["true_risk"], frame["true_risk"])
    assert perfect["auc_gap"] == 0 and perfect["mean_absolute_error"] == 0, "model == truth"
    assert perfect["slope_vs_truth"] == pytest.approx(1.0), "identical log-odds: slope 1"
    assert perfect["observed_expected_vs_truth"] == pytest.approx(1.0), "and O/E 1"


# --------------------------------------------------------------------------- the whole report

BLOCKS = (
    "n", "n_patients", "events", "prevalence", "auc", "brier", "calibration",
    "calibration_curve", "roc", "thresholds", "net_benefit", "net_benefit_at", "subgroups",
    "by_period", "prevalence_adjusted", "oracle", "notes",
)  # fmt: skip


def test_evaluate_predictions_returns_every_block_as_json() -> None:
    frame = synthetic_predictions(2000)
    rule_out = choose_rule_out_threshold(frame["cancer"], frame["probability"], 0.95)
    rule_in = choose_rule_in_threshold(frame["cancer"], frame["probability"], 0.3)
    result = evaluate_predictions(
        frame,
        rule_out=rule_out,
        rule_in=rule_in,
        subgroups=("sex", "age_band", "deprivation", "ethnicity"),
        n_boot=50,
    )
    missing = [k for k in BLOCKS if k not in result]
    assert not missing, f"blocks missing: {missing}"
    json.dumps(result, allow_nan=True)  # raises if anything is not plain JSON
    auc_block = result["auc"]
    assert auc_block["low"] < auc_block["estimate"] < auc_block["high"], "AUC CI brackets"
    assert result["thresholds"]["green"]["sensitivity"]["estimate"] >= 0.9, "green is safe"
    assert result["thresholds"]["red"]["threshold"] == rule_in, "red metrics at rule_in"
    curve = [row["threshold"] for row in result["net_benefit"]]
    prevalence = result["prevalence"]
    assert min(curve) == pytest.approx(prevalence / 5, rel=0.01), "log grid from prevalence/5"
    assert max(curve) == pytest.approx(min(0.5, 30 * prevalence), rel=0.01), "to 30 x prevalence"
    assert 0.03 in curve, "the quoted point is on the curve"
    assert result["net_benefit_at"]["threshold"] == 0.03, "net benefit at the stated threshold"
    levels = {(r["column"], r["level"]) for r in result["subgroups"]["rows"]}
    assert ("age_band", "80+") in levels and ("deprivation", "(missing)") in levels, (
        "age_band is derived from age; missing deprivation is its own level"
    )
    assert result["subgroups"]["skipped"] == [
        {"column": "ethnicity", "reason": "column not in the evaluation frame"}
    ], "an absent subgroup column is noted, not an error"
    assert result["oracle"]["oracle_auc"] > result["oracle"]["model_auc"], "truth is better"
    assert result["prevalence_adjusted"] is None, "cohort data: no prevalence adjustment"


def test_evaluate_predictions_case_control_block_uses_bayes() -> None:
    frame = synthetic_predictions(2000)
    result = evaluate_predictions(
        frame, rule_out=0.05, rule_in=0.3, deployment_prevalence=0.0006, n_boot=10
    )
    block = result["prevalence_adjusted"]
    assert [row["threshold"] for row in block["sweep"]] == [0.1, 0.2, 0.3, 0.4, 0.5], (
        "the Leeds sweep of case-control thresholds"
    )
    for row in (*block["at_thresholds"], *block["sweep"]):
        ppv, npv = bayes_ppv_npv(
            row["sensitivity"]["estimate"], row["specificity"]["estimate"], 0.0006
        )
        assert row["ppv"] == pytest.approx(ppv) and row["npv"] == pytest.approx(npv), (
            f"{row['label']}: PPV/NPV at the deployment prevalence, from sample sens/spec"
        )
        assert row["number_needed_to_test"] == pytest.approx(1 / ppv), "NND = 1 / PPV"
    green = result["thresholds"]["green"]
    assert block["at_thresholds"][0]["sensitivity"] == green["sensitivity"], (
        "sensitivity at the green threshold is the sample's"
    )
    json.dumps(result, allow_nan=True)


def test_evaluate_predictions_names_missing_required_columns() -> None:
    frame = synthetic_predictions(100).drop(columns="patient_id")
    with pytest.raises(KeyError, match="patient_id"):
        evaluate_predictions(frame, rule_out=None, rule_in=None)
