"""Triage bands: probability -> green / amber / red, from thresholds stored with the model.

Green (rule-out) is below the rule-out threshold; red (rule-in) is at or above the rule-in
threshold; amber is between. A threshold that no cut-off could meet on the calibration period is
stored as None, and then that band is never given: the model does not pretend to a rule-out or
rule-in it lacks.

Each band comes with a recommendation in words: the spec's `triage.recommendations`, or the
default for its cohort kind (referrals, primary_care, generic) naming the spec's outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from models.spec import ModelSpec

Band = Literal["green", "amber", "red"]
BANDS: tuple[Band, ...] = ("green", "amber", "red")

# Default recommendation per cohort kind and band; '{outcome}' is replaced by the outcome's name.
# A spec's `triage.recommendations` overrides any band (the myeloma spec gives its own tests).
# The referral texts name the service (the urgent suspected-cancer referral), not the outcome.
DEFAULT_RECOMMENDATIONS: dict[str, dict[Band, str]] = {
    "referrals": {
        "green": (
            "Low estimated risk: consider management in primary care with safety-netting instead "
            "of an urgent suspected-cancer referral, if clinically appropriate."
        ),
        "amber": "Intermediate estimated risk: proceed with the urgent referral as usual.",
        "red": "High estimated risk: expedite the urgent suspected-cancer referral.",
    },
    "primary_care": {
        "green": (
            "Low estimated risk of {outcome} from these blood results: no further tests suggested "
            "on this account; safety-net as usual."
        ),
        "amber": (
            "Intermediate estimated risk of {outcome}: consider further tests if symptoms persist."
        ),
        "red": "High estimated risk of {outcome}: consider prompt investigation or referral.",
    },
    "generic": {
        "green": "Low estimated risk of {outcome}: follow the local protocol for the green band.",
        "amber": (
            "Intermediate estimated risk of {outcome}: follow the local protocol for the amber "
            "band."
        ),
        "red": "High estimated risk of {outcome}: follow the local protocol for the red band.",
    },
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


def recommendation_texts(
    cohort_kind: str, outcome: str = "cancer", overrides: Mapping[Band, str] | None = None
) -> dict[Band, str]:
    """The recommendation for each band: the spec's own text (`overrides`) or the cohort kind's
    default, with '{outcome}' replaced by the outcome's name."""
    texts: dict[Band, str] = {**DEFAULT_RECOMMENDATIONS[cohort_kind], **(overrides or {})}
    return {band: texts[band].replace("{outcome}", outcome) for band in BANDS}


def spec_recommendations(spec: ModelSpec) -> dict[Band, str]:
    """The recommendation for each band that a model of this spec serves."""
    return recommendation_texts(spec.cohort.kind, spec.outcome.name, spec.triage.recommendations)


def recommend(band: Band, spec: ModelSpec) -> str:
    """The recommendation served with a band by a model of this spec."""
    return spec_recommendations(spec)[band]
