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
from typing import Any, overload

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
P_CLIP = 1e-12  # logit clips probabilities to [P_CLIP, 1 - P_CLIP]: 0 and 1 stay finite


@overload
def logit(p: float) -> float: ...
@overload
def logit(p: FloatArray) -> FloatArray: ...
def logit(p: float | FloatArray) -> float | FloatArray:
    """log(p / (1 - p)), elementwise for an array, with p clipped to [P_CLIP, 1 - P_CLIP].

    A float gives a float computed with `math` (the exact value stored in model artifacts, e.g.
    the prevalence shift); an array goes through numpy, whose log may differ in the last bit."""
    if isinstance(p, float | int):
        clipped = min(max(float(p), P_CLIP), 1.0 - P_CLIP)
        return math.log(clipped) - math.log1p(-clipped)
    array = np.clip(np.asarray(p, dtype=np.float64), P_CLIP, 1.0 - P_CLIP)
    out: FloatArray = np.log(array) - np.log1p(-array)
    return out


def expit(x: FloatArray) -> FloatArray:
    """The logistic function 1 / (1 + exp(-x)), elementwise; where exp(-x) overflows (x < -709)
    the result is exactly 0. This form is ~5x faster than exp(-logaddexp(0, -x)) (measured on
    4M values: 17 vs 94 ms), which matters in the simulator's root finding and the bootstraps."""
    with np.errstate(over="ignore"):
        out: FloatArray = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
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
