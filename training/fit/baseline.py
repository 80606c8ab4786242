"""The Leeds-style baseline: logistic regression with restricted cubic splines (3 knots).

Every continuous input (analytes and age) enters as a restricted cubic spline with knots at its
10th, 50th and 90th training percentiles (Harrell's placement for 3 knots): a linear term plus one
non-linear term. Sex enters as a plain covariate; a pathway context, when the spec has one, as
indicator columns.

Missing data (documented method): the Leeds model used multiple imputation by chained equations.
This baseline uses single median imputation from the training period plus a missing-indicator column
per input, so that it can score one patient at a time and so that informative missingness (a test
not ordered) is not hidden. That is a simpler method than MICE; it is a comparator, not a product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

FloatArray = npt.NDArray[np.float64]
KNOT_QUANTILES = (0.10, 0.50, 0.90)


def rcs_term(x: FloatArray, knots: Sequence[float]) -> FloatArray:
    """Harrell's non-linear restricted cubic spline term for 3 knots (linear beyond the ends).

    Scaled by (t3 - t1)^2 so that it has the units of x.
    """
    t1, t2, t3 = knots
    if not t1 < t2 < t3:
        return np.zeros_like(x)

    def cube(v: FloatArray) -> FloatArray:
        out: FloatArray = np.clip(v, 0.0, None) ** 3
        return out

    term = (
        cube(x - t1) - cube(x - t2) * (t3 - t1) / (t3 - t2) + cube(x - t3) * (t2 - t1) / (t3 - t2)
    )
    result: FloatArray = term / (t3 - t1) ** 2
    return result


class SplineLogisticBaseline(ClassifierMixin, BaseEstimator):
    """Restricted-cubic-spline logistic regression (scikit-learn contract: fit returns self)."""

    def __init__(
        self,
        continuous: Sequence[str],
        binary: Sequence[str] = ("sex",),
        categorical: Sequence[str] = (),
        c: float = 1.0,
    ) -> None:
        self.continuous = list(continuous)
        self.binary = list(binary)
        self.categorical = list(categorical)
        self.c = c

    def _design(self, frame: pd.DataFrame) -> FloatArray:
        columns: list[FloatArray] = []
        for name in self.continuous:
            raw = frame[name].to_numpy(np.float64)
            missing = np.isnan(raw)
            filled = np.where(missing, self.medians_[name], raw)
            columns += [filled, rcs_term(filled, self.knots_[name]), missing.astype(np.float64)]
        for name in self.binary:
            raw = frame[name].to_numpy(np.float64)
            columns.append(np.nan_to_num(raw, nan=self.medians_[name]))
        for name in self.categorical:
            raw = frame[name].to_numpy(np.float64)
            columns += [(raw == level).astype(np.float64) for level in self.levels_[name]]
        return np.column_stack(columns)

    def fit(self, frame: pd.DataFrame, y: npt.ArrayLike) -> SplineLogisticBaseline:
        self.medians_: dict[str, float] = {}
        self.knots_: dict[str, tuple[float, float, float]] = {}
        for name in [*self.continuous, *self.binary]:
            observed = frame[name].dropna().to_numpy(np.float64)
            self.medians_[name] = float(np.median(observed)) if observed.size else 0.0
            if name in self.continuous and observed.size:
                q = np.quantile(observed, KNOT_QUANTILES)
                self.knots_[name] = (float(q[0]), float(q[1]), float(q[2]))
            elif name in self.continuous:
                self.knots_[name] = (0.0, 0.0, 0.0)
        self.levels_ = {
            name: sorted(float(v) for v in frame[name].dropna().unique())[1:]
            for name in self.categorical
        }
        design = self._design(frame)
        self.scaler_ = StandardScaler().fit(design)
        self.model_ = LogisticRegression(C=self.c, max_iter=2000).fit(
            self.scaler_.transform(design), np.asarray(y)
        )
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, frame: pd.DataFrame) -> FloatArray:
        """Log-odds."""
        result: FloatArray = self.model_.decision_function(
            self.scaler_.transform(self._design(frame))
        )
        return result

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        result: FloatArray = self.model_.predict_proba(self.scaler_.transform(self._design(frame)))
        return result

    def predict(self, frame: pd.DataFrame) -> npt.NDArray[np.int64]:
        return (self.decision_function(frame) > 0).astype(np.int64)
