"""Calibration that is affine in log-odds, so exact TreeSHAP contributions stay exactly additive.

The booster's raw margin z is mapped to calibrated log-odds `slope * z + intercept + shift`, where
(slope, intercept) come from Platt scaling on the calibration period and `shift` moves case-control
probabilities to the deployment prevalence: shift = logit(prevalence) - logit(sample fraction).
Each TreeSHAP contribution phi_i becomes `slope * phi_i`, and the base `slope * phi_0 + intercept +
shift`, so base + sum(contributions) == logit(probability) for every prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def logit(p: float) -> float:
    """log(p / (1 - p)) for 0 < p < 1."""
    return math.log(p) - math.log1p(-p)


def expit(x: FloatArray) -> FloatArray:
    """The logistic function, stable for large |x|."""
    out: FloatArray = np.exp(-np.logaddexp(0.0, -x))
    return out


def prevalence_shift(deployment_prevalence: float, sample_fraction: float) -> float:
    """Intercept shift taking case-control probabilities to the deployment prevalence."""
    for name, value in (("prevalence", deployment_prevalence), ("fraction", sample_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return logit(deployment_prevalence) - logit(sample_fraction)


@dataclass(frozen=True)
class LogitCalibration:
    """logit(p) = slope * margin + intercept + shift."""

    slope: float
    intercept: float
    shift: float = 0.0

    def log_odds(self, margin: FloatArray) -> FloatArray:
        result: FloatArray = margin * self.slope + (self.intercept + self.shift)
        return result

    def probability(self, margin: FloatArray) -> FloatArray:
        return expit(self.log_odds(margin))

    @property
    def offset(self) -> float:
        """What the calibration adds to the scaled margin (intercept plus prevalence shift)."""
        return self.intercept + self.shift

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitCalibration:
        return cls(float(data["slope"]), float(data["intercept"]), float(data.get("shift", 0.0)))
