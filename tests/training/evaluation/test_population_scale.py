"""Case-control evaluation on the population scale: controls weighted 1/r_s must give exactly the
figures of a sample where each control is physically repeated; the bootstrap draws whole matched
sets; `evaluate_model` weights a case-control model's rows by their stratum; the drift reference
is population-weighted."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from models.calibration import LogitCalibration, Stratum, StratumOffsets
from models.reference import reference_statistics
from models.spec import load_spec
from models.spec_policy import Calibration
from models.triage import Thresholds
from training.evaluation.evaluate import evaluate_predictions
from training.evaluation.metrics import auc, bootstrap_indices, calibration_summary
from training.evaluation.model import POPULATION_SCALE, evaluate_model, summary_metrics


def case_control_sample(n_sets: int = 150, seed: int = 0) -> pd.DataFrame:
    """Matched sets of one case and four controls; controls carry an integer weight 2-4."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sets):
        sex = rng.choice(["female", "male"])
        age = float(rng.integers(40, 95))
        for j in range(5):
            case = j == 0
            signal = rng.normal(1.0 if case else 0.0, 1.0)
            rows.append(
                {
                    "matched_set": f"r{s}",
                    "patient_id": f"p{s}_{j}",
                    "cancer": int(case),
                    "probability": float(expit(-3 + signal)),
                    "true_risk": float(expit(-3.2 + 1.1 * signal)),
                    "weight": 1.0 if case else float(rng.integers(2, 5)),
                    "sex": sex,
                    "age": age,
                    "index_date": pd.Timestamp("2018-01-01") + pd.Timedelta(days=int(s) * 4),
                }
            )
    return pd.DataFrame(rows)


def repeated(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row repeated `weight` times (the population the weights stand for)."""
    return frame.loc[frame.index.repeat(frame["weight"].astype(int))].reset_index(drop=True)


def test_weighted_figures_equal_those_of_physically_repeated_controls() -> None:
    frame = case_control_sample()
    common: dict[str, Any] = {"rule_out": 0.03, "rule_in": 0.2, "n_boot": 10, "subgroups": ("sex",)}
    weighted = evaluate_predictions(frame, weight_col="weight", patient_col="matched_set", **common)
    plain = evaluate_predictions(repeated(frame), patient_col="patient_id", **common)
    big = repeated(frame)
    assert auc(frame["cancer"], frame["probability"], frame["weight"]) == pytest.approx(
        roc_auc_score(big["cancer"], big["probability"])
    ), "weighted Mann-Whitney = AUC of the repeated rows"
    assert weighted["auc"]["estimate"] == pytest.approx(plain["auc"]["estimate"])
    for key in ("observed_expected", "intercept", "slope", "brier", "observed", "expected"):
        assert weighted["calibration"][key] == pytest.approx(plain["calibration"][key], rel=1e-6)
    assert weighted["prevalence"] == pytest.approx(plain["prevalence"])
    for band in ("green", "red"):
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            assert weighted["thresholds"][band][key]["estimate"] == pytest.approx(
                plain["thresholds"][band][key]["estimate"]
            ), f"{band} {key} on the population scale"
    assert weighted["thresholds"]["green"]["risk_in_green"]["estimate"] == pytest.approx(
        plain["thresholds"]["green"]["risk_in_green"]["estimate"]
    )
    for a, b in zip(weighted["net_benefit"], plain["net_benefit"], strict=True):
        assert a["model"] == pytest.approx(b["model"]) and a["threshold"] == b["threshold"]
    for key in (
        "oracle_auc",
        "observed_expected_vs_truth",
        "slope_vs_truth",
        "mean_absolute_error",
    ):
        assert weighted["oracle"][key] == pytest.approx(plain["oracle"][key])
    for a, b in zip(weighted["subgroups"]["rows"], plain["subgroups"]["rows"], strict=True):
        assert a["auc"] == pytest.approx(b["auc"]) and a["prevalence"] == pytest.approx(
            b["prevalence"]
        ), f"subgroup {a['level']}"
        assert a["observed_expected"] == pytest.approx(b["observed_expected"])
    for a, b in zip(weighted["by_period"], plain["by_period"], strict=True):
        assert a["auc"] == pytest.approx(b["auc"]) and a["observed_expected"] == pytest.approx(
            b["observed_expected"]
        )
    assert weighted["weighting"]["population"] == pytest.approx(frame["weight"].sum())
    assert weighted["thresholds"]["green"]["ci_method"] == "bootstrap percentile"
    json.dumps(weighted, allow_nan=True)


def test_weighted_observed_expected_by_hand() -> None:
    y, p = np.array([1, 0, 0, 1]), np.array([0.5, 0.1, 0.2, 0.25])
    w = np.array([1.0, 10.0, 5.0, 1.0])
    summary = calibration_summary(y, p, w)
    # O = 1 + 1 = 2; E = 0.5 + 1.0 + 1.0 + 0.25 = 2.75.
    assert summary["observed_expected"] == pytest.approx(2 / 2.75)
    assert summary["observed"] == pytest.approx(2 / 17) and summary["expected"] == pytest.approx(
        2.75 / 17
    )


def test_matched_sets_are_resampled_whole() -> None:
    frame = case_control_sample(40)
    sets = frame["matched_set"].to_numpy()
    for rows in bootstrap_indices(sets, 30, 4):
        drawn = pd.Series(sets[rows]).value_counts()
        assert (drawn % 5 == 0).all(), "a matched set (1 case + 4 controls) is drawn whole"
    result = evaluate_predictions(
        frame, rule_out=0.03, rule_in=None, weight_col="weight", patient_col="matched_set",
        n_boot=30, seed=4,
    )  # fmt: skip
    y, p, w = (frame[c].to_numpy(np.float64) for c in ("cancer", "probability", "weight"))
    oe = [
        np.dot(w[r], y[r]) / np.dot(w[r], p[r]) for r in bootstrap_indices(sets, 30, 4)
    ]  # the weighted O/E of each matched-set resample
    ci = result["calibration"]["ci"]["observed_expected"]
    assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.percentile(oe, [2.5, 97.5])))
    assert result["n_patients"] == 40 and result["bootstrap_groups"] == "matched_set"
    refits = [calibration_summary(y[r], p[r], w[r]) for r in bootstrap_indices(sets, 30, 4)]
    for key in ("intercept", "slope"):
        ci = result["calibration"]["ci"][key]
        expected = np.percentile([fit[key] for fit in refits], [2.5, 97.5])
        assert (ci["low"], ci["high"]) == pytest.approx(tuple(expected), abs=1e-6), (
            f"weighted {key} CI = weighted refits on the same matched-set resamples"
        )


# --------------------------------------------------------------------------- evaluate_model


def offsets() -> StratumOffsets:
    """r_s = 1/400 for women, 1/200 for men, every 5-year band from 40 to 95."""
    strata = tuple(
        Stratum(age, sex, 10, 10 * ratio, math.log(1 / ratio))
        for sex, ratio in (("female", 400), ("male", 200))
        for age in range(40, 100, 5)
    )
    return StratumOffsets(age_band_years=5, by_sex=True, strata=strata)


def test_evaluate_model_judges_a_case_control_model_on_the_population_scale() -> None:
    spec = load_spec("myeloma")
    assert spec.calibration.case_control is not None, "the myeloma spec is matched on strata"
    frame = case_control_sample(120, seed=1).drop(columns="weight")
    calibration = LogitCalibration(1.0, 0.0, 0.0, offsets())
    thresholds = Thresholds(0.02, 0.1)
    evaluation = evaluate_model(
        frame, frame["probability"].to_numpy(), thresholds, calibration, spec, 20, 0
    )
    expected_weight = np.where(
        frame["cancer"] == 1, 1.0, np.where(frame["sex"] == "male", 200, 400)
    )
    assert evaluation["scale"] == POPULATION_SCALE
    assert evaluation["weighting"]["population"] == pytest.approx(expected_weight.sum())
    assert evaluation["auc"]["estimate"] == pytest.approx(
        auc(frame["cancer"], frame["probability"], expected_weight)
    ), "AUC with controls weighted 1/r_s of their stratum"
    assert evaluation["bootstrap_groups"] == "matched_set"
    assert evaluation["prevalence_adjusted"] is None, "no Bayes block: already population scale"
    assert evaluation["oracle"]["scale"] == POPULATION_SCALE
    assert evaluation["thresholds"]["rule_out"] == 0.02, "thresholds as given"
    assert evaluation["subgroups"]["age_bands"][0] == "40-49", "ten-year bands from 40"
    assert evaluation["net_benefit_at"]["threshold"] == 0.1
    assert evaluation["net_benefit_at"]["reason"] == "the rule-in (red) threshold"
    assert evaluation["thresholds"]["green"]["referral_threshold"] == 0.03
    metrics = summary_metrics(evaluation)
    assert metrics["auc"] == evaluation["auc"]["estimate"] and "green_risk" in metrics
    json.dumps(evaluation, allow_nan=True)


# --------------------------------------------------------------------------- the reference


def test_reference_statistics_are_population_weighted() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 400).round(2)
    values[::37] = np.nan
    weights = rng.integers(1, 5, 400).astype(float)
    features = pd.DataFrame({"x": values})
    score = rng.uniform(0, 1, 400)
    weighted = reference_statistics(features, score, weights)
    repeat = np.repeat(np.arange(400), weights.astype(int))
    plain = np.quantile(
        values[repeat][~np.isnan(values[repeat])], [0.001, 0.999], method="inverted_cdf"
    )
    stats = weighted["features"]["x"]
    assert (stats["low"], stats["high"]) == pytest.approx(tuple(plain)), "weighted soft range"
    assert stats["missing_rate"] == pytest.approx(np.isnan(values[repeat]).mean())
    edges = stats["edges"]
    shares = reference_statistics(pd.DataFrame({"x": values[repeat]}), score[repeat])
    counts = np.bincount(
        np.searchsorted(edges, values[repeat][~np.isnan(values[repeat])], side="right"),
        minlength=len(edges) + 1,
    )
    assert stats["shares"][:-1] == pytest.approx(list(counts / repeat.size)), "weighted shares"
    assert weighted["weighted"] and not shares["weighted"]
    assert sum(stats["shares"]) == pytest.approx(1.0)


def test_legacy_global_shift_model_keeps_the_sample_scale() -> None:
    base = load_spec("myeloma")
    spec = base.model_copy(update={"calibration": Calibration(deployment_prevalence=0.0006)})
    frame = case_control_sample(120, seed=2).drop(columns="weight")
    calibration = LogitCalibration(1.0, 0.0, shift=-5.0)
    population = expit(logit(frame["probability"].to_numpy()) + calibration.shift)
    evaluation = evaluate_model(
        frame, population, Thresholds(0.0005, 0.002), calibration, spec, 10, 0
    )
    assert evaluation["scale"] == "case-control sample"
    assert evaluation["weighting"] is None and evaluation["prevalence_adjusted"] is not None
    assert evaluation["thresholds"]["rule_in"] == pytest.approx(expit(logit(0.002) + 5.0))
    assert evaluation["net_benefit_at"]["threshold"] == pytest.approx(expit(logit(0.002) + 5.0))
    assert evaluation["thresholds"]["green"]["referral_threshold"] is None
    assert evaluation["calibration"]["n"] == len(frame)
