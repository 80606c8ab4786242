"""Fitting the restricted-cubic-spline logistic model (`models.spline.SplineModel`): the baseline
that LightGBM is compared with, and a model family a spec may serve (`model.family: spline`).

`fit_spline_model` builds the design from the catalogue and the training rows, then fits:

* Transforms. Analytes are winsorised at the catalogue's hard limits, age at `AGE_LIMITS`, other
  inputs (derived features; sex) at their training range: any float then scores finitely, and
  the cubic terms never see values far beyond the data. Analytes the catalogue marks `skewed`
  (CRP, ESR, liver enzymes, bilirubin, tumour markers, ...) enter as log(max(x, floor)), the
  floor being the analyte's reporting step 10^-decimals (its lower hard limit when higher): a
  zero, i.e. below detection, reads as the smallest value a laboratory reports. On the log scale
  a doubling counts the same at any level, so the linear tail beyond the last knot stays
  plausible (on the raw scale a CRP of 300 would extrapolate 60 times as far as one of 5).
* Knots at training quantiles of the transformed value: 4 at 5/35/65/95% (Harrell's placement
  for k = 4, his recommended default: 3 degrees of freedom bend enough for a U or a threshold,
  and the penalty keeps the extra one from overfitting; on the simulated any_cancer cohort the
  AUC equals that of 3 knots), 3 at 10/50/90% when ties make the four coincide (a test reported
  in coarse steps), and none (linear) when even those do, or with under 10 values or under 5
  distinct ones (sex).
* Missing data (documented method): the Leeds model used multiple imputation by chained
  equations; this model imputes the median of the transformed training values and adds a
  missing-indicator term per input that was ever missing in training, so that it scores one
  patient at a time and informative missingness (a test not ordered) is not hidden.
* Pathway, when it is an input: an indicator per pathway seen, and for the key inputs present
  (`KEY_FEATURES`: haemoglobin, platelets, CRP, albumin, age: the strongest general signals,
  whose weight plausibly differs between pathways) an interaction of each pathway indicator with
  the input's transformed value centred on its median, linear term only (a slope per pathway,
  9 x 5 terms at most, shrunk towards the common slope by the penalty).
* L2-penalised logistic regression on the standardised design (Newton-Cholesky: a handful of
  iterations whatever the penalty), the penalty chosen from `C_GRID` by 5-fold cross-validated
  deviance on at most `CV_MAX_ROWS` rows; the scaling is folded back into coefficients on the
  raw design, so that prediction is plain numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn needs it

from models.analytes import AGE_LIMITS, CATALOGUE, Catalogue
from models.spline import FORMAT, FORMAT_VERSION, PATHWAY, SplineModel, rcs_basis

FloatArray = npt.NDArray[np.float64]
KNOTS_4 = (0.05, 0.35, 0.65, 0.95)
KNOTS_3 = (0.10, 0.50, 0.90)
MIN_VALUES_FOR_SPLINE = 10  # observed training values an input needs before it may bend
MIN_DISTINCT_FOR_SPLINE = 5  # and distinct values (a 0/1 input's quantiles can be 0, 0.5, 1)
KEY_FEATURES = ("haemoglobin", "platelets", "crp", "albumin", "age")
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # inverse L2 strength, standardised terms
CV_FOLDS = 5
CV_MAX_ROWS = 30_000  # the penalty is chosen on a stratified sample of at most this many rows
SOLVER = "newton-cholesky"
MAX_ITER = 100


def rcs_term(x: FloatArray, knots: Sequence[float]) -> FloatArray:
    """Harrell's non-linear restricted cubic spline term for 3 knots (linear beyond the ends),
    scaled by (t3 - t1)^2 so that it has the units of x; zero when the knots are not distinct."""
    t1, t2, t3 = knots
    if not t1 < t2 < t3:
        return np.zeros_like(np.asarray(x, np.float64))
    out: FloatArray = rcs_basis(x, knots)[:, 0]
    return out


def choose_knots(values: FloatArray) -> tuple[float, ...]:
    """Knots at Harrell's quantiles of the observed values: 4 when distinct, else 3, else none
    (also when there are too few values, or too few distinct ones, to bend through)."""
    if len(values) < MIN_VALUES_FOR_SPLINE or len(np.unique(values)) < MIN_DISTINCT_FOR_SPLINE:
        return ()
    for quantiles in (KNOTS_4, KNOTS_3):
        knots = np.quantile(values, quantiles)
        if np.all(np.diff(knots) > 0):
            return tuple(float(k) for k in knots)
    return ()


def describe_input(column: FloatArray, name: str, catalogue: Catalogue) -> dict[str, Any]:
    """One input's entry of the model document (limits, log, floor, median, knots), from its
    training column."""
    if name == PATHWAY:
        return {"name": name, "kind": "pathway"}
    finite = column[np.isfinite(column)]
    seen = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
    low: float | None = None
    high: float | None = None
    floor: float | None = None
    if name in catalogue:
        analyte = catalogue[name]
        low, high = analyte.limits.low, analyte.limits.high
        if analyte.skewed:
            floor = max(10.0**-analyte.decimals, low or 0.0)
    elif name == "age":
        low, high = AGE_LIMITS
    low = seen[0] if low is None else float(low)
    high = max(low, seen[1] if high is None else float(high))
    observed = np.clip(column[~np.isnan(column)], low, high)
    if floor is not None:
        observed = np.log(np.maximum(observed, floor))
    return {
        "name": name, "kind": "continuous", "low": low, "high": high, "log": floor is not None,
        "floor": floor, "median": float(np.median(observed)) if len(observed) else 0.0,
        "knots": list(choose_knots(observed)),
    }  # fmt: skip


def design_terms(
    x: FloatArray, names: Sequence[str], features: list[dict[str, Any]], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Every term of the design, grouped by kind (`models.spline.TERM_KINDS` order)."""
    cont = [(j, f) for j, f in enumerate(features) if f["kind"] == "continuous"]
    terms: list[dict[str, Any]] = [{"kind": "linear", "feature": f["name"]} for _, f in cont]
    for _, f in cont:
        terms += [
            {"kind": "spline", "feature": f["name"], "index": i}
            for i in range(max(len(f["knots"]) - 2, 0))
        ]
    for j, f in cont:
        if 0 < np.isnan(x[:, j]).sum() < len(x):
            terms.append({"kind": "missing", "feature": f["name"]})
    if PATHWAY in names:
        codes = x[:, list(names).index(PATHWAY)]
        levels = [float(v) for v in np.unique(codes[np.isfinite(codes)])]
        if len(levels) > 1:
            terms += [{"kind": "level", "feature": PATHWAY, "level": v} for v in levels]
            present = [k for k in keys if k in names and k != PATHWAY]
            terms += [
                {"kind": "interaction", "feature": k, "level": v} for k in present for v in levels
            ]
    return terms


def fit_spline_model(
    x: npt.ArrayLike | pd.DataFrame,
    y: npt.ArrayLike,
    feature_names: Sequence[str],
    *,
    catalogue: Catalogue = CATALOGUE,
    c: float | None = None,
    key_features: Sequence[str] = KEY_FEATURES,
    seed: int = 0,
) -> SplineModel:
    """Fit on rows of model inputs `x` (columns `feature_names`, e.g. `spec.features.names`;
    analytes looked up in `catalogue` for limits and skew; a column `pathway` holds pathway
    codes) and 0/1 outcomes `y`. `c`: the inverse L2 strength on the standardised design; None
    chooses it from `C_GRID` by cross-validated deviance, the folds drawn with `seed`."""
    names = [str(n) for n in feature_names]
    if isinstance(x, pd.DataFrame) and list(x.columns) != names:
        raise ValueError(f"the frame's columns {list(x.columns)} are not {names}")
    frame = x.to_numpy(np.float64) if isinstance(x, pd.DataFrame) else x
    matrix = np.asarray(frame, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64).ravel()
    if matrix.ndim != 2 or matrix.shape[1] != len(names) or len(target) != len(matrix):
        raise ValueError(f"x {matrix.shape}, y {target.shape} and {len(names)} names disagree")
    if not np.isin(target, (0.0, 1.0)).all() or len(np.unique(target)) < 2:
        raise ValueError("y must hold both outcomes, coded 0 and 1")
    features = [describe_input(matrix[:, j], n, catalogue) for j, n in enumerate(names)]
    terms = design_terms(matrix, names, features, key_features)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_names": names,
        "features": features,
        "terms": [{**t, "coefficient": 0.0, "mean": 0.0} for t in terms],
        "intercept": 0.0,
    }
    skeleton = SplineModel(document)
    design = skeleton.design(matrix)
    mean = design.mean(axis=0)
    active = np.ptp(design, axis=0) > 0  # a constant term (never missing, one pathway) is left out
    scale = design[:, active].std(axis=0)
    z = (design[:, active] - mean[active]) / scale
    del design
    # One BLAS thread: the design is thin, and on a shared machine threads waiting for a core
    # made the fit six times slower (Newton's Hessian is the only big product).
    with threadpool_limits(limits=1, user_api="blas"):
        chosen, path = (c, {}) if c is not None else choose_penalty(z, target, seed)
        weights, bias, info = penalised_logistic(z, target, chosen)
    beta = np.zeros(len(mean))
    beta[active] = weights / scale
    document["terms"] = [
        {**t, "coefficient": float(b), "mean": float(m)}
        for t, b, m in zip(skeleton.terms, beta, mean, strict=True)
    ]
    document["intercept"] = float(bias - beta @ mean)
    document["fit"] = {
        "c": chosen, "cv_deviance": path, "rows": len(target), "events": int(target.sum()),
        "knot_quantiles": [list(KNOTS_4), list(KNOTS_3)], "key_features": list(key_features),
        **info,
    }  # fmt: skip
    return SplineModel(document)


def penalised_logistic(
    z: FloatArray, y: FloatArray, c: float, model: LogisticRegression | None = None
) -> tuple[FloatArray, float, dict[str, Any]]:
    """L2-penalised logistic regression on a standardised design: (weights, intercept, info).
    `model`, a LogisticRegression with warm_start, starts from its last solution."""
    model = model or LogisticRegression(max_iter=MAX_ITER, tol=1e-6, solver=SOLVER)
    model.set_params(C=c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(z, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    info = {"iterations": int(np.max(model.n_iter_)), "converged": converged}
    return model.coef_[0].astype(np.float64), float(model.intercept_[0]), info


def choose_penalty(z: FloatArray, y: FloatArray, seed: int) -> tuple[float, dict[str, float]]:
    """The C of `C_GRID` with the lowest cross-validated deviance per row (ties to 1e-6: the
    smaller C, the stronger penalty), on a stratified sample of at most `CV_MAX_ROWS` rows (C
    weighs the penalty against the summed log-likelihood, so the same C penalises the full
    sample less). Each fold walks the grid from the strongest penalty, warm-starting each fit."""
    if len(y) > CV_MAX_ROWS:
        keep = train_test_split(
            np.arange(len(y)), train_size=CV_MAX_ROWS, stratify=y, random_state=seed
        )[0]
        z, y = z[keep], y[keep]
    folds = min(CV_FOLDS, int(y.sum()), int(len(y) - y.sum()))
    if folds < 2:
        return 1.0, {}
    deviance = np.zeros(len(C_GRID))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        model = LogisticRegression(max_iter=MAX_ITER, tol=1e-6, solver=SOLVER, warm_start=True)
        for i, c in enumerate(C_GRID):
            w, b, _ = penalised_logistic(z[train], y[train], c, model)
            margin = z[test] @ w + b
            # minus the log-likelihood, log(1 + e^m) - y m, computed stably
            deviance[i] += float(np.sum(np.logaddexp(0.0, margin) - y[test] * margin))
    deviance /= len(y)
    best = int(np.argmin(np.round(deviance, 6)))
    return C_GRID[best], {str(c): round(float(d), 6) for c, d in zip(C_GRID, deviance, strict=True)}


class SplineLogisticBaseline(ClassifierMixin, BaseEstimator):
    """The comparator as training has called it (a frame of model inputs in, log-odds out),
    now a `SplineModel` underneath: fitted on the columns `continuous + binary + categorical`."""

    def __init__(
        self,
        continuous: Sequence[str],
        binary: Sequence[str] = ("sex",),
        categorical: Sequence[str] = (),
        c: float | None = None,
        catalogue: Catalogue = CATALOGUE,
        seed: int = 0,
    ) -> None:
        self.continuous = list(continuous)
        self.binary = list(binary)
        self.categorical = list(categorical)
        self.c = c
        self.catalogue = catalogue
        self.seed = seed

    @classmethod
    def from_model(cls, model: SplineModel) -> SplineLogisticBaseline:
        """A fitted wrapper around a SplineModel (inputs: all its features), so that
        scikit-learn's calibration can take it (`calibrate(...)` in training.fit.train)."""
        wrapper = cls(continuous=model.feature_name(), binary=())
        wrapper.model_, wrapper.classes_ = model, np.array([0, 1])
        return wrapper

    @property
    def columns(self) -> list[str]:
        return [*self.continuous, *self.binary, *self.categorical]

    def fit(self, frame: pd.DataFrame, y: npt.ArrayLike) -> SplineLogisticBaseline:
        self.model_ = fit_spline_model(
            frame[self.columns], y, self.columns, catalogue=self.catalogue, c=self.c,
            seed=self.seed,
        )  # fmt: skip
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, frame: pd.DataFrame) -> FloatArray:
        """Log-odds (the SplineModel's margin)."""
        return self.model_.predict(frame[self.columns], raw_score=True)

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        return self.model_.predict_proba(frame[self.columns])

    def predict(self, frame: pd.DataFrame) -> npt.NDArray[np.int64]:
        return (self.decision_function(frame) > 0).astype(np.int64)
