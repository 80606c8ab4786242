"""Triage bands: probability -> green / amber / red, from thresholds stored with the model.

Green (rule-out) is below the rule-out threshold; red (rule-in) is at or above the rule-in
threshold; amber is between. A threshold that no cut-off could meet on the calibration period is
stored as None, and then that band is never given: the model does not pretend to a rule-out or
rule-in it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Band = Literal["green", "amber", "red"]
BANDS: tuple[Band, ...] = ("green", "amber", "red")

RECOMMENDATIONS: dict[tuple[str, Band], str] = {
    ("referrals", "green"): (
        "Low estimated risk: consider management in primary care with safety-netting instead of "
        "an urgent suspected-cancer referral, if clinically appropriate."
    ),
    ("referrals", "amber"): (
        "Intermediate estimated risk: proceed with the urgent referral as usual."
    ),
    ("referrals", "red"): "High estimated risk: expedite the urgent suspected-cancer referral.",
    ("primary_care", "green"): (
        "Low estimated risk of myeloma from these blood results: no reflex myeloma tests "
        "suggested; safety-net as usual."
    ),
    ("primary_care", "amber"): (
        "Intermediate estimated risk of myeloma: consider serum protein electrophoresis and free "
        "light chains if symptoms persist."
    ),
    ("primary_care", "red"): (
        "High estimated risk of myeloma: request serum protein electrophoresis and serum free "
        "light chains."
    ),
}


@dataclass(frozen=True)
class Thresholds:
    """Probability cut-offs chosen on the calibration period (None: that band is not offered)."""

    rule_out: float | None
    rule_in: float | None

    def __post_init__(self) -> None:
        if self.rule_out is not None and self.rule_in is not None and self.rule_in < self.rule_out:
            raise ValueError(f"rule-in {self.rule_in} is below rule-out {self.rule_out}")

    def to_dict(self) -> dict[str, float | None]:
        return {"rule_out": self.rule_out, "rule_in": self.rule_in}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        return cls(data.get("rule_out"), data.get("rule_in"))


def assign_band(probability: float, thresholds: Thresholds) -> Band:
    """The band of one probability."""
    if thresholds.rule_in is not None and probability >= thresholds.rule_in:
        return "red"
    if thresholds.rule_out is not None and probability < thresholds.rule_out:
        return "green"
    return "amber"


def band_codes(
    probability: npt.NDArray[np.float64], thresholds: Thresholds
) -> npt.NDArray[np.int8]:
    """The band of each probability as its position in BANDS (vectorised twin of `assign_band`)."""
    codes = np.full(probability.shape, BANDS.index("amber"), dtype=np.int8)
    if thresholds.rule_out is not None:
        codes[probability < thresholds.rule_out] = BANDS.index("green")
    if thresholds.rule_in is not None:
        codes[probability >= thresholds.rule_in] = BANDS.index("red")
    return codes


def assign_bands(probability: npt.NDArray[np.float64], thresholds: Thresholds) -> npt.NDArray[Any]:
    """The band of each probability (vectorised twin of `assign_band`)."""
    names: npt.NDArray[Any] = np.array(BANDS, dtype=object)[band_codes(probability, thresholds)]
    return names


def recommend(band: Band, cohort_kind: str) -> str:
    """The recommendation wording for a band, by the kind of cohort the model serves."""
    return RECOMMENDATIONS[(cohort_kind, band)]
