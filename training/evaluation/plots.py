"""The report's figures as embedded PNG images: ROC, calibration with its CI band, decision curve,
subgroup forest plot and the SHAP beeswarm.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation.formatting import family_label, is_finite_number, number_text

PLOT_DPI = 110
MODEL_LABEL = "LightGBM"
BASELINE_LABEL = "Baseline"


# --------------------------------------------------------------------------- plots


def _png(draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """Draw on a new figure, return it as an <img> data URI, and always close the figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size)
    try:
        draw(fig)
        return _encode(fig)
    finally:
        plt.close(fig)


def _encode(fig: Any) -> str:
    buffer = io.BytesIO()
    # No "Software" text chunk: the page should carry no URL of any kind.
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


def roc_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """ROC curves of the model (and the baseline), with the chance line."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for label, ev in _models(evaluation, baseline):
            roc = ev.get("roc") or {}
            auc = (ev.get("auc") or {}).get("estimate")
            ax.plot(
                roc.get("fpr", []), roc.get("tpr", []), label=f"{label} (AUC {number_text(auc)})"
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")

    return _png(draw, (5.0, 4.6))


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

    return _png(draw, (5.0, 4.6))


def decision_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """Net benefit against threshold probability over the evaluation's own grid (log axis),
    with treat-all and treat-none and the quoted point marked with its reason."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        curve = pd.DataFrame(evaluation.get("net_benefit") or [])
        if curve.empty:
            return
        curve = curve[curve["threshold"] > 0]
        for label, ev in _models(evaluation, baseline):
            own = pd.DataFrame(ev.get("net_benefit") or [])
            if not own.empty:
                own = own[own["threshold"] > 0]
                ax.plot(own["threshold"], own["model"], label=label)
        ax.plot(curve["threshold"], curve["treat_all"], color="grey", label="treat all")
        ax.plot(curve["threshold"], curve["treat_none"], color="black", label="treat none")
        at = evaluation.get("net_benefit_at") or {}
        if is_finite_number(at.get("threshold")) and is_finite_number(at.get("model")):
            reason = at.get("reason")
            ax.plot(
                [at["threshold"]],
                [at["model"]],
                "o",
                color="red",
                label=f"quoted: {at['threshold']:.3g}" + (f" ({reason})" if reason else ""),
            )
            ax.axvline(at["threshold"], color="red", linestyle=":", alpha=0.6)
        prevalence = evaluation.get("prevalence")
        top = prevalence if is_finite_number(prevalence) and prevalence > 0 else 0.1
        if not curve.empty:
            ax.set_xscale("log")
            ax.set_xlim(float(curve["threshold"].min()), float(curve["threshold"].max()))
        ax.set(
            xlabel="threshold probability (log scale)",
            ylabel="net benefit",
            ylim=(-0.1 * top, 1.1 * top),
        )
        ax.legend(loc="upper right", fontsize="small")

    return _png(draw, (6.0, 4.2))


def forest_plot(rows: Sequence[Mapping[str, Any]], target: float | None) -> str:
    """Subgroup AUCs with their CIs (and the rule-out sensitivity target, when given)."""
    labels = [f"{r['column']}: {r['level']}" for r in rows]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(rows))[::-1]
        auc = np.array([r.get("auc", math.nan) for r in rows], dtype=float)
        low = np.array([r.get("auc_low", math.nan) for r in rows], dtype=float)
        high = np.array([r.get("auc_high", math.nan) for r in rows], dtype=float)
        axes[0].errorbar(auc, y, xerr=_spread(auc, low, high), fmt="o", capsize=2)
        axes[0].set(xlabel="AUC (95% CI)", title="Discrimination")
        sens = [r.get("rule_out_sensitivity") or {} for r in rows]
        est = np.array([s.get("estimate", math.nan) for s in sens], dtype=float)
        s_low = np.array([s.get("low", math.nan) for s in sens], dtype=float)
        s_high = np.array([s.get("high", math.nan) for s in sens], dtype=float)
        axes[1].errorbar(est, y, xerr=_spread(est, s_low, s_high), fmt="s", capsize=2)
        axes[1].set(xlabel="rule-out sensitivity (95% CI)", title="Green band safety")
        if target is not None:
            axes[1].axvline(target, color="red", linestyle=":", label=f"target {target:g}")
            axes[1].legend(loc="lower left")
        axes[0].set_yticks(y, labels)
        for ax in axes:
            ax.grid(axis="x", alpha=0.3)

    return _png(draw, (8.0, 1.0 + 0.32 * len(rows)))


def _spread(estimate: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths (NaN-safe: no bar where the interval is undefined)."""
    lower = np.where(np.isfinite(low), estimate - low, 0.0)
    upper = np.where(np.isfinite(high), high - estimate, 0.0)
    return np.nan_to_num(np.vstack([lower, upper]).clip(min=0.0))


def shap_plot(sample: pd.DataFrame, max_display: int = 15) -> str:
    """SHAP beeswarm (the shap library) of calibrated log-odds contributions."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # shap 0.51 trips matplotlib colormap deprecations on import
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    features = [c.removeprefix("contrib__") for c in sample.columns if c.startswith("contrib__")]
    values = sample[[f"contrib__{f}" for f in features]].to_numpy(dtype=np.float64)
    data = np.column_stack([_numeric(sample.get(f"value__{f}"), len(sample)) for f in features])
    explanation = shap.Explanation(
        values=values,
        base_values=sample["base"].to_numpy(dtype=np.float64),
        data=data,
        feature_names=features,
    )
    plt.close("all")  # beeswarm draws on the current figure: start from a fresh one
    try:
        shap.plots.beeswarm(explanation, show=False, max_display=max_display)
        plt.gca().set_xlabel("contribution to the calibrated log-odds (SHAP value)")
        return _encode(plt.gcf())
    finally:
        plt.close("all")


def _numeric(column: pd.Series | None, n: int) -> np.ndarray:
    """Feature values as floats for colouring (categories become codes; absent: NaN)."""
    if column is None:
        return np.full(n, np.nan)
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().sum() < column.notna().sum():
        codes, _ = pd.factorize(column)
        return np.where(codes < 0, np.nan, codes).astype(np.float64)
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)
