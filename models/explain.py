"""Exact explanations in calibrated log-odds, grouped by panel and worded for clinicians.

LightGBM's TreeSHAP (`pred_contrib=True`) gives margin = phi_0 + sum(phi_i) exactly. Calibration is
affine in log-odds (models.calibration), so the calibrated contributions are `slope * phi_i` and the
base is `slope * phi_0 + intercept + shift`: they add up to logit(probability) for every prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.analytes import Catalogue, Sex
from models.calibration import LogitCalibration
from models.features import DERIVED, DIMENSIONLESS, DerivedFeature

FloatArray = npt.NDArray[np.float64]
CONTEXT_PANEL = "context"
DEMOGRAPHIC_PANEL = "demographics"


def calibrated_contributions(
    raw: FloatArray, calibration: LogitCalibration, shift: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """(base, contributions) in calibrated log-odds from `pred_contrib` output (n, k + 1); `shift`
    is each row's case-control offset (`LogitCalibration.row_shift`), added to its base."""
    contributions: FloatArray = raw[:, :-1] * calibration.slope
    offset = calibration.offset if shift is None else calibration.intercept + shift
    base: FloatArray = raw[:, -1] * calibration.slope + offset
    return base, contributions


def feature_panel(
    name: str, catalogue: Catalogue, derived: Mapping[str, DerivedFeature] = DERIVED
) -> str:
    """The panel a model feature belongs to, for grouping contributions. `derived` holds the
    model's derived features by name (a spec's own ones included)."""
    if name in catalogue:
        return catalogue[name].panel
    if name in derived:
        return derived[name].panel
    return CONTEXT_PANEL if name == "pathway" else DEMOGRAPHIC_PANEL


def group_by_panel(
    contributions: Mapping[str, float],
    catalogue: Catalogue,
    derived: Mapping[str, DerivedFeature] = DERIVED,
) -> dict[str, float]:
    """Contributions summed by panel (log-odds), largest absolute first."""
    groups: dict[str, float] = {}
    for name, value in contributions.items():
        panel = feature_panel(name, catalogue, derived)
        groups[panel] = groups.get(panel, 0.0) + value
    return dict(sorted(groups.items(), key=lambda kv: -abs(kv[1])))


@dataclass(frozen=True)
class Driver:
    feature: str
    value: float | str | None
    unit: str | None
    reference: str | None
    position: str | None  # below / within / above the reference interval
    contribution: float
    text: str


def _effect(contribution: float) -> str:
    return "increased" if contribution > 0 else "decreased"


def describe_driver(
    name: str,
    value: float | str | None,
    contribution: float,
    catalogue: Catalogue,
    *,
    sex: Sex | None = None,
    age: float | None = None,
    derived: Mapping[str, DerivedFeature] = DERIVED,
) -> Driver:
    """One feature's contribution in words, with its value, unit and reference interval
    (a derived feature: its title, and its unit unless dimensionless)."""
    effect = _effect(contribution)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if name in catalogue:
        analyte = catalogue[name]
        if missing:
            text = f"{analyte.name} not measured; its absence {effect} the estimated risk"
            return Driver(name, None, analyte.display_unit, None, None, contribution, text)
        assert isinstance(value, float | int)
        interval = analyte.reference_for(sex, age)
        position = (
            "below"
            if interval.low is not None and value < interval.low
            else "above"
            if interval.high is not None and value > interval.high
            else "within"
        )
        shown = f"{round(value, analyte.decimals):g} {analyte.display_unit}"
        reference = f"{interval.describe()} {analyte.display_unit}"
        text = (
            f"{analyte.name} {shown}, {position} the reference interval {reference}, "
            f"{effect} the estimated risk"
        )
        return Driver(name, float(value), analyte.display_unit, reference, position,
                      contribution, text)  # fmt: skip
    if name in derived:
        feature = derived[name]
        unit = None if feature.unit == DIMENSIONLESS else feature.unit
        shown = "not available" if missing else f"{value:.3g}"
        if unit is not None and not missing:
            shown = f"{shown} {unit}"
        text = f"{feature.title} {shown} {effect} the estimated risk"
        return Driver(name, None if missing else value, unit, None, None, contribution, text)
    if name == "age":
        text = f"Age {value:g} {effect} the estimated risk"
    elif name == "sex":
        text = f"{str(value).capitalize()} sex {effect} the estimated risk"
    else:
        text = f"{name.replace('_', ' ').capitalize()} ({value}) {effect} the estimated risk"
    return Driver(name, value, None, None, None, contribution, text)


def top_drivers(
    names: Sequence[str],
    values: Mapping[str, float | str | None],
    contributions: Sequence[float],
    catalogue: Catalogue,
    *,
    sex: Sex | None = None,
    age: float | None = None,
    k: int = 5,
    derived: Mapping[str, DerivedFeature] = DERIVED,
) -> list[Driver]:
    """The k features with the largest absolute contributions, worded."""
    order = np.argsort(-np.abs(np.asarray(contributions)), kind="stable")[:k]
    return [
        describe_driver(
            names[i],
            values.get(names[i]),
            float(contributions[i]),
            catalogue,
            sex=sex,
            age=age,
            derived=derived,
        )
        for i in order
        if contributions[i] != 0.0
    ]
