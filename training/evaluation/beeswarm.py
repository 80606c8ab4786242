"""The report's SHAP beeswarm, drawn here rather than by `shap.plots.beeswarm`: shap lays its
points out after shuffling them with numpy's global RNG (so two renders of one sample differed)
and draws on pyplot's current figure. This layout is deterministic and draws on the figure it is
given.

Numeric features are coloured from low (blue) to high (red) feature value, with their units in
the label (the catalogue's display unit; age in years). Categorical features (sex, pathway, any
non-numeric column) have no low or high: each category gets its own colour, named in a legend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import CATALOGUE
from models.features import DERIVED, DIMENSIONLESS, SEX_CODES
from models.predictor import PATHWAY_CODES

RGBA = tuple[float, float, float, float]
MISSING_COLOUR: RGBA = (0.62, 0.62, 0.62, 1.0)
NUMERIC_COLOURMAP = "coolwarm"
# Categorical inputs the predictor codes as numbers, with the code of each category.
CODED_CATEGORIES: dict[str, dict[float, str]] = {
    "sex": {code: name for name, code in SEX_CODES.items()},
    "pathway": {code: name for name, code in PATHWAY_CODES.items()},
}
_BINS = 120  # horizontal bins of the swarm layout across the plotted range
_HALF_HEIGHT = 0.4  # a row's points stay within +-0.4 of its line (rows are 1 apart)


def feature_label(feature: str) -> str:
    """The feature's name with its unit: `crp (mg/L)`, `age (years)`, `nlr (ratio)`; a feature
    without a known unit (a category, a spec's own expression) keeps its bare name."""
    if feature == "age":
        return "age (years)"
    if feature in CATALOGUE:
        return f"{feature} ({CATALOGUE[feature].display_unit})"
    if feature in DERIVED:
        unit = DERIVED[feature].unit
        return f"{feature} ({'ratio' if unit == DIMENSIONLESS else unit})"
    return feature


def is_categorical(feature: str, values: pd.Series) -> bool:
    """Sex, pathway and any column that is not numeric have categories, not low and high."""
    return feature in CODED_CATEGORIES or not pd.api.types.is_numeric_dtype(values)


@dataclass(frozen=True)
class FeatureColours:
    """Each point's colour, and for a categorical feature the colour of each category."""

    rgba: npt.NDArray[np.float64]  # (n, 4)
    categories: Mapping[str, RGBA] | None  # None: numeric, coloured low -> high


def category_palette() -> list[RGBA]:
    """Qualitative colours for categories, none of them grey (grey means missing): tab20's dark
    shades first, then its light ones."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return [tab20(i) for i in order if i not in (14, 15)]


def feature_colours(feature: str, values: pd.Series, first_colour: int = 0) -> FeatureColours:
    """Point colours for one feature: numeric values along the colour map between their 5th and
    95th percentiles; categories (coded ones by name) by `category_palette` from its
    `first_colour`-th colour on (so two categorical features need not share colours); missing
    values grey."""
    from matplotlib import colormaps

    n = len(values)
    rgba = np.tile(np.array(MISSING_COLOUR), (n, 1))
    if is_categorical(feature, values):
        names = _category_names(feature, values)
        present = names.notna().to_numpy()
        levels = sorted({str(v) for v in names[present]})
        palette = category_palette()
        categories = {
            level: palette[(first_colour + i) % len(palette)] for i, level in enumerate(levels)
        }
        text = names.astype(str).to_numpy()
        for level, colour in categories.items():
            rgba[present & (text == level)] = colour
        return FeatureColours(rgba, categories)
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(numeric)
    if finite.any():
        low, high = np.percentile(numeric[finite], [5, 95])
        scaled = np.clip((numeric[finite] - low) / (high - low), 0, 1) if high > low else 0.5
        rgba[finite] = colormaps[NUMERIC_COLOURMAP](scaled)
    return FeatureColours(rgba, None)


def _category_names(feature: str, values: pd.Series) -> pd.Series:
    """Category names: a coded column's codes replaced by their names (unknown codes kept)."""
    codes = CODED_CATEGORIES.get(feature)
    if codes is None:
        return values.astype(object).where(values.notna())
    numeric = pd.to_numeric(values, errors="coerce")
    named = numeric.map(lambda c: codes.get(float(c), f"code {c:g}") if pd.notna(c) else None)
    return named.where(numeric.notna(), values.astype(object).where(values.notna()))


def swarm_offsets(x: npt.NDArray[np.float64], bins: int = _BINS) -> npt.NDArray[np.float64]:
    """Vertical offsets (within +-_HALF_HEIGHT) that spread points of similar `x` into a swarm:
    points are binned by x, and within a bin stacked alternately above and below the line in
    the order of their x (ties by position). Deterministic: no random jitter."""
    offsets = np.zeros(x.size)
    if x.size == 0:
        return offsets
    low, high = float(np.min(x)), float(np.max(x))
    width = (high - low) / bins if high > low else 1.0
    bin_of = np.floor((x - low) / width).astype(np.int64)
    order = np.lexsort((np.arange(x.size), x, bin_of))
    sorted_bins = bin_of[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_bins)) + 1]
    rank = np.arange(x.size) - np.repeat(starts, np.diff(np.r_[starts, x.size]))
    layer = (rank + 1) // 2 * np.where(rank % 2 == 1, 1.0, -1.0)
    offsets[order] = layer
    deepest = float(np.max(np.abs(offsets)))
    return offsets * (_HALF_HEIGHT / deepest) if deepest > 0 else offsets


def draw_beeswarm(fig: Any, sample: pd.DataFrame, max_display: int, note: str) -> None:
    """The beeswarm of `sample`'s `contrib__*` columns (coloured by `value__*`) on `fig`: the
    `max_display - 1` features of largest mean |SHAP| and the sum of the others, most important
    at the top; `note` (the sample's size) under the axis label."""
    features = [c.removeprefix("contrib__") for c in sample.columns if c.startswith("contrib__")]
    contributions = sample[[f"contrib__{f}" for f in features]].to_numpy(dtype=np.float64)
    importance = np.nanmean(np.abs(contributions), axis=0)
    ranked = [features[i] for i in np.argsort(-importance, kind="stable")]
    shown = ranked if len(ranked) <= max_display else ranked[: max_display - 1]
    rest = ranked[len(shown) :]
    ax = fig.add_subplot()
    legend: dict[str, RGBA] = {}
    rows = [*([("rest", rest)] if rest else []), *((f, [f]) for f in reversed(shown))]
    labels = []
    for y, (name, group) in enumerate(rows):
        x = sample[[f"contrib__{f}" for f in group]].to_numpy(dtype=np.float64).sum(axis=1)
        if name == "rest":
            colours = np.tile(np.array(MISSING_COLOUR), (len(x), 1))
            labels.append(f"sum of {len(rest)} other features")
        else:
            values = sample.get(f"value__{name}", pd.Series(np.nan, index=sample.index))
            coloured = feature_colours(name, values, first_colour=len(legend))
            colours = coloured.rgba
            labels.append(feature_label(name))
            for level, colour in (coloured.categories or {}).items():
                legend[f"{name}: {level}"] = colour
        ax.axhline(y, color="#dddddd", linewidth=0.6, zorder=0)
        ax.scatter(x, y + swarm_offsets(x), c=colours, s=7, linewidths=0, rasterized=False)
    ax.axvline(0, color="#888888", linewidth=0.8, zorder=0)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"contribution to the calibrated log-odds (SHAP value)\n{note}")
    _colour_keys(fig, ax, legend)


def _colour_keys(fig: Any, ax: Any, categories: Mapping[str, RGBA]) -> None:
    """The numeric colour bar (low -> high feature value) and the categories' legend below."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    bar = fig.colorbar(
        ScalarMappable(cmap=colormaps[NUMERIC_COLOURMAP]), ax=ax, ticks=[0, 1], fraction=0.04
    )
    bar.ax.set_yticklabels(["low", "high"])
    bar.set_label("numeric feature value (5th-95th percentile); grey: missing")
    if categories:
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colour, label=label)
            for label, colour in categories.items()
        ]
        ax.legend(
            handles=handles,
            title="categorical features (no low/high)",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=3,
            fontsize="small",
            frameon=False,
        )
