"""Calibration that is affine in log-odds, so exact TreeSHAP contributions stay exactly additive.

The model's raw margin z is mapped to calibrated log-odds `slope * z + intercept + shift`, where
(slope, intercept) come from Platt scaling on the calibration period and `shift` moves case-control
probabilities to the population. With matching strata (`StratumOffsets`) the shift is each row's
own: log r_s, where r_s is the share of stratum s's non-cases sampled as controls (every case
sampled), so logit p_population = logit p_sample + log r_s. Without strata it is one global shift,
logit(prevalence) - logit(sample fraction). Each contribution phi_i becomes `slope * phi_i`, and the
base `slope * phi_0 + intercept + shift` (the row's shift), so base + sum(contributions) ==
logit(probability) for every prediction.
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


SEXES = ("female", "male")  # sex codes 0 and 1 of the model inputs (models.features.SEX_CODES)


@dataclass(frozen=True)
class Stratum:
    """One matching stratum: its first year of age (None: not matched on age), its sex (None:
    not matched on sex), the controls sampled, the population's non-cases, and log r_s."""

    age_from: int | None
    sex: str | None
    controls: int
    non_cases: int
    log_ratio: float


@dataclass(frozen=True)
class StratumOffsets:
    """log r_s for each matching stratum, looked up from a row's age and sex (codes 0/1).

    Ages below the first band take its offset, ages beyond the last band the last one's (the
    population had nobody older to count). A row with no age or sex (when matched on it) takes
    `overall`, log(all controls / all non-cases)."""

    age_band_years: int | None
    by_sex: bool
    strata: tuple[Stratum, ...]

    def __post_init__(self) -> None:
        keys = [(s.age_from, s.sex) for s in self.strata]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError("strata must be given, each once")
        if self.age_band_years is not None:
            for sex in {s.sex for s in self.strata}:
                starts = sorted(s.age_from or 0 for s in self.strata if s.sex == sex)
                expected = list(range(starts[0], starts[-1] + 1, self.age_band_years))
                if starts != expected:
                    missing = sorted(set(expected) - set(starts))
                    raise ValueError(f"age bands missing for sex {sex}: {missing}")

    @property
    def overall(self) -> float:
        controls = sum(s.controls for s in self.strata)
        return math.log(controls / sum(s.non_cases for s in self.strata))

    def log_ratio(self, age: FloatArray, sex: FloatArray) -> FloatArray:
        """log r_s of each row (age in years, sex coded 0 female / 1 male)."""
        age = np.asarray(age, dtype=np.float64)
        sex = np.asarray(sex, dtype=np.float64)
        sexes: list[str | None] = [None] if not self.by_sex else list(SEXES)
        starts = sorted({s.age_from for s in self.strata if s.age_from is not None})
        table = np.full((len(sexes), max(len(starts), 1)), np.nan)
        for s in self.strata:
            table[sexes.index(s.sex), 0 if s.age_from is None else starts.index(s.age_from)] = (
                s.log_ratio
            )
        known = np.ones(age.shape, dtype=bool)
        band = np.zeros(age.shape, dtype=np.intp)
        if self.age_band_years is not None:
            known &= np.isfinite(age)
            first = np.floor(np.where(known, age, starts[0]) / self.age_band_years)
            band = np.clip(first * self.age_band_years - starts[0], 0, None) // self.age_band_years
            band = np.minimum(band, len(starts) - 1).astype(np.intp)
        row = np.zeros(age.shape, dtype=np.intp)
        if self.by_sex:
            known &= np.isin(sex, (0.0, 1.0))
            row = np.where(known, sex, 0).astype(np.intp)
        out: FloatArray = np.where(known, table[row, band], self.overall)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StratumOffsets:
        return cls(
            data["age_band_years"],
            bool(data["by_sex"]),
            tuple(Stratum(**s) for s in data["strata"]),
        )


@dataclass(frozen=True)
class LogitCalibration:
    """logit(p) = slope * margin + intercept + shift, the shift a row's stratum offset when
    `strata` is set (`row_shift`)."""

    slope: float
    intercept: float
    shift: float = 0.0
    strata: StratumOffsets | None = None

    def row_shift(self, age: FloatArray, sex: FloatArray) -> FloatArray:
        """Each row's shift: its stratum's log r_s, or the global shift."""
        if self.strata is None:
            return np.full(np.shape(age), self.shift)
        return self.strata.log_ratio(age, sex)

    def log_odds(self, margin: FloatArray, shift: FloatArray | None = None) -> FloatArray:
        """Calibrated log-odds; `shift` (per row, from `row_shift`) replaces the global one."""
        offset = self.shift if shift is None else shift
        result: FloatArray = margin * self.slope + self.intercept + offset
        return result

    def probability(self, margin: FloatArray, shift: FloatArray | None = None) -> FloatArray:
        return expit(self.log_odds(margin, shift))

    def population_weights(self, y: FloatArray, age: FloatArray, sex: FloatArray) -> FloatArray:
        """Rows of a stratified case-control sample weighted to the population: 1 for a case,
        1 / r_s for a control (each sampled control stands for 1 / r_s non-cases); 1 for every
        row of a model without strata."""
        if self.strata is None:
            return np.ones(np.shape(y))
        out: FloatArray = np.where(
            np.asarray(y) == 1, 1.0, np.exp(-self.strata.log_ratio(age, sex))
        )
        return out

    @property
    def offset(self) -> float:
        """What the calibration adds to the scaled margin (intercept plus the global shift)."""
        return self.intercept + self.shift

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"slope": self.slope, "intercept": self.intercept,
                               "shift": self.shift}  # fmt: skip
        if self.strata is not None:
            out["strata"] = self.strata.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitCalibration:
        strata = data.get("strata")
        return cls(
            float(data["slope"]),
            float(data["intercept"]),
            float(data.get("shift", 0.0)),
            None if strata is None else StratumOffsets.from_dict(strata),
        )
