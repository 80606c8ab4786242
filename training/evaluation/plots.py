"""The report's figures as embedded PNG images: ROC with its bootstrap band and operating points,
calibration with its CI band, decision curve, subgroup forest plot and the SHAP beeswarm.

Drawn with matplotlib's object API (`Figure` on an Agg canvas), never pyplot: rendering leaves
the process's backend and figure list as they were, and the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation.beeswarm import draw_beeswarm
from training.evaluation.formatting import (
    family_label,
    is_finite_number,
    number_text,
    probability_text,
)

PLOT_DPI = 110
# Fallback names, only for evaluations that do not record their model family.
MODEL_LABEL = "served model"
BASELINE_LABEL = "comparator"
GREEN, RED = "#1a9850", "#d73027"


# --------------------------------------------------------------------------- plots


def figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """Draw on a new figure of matplotlib's object API (no pyplot: no global figure list, no
    backend switch) and return it as an <img> data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    draw(fig)
    return _encode(fig)


def _encode(fig: Any) -> str:
    buffer = io.BytesIO()
    # No "Software" text chunk: the page should carry no URL of any kind (and no version).
    fig.savefig(
        buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight", metadata={"Software": None}
    )
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _models(
    evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None
) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, evaluation) pairs: each labelled by its model family when recorded."""
    pairs = [(family_label(evaluation.get("model_family"), MODEL_LABEL), evaluation)]
    if baseline:
        label = family_label(baseline.get("model_family"), BASELINE_LABEL)
        pairs.append((label if label != pairs[0][0] else f"{label} (comparator)", baseline))
    return pairs


def operating_points(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The green (rule-out) and red (rule-in) thresholds as ROC points: band, threshold,
    false-positive rate (1 - specificity) and sensitivity (bands without a threshold left out)."""
    points = []
    thresholds = evaluation.get("thresholds") or {}
    for band, sign in (("green", "<"), ("red", "≥")):
        block = thresholds.get(band)
        if not isinstance(block, Mapping):
            continue
        sensitivity = (block.get("sensitivity") or {}).get("estimate")
        specificity = (block.get("specificity") or {}).get("estimate")
        threshold = block.get("threshold")
        if (
            is_finite_number(sensitivity)
            and is_finite_number(specificity)
            and is_finite_number(threshold)
        ):
            points.append(
                {
                    "band": band,
                    "threshold": threshold,
                    "label": f"{band}: p {sign} {probability_text(threshold)}",
                    "fpr": 1 - specificity,
                    "tpr": sensitivity,
                }
            )
    return points


def roc_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """ROC curves of the model (and the comparator), the served model's pointwise 95% bootstrap
    band (when the evaluation has one) and its green and red operating points."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for i, (label, ev) in enumerate(_models(evaluation, baseline)):
            roc = ev.get("roc") or {}
            auc = (ev.get("auc") or {}).get("estimate")
            line = ax.plot(
                roc.get("fpr", []), roc.get("tpr", []), label=f"{label} (AUC {number_text(auc)})"
            )
            band = roc.get("band") or {}
            if i == 0 and band.get("fpr"):
                low = np.array(band["low"], dtype=float)
                high = np.array(band["high"], dtype=float)
                ax.fill_between(
                    band["fpr"],
                    low,
                    high,
                    color=line[0].get_color(),
                    alpha=0.2,
                    linewidth=0,
                    label=f"{label} 95% CI (pointwise bootstrap)",
                )
        for point in operating_points(evaluation):
            colour = GREEN if point["band"] == "green" else RED
            ax.plot(
                [point["fpr"]],
                [point["tpr"]],
                "o",
                color=colour,
                markeredgecolor="black",
                zorder=5,
                label=point["label"],
            )
            right = point["fpr"] > 0.6
            ax.annotate(
                point["label"],
                (point["fpr"], point["tpr"]),
                xytext=(-8 if right else 8, -18),
                textcoords="offset points",
                ha="right" if right else "left",
                color=colour,
                fontsize="small",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": colour},
                zorder=6,
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize="small")

    return figure_png(draw, (5.4, 5.0))


def calibration_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """Observed against predicted risk by bin, with Wilson 95% bands."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        top = 0.0
        for label, ev in _models(evaluation, baseline):
            curve = pd.DataFrame(ev.get("calibration_curve") or [])
            if curve.empty:
                continue
            line = ax.plot(curve["mean_predicted"], curve["observed"], marker="o", label=label)
            ax.fill_between(
                curve["mean_predicted"],
                curve["low"],
                curve["high"],
                color=line[0].get_color(),
                alpha=0.2,
                label=f"{label} 95% CI",
            )
            top = max(top, float(np.nanmax(curve[["mean_predicted", "high"]].to_numpy())))
        top = min(1.0, top * 1.05) if top > 0 else 1.0
        ax.plot([0, top], [0, top], color="grey", linestyle=":", label="ideal")
        ax.set(xlabel="mean predicted probability", ylabel="observed proportion")
        ax.set(xlim=(0, top), ylim=(0, top))
        ax.legend(loc="upper left")

    return figure_png(draw, (5.0, 4.6))


def decision_range(prevalence: float, thresholds: Sequence[float]) -> tuple[float, float]:
    """The decision curve's threshold range: from a tenth of the prevalence (where treat-all is
    still near its maximum, the prevalence), or just below the lowest of `thresholds` (the band
    thresholds and the quoted point) when that is lower, to three times the highest of them or
    of the prevalence, capped at 0.5 and at least a 20-fold range. All on the curve's scale."""
    prevalence = prevalence if is_finite_number(prevalence) and 0 < prevalence < 1 else 0.05
    finite = [t for t in thresholds if is_finite_number(t) and 0 < t < 1]
    low = min([prevalence / 10, *(0.8 * t for t in finite)])
    high = min(0.5, 3 * max([prevalence, *finite]))
    return low, min(0.5, max(high, 20 * low))


def _percent(value: float, _position: Any = None) -> str:
    """A threshold probability as a percentage tick label: 0.0005 -> `0.05%`, 0.2 -> `20%`."""
    return f"{value * 100:.3g}%"


def decision_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """Net benefit against threshold probability (log axis, percent labels) over
    `decision_range`, with treat-all and treat-none, the green and red thresholds and the quoted
    point with its reason (as the title). Legend below the axes."""
    at = evaluation.get("net_benefit_at") or {}
    bands = operating_points(evaluation)
    prevalence = evaluation.get("prevalence")
    low, high = decision_range(
        prevalence if is_finite_number(prevalence) else math.nan,
        [*(b["threshold"] for b in bands), at.get("threshold", math.nan)],
    )

    def within(rows: Any) -> pd.DataFrame:
        curve = pd.DataFrame(rows or [])
        if curve.empty:
            return curve
        return curve[(curve["threshold"] > 0) & curve["threshold"].between(low, high)]

    def draw(fig: Any) -> None:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax = fig.add_subplot()
        curve = within(evaluation.get("net_benefit"))
        if curve.empty:
            return
        top = 0.0
        for label, ev in _models(evaluation, baseline):
            own = within(ev.get("net_benefit"))
            if not own.empty:
                ax.plot(own["threshold"], own["model"], label=label)
                top = max(top, float(np.nanmax(own["model"])))
        ax.plot(curve["threshold"], curve["treat_all"], color="grey", label="treat all")
        ax.plot(curve["threshold"], curve["treat_none"], color="black", label="treat none")
        top = max(top, float(np.nanmax(curve["treat_all"])), 1e-9)
        for band in bands:
            colour = GREEN if band["band"] == "green" else RED
            ax.axvline(
                band["threshold"],
                color=colour,
                linestyle="--",
                alpha=0.8,
                label=f"{band['label']} threshold",
            )
        if is_finite_number(at.get("threshold")) and is_finite_number(at.get("model")):
            ax.plot(
                [at["threshold"]],
                [at["model"]],
                "D",
                color="black",
                label=f"quoted point: {_percent(at['threshold'])}",
            )
            reason = at.get("reason") or "reason not recorded"
            ax.set_title(
                textwrap.fill(f"Quoted at {_percent(at['threshold'])}: {reason}", 70),
                fontsize="small",
            )
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        decades = math.log10(high / low)
        subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0, 3.0) if decades <= 3.5 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(_percent))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(
            xlabel="threshold probability (log scale)",
            ylabel="net benefit",
            ylim=(-0.15 * top, 1.08 * top),
        )
        ax.grid(alpha=0.3)
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small", frameon=False
        )

    return figure_png(draw, (6.4, 4.4))


def forest_plot(
    rows: Sequence[Mapping[str, Any]],
    target: float | None,
    oe_range: Sequence[float] | None = None,
) -> str:
    """Subgroup AUCs, O/E and rule-out sensitivities with their CIs (and the sensitivity target
    and the O/E range, when given)."""
    labels = [f"{r['column']}: {r['level']}" for r in rows]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 3, sharey=True)
        y = np.arange(len(rows))[::-1]
        auc = [
            {"estimate": r.get("auc"), "low": r.get("auc_low"), "high": r.get("auc_high")}
            for r in rows
        ]
        oe = [
            r.get("observed_expected_ci") or {"estimate": r.get("observed_expected")} for r in rows
        ]
        sens = [r.get("rule_out_sensitivity") or {} for r in rows]
        for ax, intervals, marker, title, xlabel in (
            (axes[0], auc, "o", "Discrimination", "AUC (95% CI)"),
            (axes[1], oe, "D", "Calibration", "observed / expected (95% CI)"),
            (axes[2], sens, "s", "Green band safety", "rule-out sensitivity (95% CI)"),
        ):
            est, low, high = (_column(intervals, k) for k in ("estimate", "low", "high"))
            ax.errorbar(est, y, xerr=_spread(est, low, high), fmt=marker, capsize=2)
            ax.set(xlabel=xlabel, title=title)
            ax.grid(axis="x", alpha=0.3)
        axes[1].axvline(1.0, color="grey", linestyle=":")
        if oe_range is not None and len(oe_range) == 2:
            axes[1].axvspan(
                float(oe_range[0]),
                float(oe_range[1]),
                color="grey",
                alpha=0.1,
                label=f"accepted {oe_range[0]:g}-{oe_range[1]:g}",
            )
            axes[1].legend(loc="lower left", fontsize="small")
        if target is not None:
            axes[2].axvline(target, color="red", linestyle=":", label=f"target {target:g}")
            axes[2].legend(loc="lower left", fontsize="small")
        axes[0].set_yticks(y, labels)

    return figure_png(draw, (11.0, 1.2 + 0.32 * len(rows)))


def _column(intervals: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One key of each interval as floats (NaN where absent or not a number)."""
    return np.array([v if is_finite_number(v := i.get(key)) else math.nan for i in intervals])


def _spread(estimate: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths (NaN-safe: no bar where the interval is undefined)."""
    lower = np.where(np.isfinite(low), estimate - low, 0.0)
    upper = np.where(np.isfinite(high), high - estimate, 0.0)
    return np.nan_to_num(np.vstack([lower, upper]).clip(min=0.0))


def shap_plot(sample: pd.DataFrame, seed: int | None = None, max_display: int = 15) -> str:
    """The SHAP beeswarm (`beeswarm.draw_beeswarm`) of calibrated log-odds contributions, with
    the sample's size (and the seed that drew it, when known) under the axis."""
    drawn = f", seed {seed}" if seed is not None else ""
    note = f"n = {len(sample):,} evaluation rows (random sample{drawn})"
    height = 1.6 + 0.36 * min(
        max_display, sum(str(c).startswith("contrib__") for c in sample.columns)
    )
    return figure_png(lambda fig: draw_beeswarm(fig, sample, max_display, note), (8.0, height))
