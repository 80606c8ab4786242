"""The two model families, fitted and calibrated the same way, and the choice between them.

Both families are fitted on every training run: LightGBM (early stopping on a held-out share of
the training patients) and the restricted-cubic-spline logistic model (`training.fit.baseline`,
served as `models.spline.SplineModel`, on every training row). Each is Platt-calibrated on the
calibration period (plus the case-control offsets). The spec's `model.family` says which one is
served; the other is the comparator the report sets beside it. With `auto`, LightGBM is served
only when its AUC on the calibration period beats the spline model's, paired on the same rows
(patient-level bootstrap, matched sets for case-control data, population-weighted), by at least
`model.auto_margin` with a lower 95% bound above 0: a flexible model must earn its place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from models.calibration import LogitCalibration, StratumOffsets, prevalence_shift
from models.spec import ModelSpec
from models.spline import SplineModel
from training.evaluation.metrics import paired_auc_difference
from training.fit.baseline import SplineLogisticBaseline, fit_spline_model
from training.fit.case_control import feature_strata, population_platt

Family = Literal["lightgbm", "spline"]
FAMILIES: tuple[Family, ...] = ("lightgbm", "spline")
LABELS = {"lightgbm": "LightGBM", "spline": "spline logistic"}


@dataclass(frozen=True)
class Fitted:
    """One family's fitted model (a Booster or a SplineModel) and its calibration."""

    family: Family
    model: lgb.Booster | SplineModel
    calibration: LogitCalibration
    iterations: int | None = None  # LightGBM's early-stopping iteration


def fit_booster(
    x_train: pd.DataFrame, y_train: np.ndarray, x_stop: pd.DataFrame, y_stop: np.ndarray,
    spec: ModelSpec, seed: int, num_threads: int,
) -> lgb.LGBMClassifier:  # fmt: skip
    """LightGBM with early stopping on the held-out share of the training patients."""
    params = spec.lightgbm.model_dump()
    rounds = params.pop("early_stopping_rounds")
    classifier = lgb.LGBMClassifier(
        **params, random_state=seed, n_jobs=num_threads, deterministic=True,
        force_row_wise=True, verbose=-1,
    )  # fmt: skip
    categorical: list[str] | Literal["auto"] = ["pathway"] if "pathway" in x_train else "auto"
    classifier.fit(
        x_train, y_train, eval_X=(x_stop,), eval_y=(y_stop,), categorical_feature=categorical,
        callbacks=[lgb.early_stopping(rounds, verbose=False)],
    )  # fmt: skip
    return classifier


def best_booster(classifier: lgb.LGBMClassifier) -> lgb.Booster:
    """The booster truncated at the early-stopping iteration (the one that is saved and served)."""
    text = classifier.booster_.model_to_string(num_iteration=classifier.best_iteration_)
    return lgb.Booster(model_str=text)


def calibrate(
    classifier: Any,
    x_cal: pd.DataFrame,
    y_cal: np.ndarray,
    spec: ModelSpec,
    strata: StratumOffsets | None = None,
) -> LogitCalibration:
    """Platt scaling on the raw margin (calibration period), plus the case-control shift: per
    matching stratum (`strata`, log r_s: the slope and intercept are then refitted on the
    population scale, controls weighted 1/r_s), or one global shift to `deployment_prevalence`.

    scikit-learn's sigmoid is p = 1 / (1 + exp(a z + b)), so calibrated log-odds = -a z - b. It
    calibrates `decision_function` when the model has one and silently falls back to
    `predict_proba` when not, which would make the calibration non-affine in the margin the
    explanations use: a model without it is refused.
    """
    if not callable(getattr(classifier, "decision_function", None)):
        raise TypeError(
            f"{type(classifier).__name__} has no decision_function: Platt scaling must see the "
            "raw log-odds margin (LightGBM >= 4.7 provides it); calibrating predict_proba "
            "would break exact explanations"
        )
    fitted = CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid")
    fitted.fit(x_cal, y_cal)
    platt = fitted.calibrated_classifiers_[0].calibrators[0]
    slope, intercept = -float(platt.a_), -float(platt.b_)
    if strata is not None:  # refitted on the population scale (training.fit.case_control)
        sampled = LogitCalibration(slope, intercept, shift=strata.overall, strata=strata)
        margin = np.asarray(classifier.decision_function(x_cal), dtype=np.float64)
        age, sex = feature_strata(x_cal)
        weights = sampled.population_weights(y_cal, age, sex)
        offset = sampled.row_shift(age, sex)
        slope, intercept = population_platt(margin, y_cal, offset, weights, (slope, intercept))
        return replace(sampled, slope=slope, intercept=intercept)
    shift = 0.0
    prevalence = spec.calibration.deployment_prevalence
    if prevalence is not None:
        shift = prevalence_shift(prevalence, float(np.mean(y_cal)))
    return LogitCalibration(slope=slope, intercept=intercept, shift=shift)


def fit_families(
    x: Mapping[str, pd.DataFrame], y: Mapping[str, np.ndarray], spec: ModelSpec, seed: int,
    num_threads: int, strata: StratumOffsets | None,
) -> dict[Family, Fitted]:  # fmt: skip
    """Both families on the same split, each calibrated on the calibration period."""
    classifier = fit_booster(x["train"], y["train"], x["stop"], y["stop"], spec, seed, num_threads)
    lightgbm = Fitted(
        "lightgbm",
        best_booster(classifier),
        calibrate(classifier, x["calibrate"], y["calibrate"], spec, strata),
        int(classifier.best_iteration_ or spec.lightgbm.n_estimators),
    )
    spline = fit_spline_model(  # every training row: no early stopping to hold rows out for
        pd.concat([x["train"], x["stop"]], ignore_index=True),
        np.concatenate([y["train"], y["stop"]]),
        spec.features.names,
        catalogue=spec.catalogue,
        seed=seed,
    )
    wrapped = SplineLogisticBaseline.from_model(spline)
    calibration = calibrate(wrapped, x["calibrate"], y["calibrate"], spec, strata)
    return {"lightgbm": lightgbm, "spline": Fitted("spline", spline, calibration)}


def choose_family(
    spec: ModelSpec,
    fits: Mapping[Family, Fitted],
    x_cal: pd.DataFrame,
    y_cal: np.ndarray,
    groups: np.ndarray,
    weights: np.ndarray | None,
    seed: int,
) -> tuple[Family, dict[str, Any]]:
    """The family to serve and why: the spec's choice, or for `auto` the paired comparison on
    the calibration period (LightGBM minus spline AUC, `spec.promotion.n_boot` resamples)."""
    rule = spec.model.family
    x = x_cal.to_numpy(np.float64)
    margins = {f: np.asarray(fits[f].model.predict(x, raw_score=True)) for f in FAMILIES}
    # AUC is rank-based: the margins rank the rows as the calibrated probabilities do.
    scores = {f: 1.0 / (1.0 + np.exp(-m)) for f, m in margins.items()}
    difference = paired_auc_difference(
        y_cal, scores["lightgbm"], scores["spline"], groups,
        n_boot=spec.promotion.n_boot, seed=seed, weights=weights,
    )  # fmt: skip
    margin = spec.model.auto_margin
    better = difference["estimate"] >= margin and difference["low"] > 0
    if rule == "auto":
        family: Family = "lightgbm" if better else "spline"
        verdict = (
            f"LightGBM beats the spline model by {difference['estimate']:+.4f} AUC "
            f"[{difference['low']:+.4f}, {difference['high']:+.4f}] on the calibration period, "
            f"at least the margin {margin:g} with a lower bound above 0"
            if better
            else f"LightGBM minus spline AUC on the calibration period is "
            f"{difference['estimate']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"
            f": not better by the margin {margin:g} with a lower bound above 0, so the simpler "
            "spline model is served"
        )
    else:
        family = rule
        verdict = f"model.family is {rule} (LightGBM minus spline on the calibration period: " + (
            f"{difference['estimate']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}])"
        )
    return family, {
        "rule": rule,
        "chosen": family,
        "comparator": next(f for f in FAMILIES if f != family),
        "auto_margin": margin,
        "calibration_auc_difference": difference,
        "n_boot": spec.promotion.n_boot,
        "reason": verdict,
    }
