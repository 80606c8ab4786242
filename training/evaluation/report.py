"""The model card (with a TRIPOD+AI checklist) and one self-contained HTML evaluation report.

The report is a single HTML string: inline CSS, plots embedded as base64 PNG, no external
resources, every piece of text escaped. It is rendered from the JSON-serialisable dicts of
`training.evaluate.evaluate_predictions`, so a logged run can be re-rendered from its artifacts.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
import pandas as pd

from models.spec import ModelSpec
from models.validation import ISSUE_CODES
from training.json_files import json_safe

PLOT_DPI = 110
MODEL_LABEL = "LightGBM"
BASELINE_LABEL = "Baseline"
SECTIONS: dict[str, str] = {
    "card": "Model card",
    "tripod": "TRIPOD+AI checklist",
    "headline": "Headline metrics",
    "roc": "ROC curve",
    "calibration": "Calibration",
    "decision": "Decision curve",
    "thresholds": "Triage thresholds",
    "subgroups": "Subgroups",
    "comparison": "LightGBM vs baseline",
    "periods": "Performance by period",
    "prevalence": "Prevalence-adjusted performance (case-control)",
    "shap": "Explanations (SHAP)",
    "extra": "Additional tables",
}

# --------------------------------------------------------------------------- model card

# Item numbers confirmed from the TRIPOD+AI checklist; other topics are listed by name only.
_COVERED, _PARTIAL, _NOT = "covered", "partial", "not covered"


def _period(split_range: Any) -> dict[str, str]:
    return {"start": split_range.start.isoformat(), "end": split_range.end.isoformat()}


def _limitations(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[str]:
    s = spec.split
    items = [
        "Simulated data: the cohorts come from the project's seeded simulator, not from patients; "
        "the figures describe the method, not performance on real referrals.",
        f"Temporal split at one (simulated) centre, which is not external validation: trained "
        f"{s.train.start}..{s.train.end}, calibrated {s.calibrate.start}..{s.calibrate.end}, "
        f"evaluated {s.evaluate.start}..{s.evaluate.end}, all from the same population.",
        "Missing data: untested analytes stay missing and LightGBM routes them with its native "
        "NaN handling (a learned default direction at each split); nothing is imputed. A "
        "different test-ordering pattern at deployment can shift the risks.",
    ]
    if spec.is_case_control:
        items.append(
            f"Case-control training: the probabilities are shifted (log-odds intercept "
            f"correction) to the stated deployment prevalence "
            f"{spec.calibration.deployment_prevalence:g}. Calibration is checked on the "
            f"case-control scale only; PPV and NPV at the deployment prevalence come from the "
            f"sample's sensitivity and specificity by Bayes' rule."
        )
    else:
        items.append(
            "Probabilities reflect the case mix and conversion rate of the calibration period; "
            "a change in either needs recalibration."
        )
    items.append(
        "Subgroup sizes: estimates for small subgroups rest on few cancers (no AUC below 5); "
        "see the subgroup table for n and events. Subgroup AUC intervals are Hanley-McNeil "
        "(row-level), not patient-level bootstrap."
    )
    if "events" in data_summary:
        items.append(f"Events per period: {_inline(data_summary['events'])}.")
    return items


def _tripod(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """TRIPOD+AI topics this report covers, honestly marked; manuscript-only items are left out."""
    equity = [g for g in ("deprivation", "ethnicity") if g in spec.subgroups]
    code = data_summary.get("code_version")
    rows = [
        (
            "3c",
            "Health inequalities",
            _PARTIAL if equity else _NOT,
            f"Subgroup table and forest plot by {', '.join(spec.subgroups) or 'nothing'}; the data "
            "are simulated, so no real inequality is described.",
        ),
        (
            "5a",
            "Data sources",
            _PARTIAL,
            "Model card (data, limitations): simulated cohorts; representativeness of real "
            "populations cannot be assessed.",
        ),
        ("5b", "Data dates", _COVERED, "Model card: train / calibrate / evaluate periods."),
        (
            "6a",
            "Setting",
            _PARTIAL,
            f"Model card: {spec.cohort.kind} setting; one simulated centre with several labs.",
        ),
        (
            "6b",
            "Eligibility",
            _COVERED,
            "Model card: age range, required panels/analytes; records with validation errors "
            "are excluded (counts by code).",
        ),
        ("6c", "Treatments", _NOT, "Treatments are not recorded in the simulated data."),
        ("-", "Outcome definition and horizon", _COVERED, "Model card: outcome."),
        ("-", "Predictors", _COVERED, "Model card: features."),
        (
            "-",
            "Sample size",
            _PARTIAL,
            "Rows and events per period are reported; no formal sample-size calculation.",
        ),
        (
            "-",
            "Missing data",
            _PARTIAL,
            "LightGBM native NaN routing (limitations); missingness is not tabulated by subgroup.",
        ),
        (
            "-",
            "Class imbalance / case-control sampling",
            _COVERED if spec.is_case_control else _PARTIAL,
            "Prevalence shift and Bayes PPV/NPV at the deployment prevalence"
            if spec.is_case_control
            else "No resampling or class weights; Platt calibration on a later period.",
        ),
        (
            "-",
            "Fairness",
            _PARTIAL,
            "Performance by subgroup (AUC, O/E, rule-out sensitivity); no fairness constraint, "
            "formal disparity test or mitigation.",
        ),
        (
            "-",
            "Discrimination with CI",
            _COVERED,
            "Headline metrics: AUC with patient-level bootstrap 95% CI; ROC curve.",
        ),
        (
            "-",
            "Calibration with CI",
            _COVERED,
            "O/E, intercept and slope with bootstrap CIs; binned curve with Wilson CIs.",
        ),
        (
            "-",
            "Clinical utility",
            _COVERED,
            "Decision curve (net benefit); sensitivity/specificity/PPV/NPV at the RAG thresholds.",
        ),
        ("-", "Subgroup performance", _COVERED, "Subgroups section."),
        (
            "-",
            "Model updating",
            _PARTIAL,
            "Registry version, run id and spec digest identify the model; no updating or "
            "recalibration schedule is defined.",
        ),
        (
            "-",
            "Code availability",
            _PARTIAL if code else _NOT,
            f"Code version recorded: {_inline(code)}; public release not stated."
            if code
            else "No code version recorded.",
        ),
        (
            "-",
            "Poor-quality or unavailable inputs",
            _COVERED,
            "Input checks: records with error codes are not scored, warnings are returned with "
            "the score (codes listed in the model card).",
        ),
    ]
    return [{"item": i, "topic": t, "status": s, "where": w} for i, t, s, w in rows]


def build_model_card(spec: ModelSpec, *, data_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model card as a JSON-serialisable dict: what the model is for and not for, where its
    data come from, its limitations and a TRIPOD+AI checklist of what the report covers.

    `data_summary` is the run's provenance (rows/events per period, exclusions by issue code,
    code version, ...); `version` and `run_id` are taken from it when present.
    """
    s, f = spec.split, spec.features
    return {
        "name": spec.name,
        "title": spec.title,
        "version": json_safe(data_summary.get("version")),
        "run_id": json_safe(data_summary.get("run_id")),
        "spec_digest": spec.digest,
        "intended_use": spec.intended_use,
        "population": spec.population,
        "setting": {"kind": spec.cohort.kind, "pathways": list(spec.cohort.pathways) or ["all"]},
        "periods": {
            "date_column": s.date_column,
            "train": _period(s.train),
            "calibrate": _period(s.calibrate),
            "evaluate": _period(s.evaluate),
        },
        "outcome": {
            "column": spec.outcome.column,
            "definition": spec.outcome.definition,
            "horizon_days": spec.outcome.horizon_days,
        },
        "features": {
            "analytes": list(f.analytes),
            "derived": list(f.derived),
            "demographics": list(f.demographics),
            "context": list(f.context),
            "count": len(f.names),
        },
        "eligibility": spec.eligibility.model_dump(mode="json"),
        "calibration": {
            "method": spec.calibration.method,
            "deployment_prevalence": spec.calibration.deployment_prevalence,
        },
        "triage_policy": {
            "rule_out_sensitivity": spec.triage.rule_out_sensitivity,
            "rule_in_ppv": spec.triage.rule_in_ppv,
        },
        "subgroups": list(spec.subgroups),
        "not_for": list(spec.not_for),
        "input_checks": {
            "errors_not_scored": sorted(c for c, (sev, _) in ISSUE_CODES.items() if sev == "error"),
            "warnings_scored": sorted(c for c, (sev, _) in ISSUE_CODES.items() if sev == "warning"),
        },
        "limitations": _limitations(spec, data_summary),
        "data": json_safe(dict(data_summary)),
        "tripod_ai": _tripod(spec, data_summary),
        "tripod_ai_note": (
            "Manuscript items (title, abstract, introduction, discussion, funding, registration, "
            "patient involvement) are outside this report and are not listed."
        ),
    }


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def _ci(interval: Any, digits: int = 3, percent: bool = False) -> str:
    """`estimate [low, high]`, or as percentages."""
    if not isinstance(interval, Mapping):
        return _num(interval, digits)
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits

    def part(key: str) -> str:
        value = interval.get(key)
        return _num(value * scale, d) if _finite(value) else "–"

    if not _finite(interval.get("estimate")):
        return "–"
    if not (_finite(interval.get("low")) and _finite(interval.get("high"))):
        return f"{part('estimate')}{unit}"
    return f"{part('estimate')}{unit} [{part('low')}, {part('high')}]"


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple):
        return ", ".join(_inline(v) for v in value) or "–"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else "–"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{_e(cls)}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, max_rows: int = 200) -> str:
    shown = frame.head(max_rows)
    rows = [[_num(v) if isinstance(v, float) else v for v in row] for row in shown.itertuples()]
    table = _table([str(shown.index.name or ""), *map(str, shown.columns)], rows)
    more = f"<p class='note'>{len(frame) - max_rows:,} more rows not shown.</p>"
    return table + (more if len(frame) > max_rows else "")


def _section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(SECTIONS[key])}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


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
    pairs = [(MODEL_LABEL, evaluation)]
    return pairs + ([(BASELINE_LABEL, baseline)] if baseline else [])


def _roc_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for label, ev in _models(evaluation, baseline):
            roc = ev.get("roc") or {}
            auc = (ev.get("auc") or {}).get("estimate")
            ax.plot(roc.get("fpr", []), roc.get("tpr", []), label=f"{label} (AUC {_num(auc)})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")

    return _png(draw, (5.0, 4.6))


def _calibration_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
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


def _decision_plot(evaluation: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        curve = pd.DataFrame(evaluation.get("net_benefit") or [])
        if curve.empty:
            return
        for label, ev in _models(evaluation, baseline):
            own = pd.DataFrame(ev.get("net_benefit") or [])
            if not own.empty:
                ax.plot(own["threshold"], own["model"], label=label)
        ax.plot(curve["threshold"], curve["treat_all"], color="grey", label="treat all")
        ax.plot(curve["threshold"], curve["treat_none"], color="black", label="treat none")
        prevalence = evaluation.get("prevalence")
        top = prevalence if _finite(prevalence) and prevalence > 0 else 0.1
        ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.1 * top, 1.1 * top))
        ax.legend(loc="upper right")

    return _png(draw, (6.0, 4.2))


def _forest_plot(rows: Sequence[Mapping[str, Any]], target: float | None) -> str:
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


def _shap_plot(sample: pd.DataFrame, max_display: int = 15) -> str:
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


# --------------------------------------------------------------------------- sections


def _header(
    title: str, card: Mapping[str, Any], evaluation: Mapping[str, Any], sections: Sequence[str]
) -> str:
    facts = [
        ("model", card.get("name", "–")),
        ("version", card.get("version") or "not registered yet"),
        ("run", card.get("run_id") or "not logged yet"),
        ("spec digest", card.get("spec_digest", "–")),
        ("evaluation scale", evaluation.get("scale", "as given")),
    ]
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in facts)
    nav = " · ".join(f'<a href="#{k}">{_e(SECTIONS[k])}</a>' for k in sections)
    return f"<header><h1>{_e(title)}</h1><ul class='facts'>{items}</ul><nav>{nav}</nav></header>"


def _card_section(card: Mapping[str, Any]) -> str:
    periods = card.get("periods") or {}
    outcome = card.get("outcome") or {}
    features = card.get("features") or {}
    data = card.get("data") or {}
    rows = [
        ("Title", card.get("title", "–")),
        ("Intended use", card.get("intended_use", "–")),
        ("Population", card.get("population", "–")),
        ("Setting", _inline(card.get("setting", "–"))),
        *(
            (name.capitalize(), _inline(periods[name]))
            for name in ("train", "calibrate", "evaluate")
            if name in periods
        ),
        (
            "Outcome",
            f"{outcome.get('definition', '–')} (column {outcome.get('column', '–')}, "
            f"horizon {outcome.get('horizon_days', '–')} days)",
        ),
        (
            "Features",
            f"{features.get('count', '–')}: "
            + _inline(
                [
                    *features.get("analytes", []),
                    *features.get("derived", []),
                    *features.get("demographics", []),
                    *features.get("context", []),
                ]
            ),
        ),
        ("Eligibility", _inline(card.get("eligibility", "–"))),
        ("Calibration", _inline(card.get("calibration", "–"))),
        ("Triage policy", _inline(card.get("triage_policy", "–"))),
        ("Rows per period", _inline(data.get("rows", "–"))),
        ("Events per period", _inline(data.get("events", "–"))),
        ("Exclusions (validation codes)", _inline(data.get("exclusions", "–"))),
        ("Input checks", _inline(card.get("input_checks", "–"))),
    ]
    body = "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"
    not_for = "".join(f"<li>{_e(x)}</li>" for x in card.get("not_for", []))
    limits = "".join(f"<li>{_e(x)}</li>" for x in card.get("limitations", []))
    return _section(
        "card",
        body
        + f"<h3>Must not be used for</h3><ul>{not_for}</ul>"
        + f"<h3>Limitations</h3><ul>{limits}</ul>",
    )


def _tripod_section(card: Mapping[str, Any]) -> str:
    rows = [
        [r.get("item", "–"), r.get("topic", ""), r.get("status", ""), r.get("where", "")]
        for r in card.get("tripod_ai", [])
    ]
    body = _table(["item", "topic", "status", "where / how"], rows)
    return _section("tripod", body + _note(str(card.get("tripod_ai_note", ""))))


def _headline_rows(ev: Mapping[str, Any]) -> list[tuple[str, str]]:
    cal = ev.get("calibration") or {}
    ci = cal.get("ci") or {}
    at = ev.get("net_benefit_at") or {}
    rows = [
        (
            "rows / patients / cancers",
            f"{_num(ev.get('n'))} / {_num(ev.get('n_patients'))} / {_num(ev.get('events'))}",
        ),
        ("prevalence", _num(ev.get("prevalence"), 4)),
        ("AUC [95% CI]", _ci(ev.get("auc"))),
        ("Brier score", _ci(ci.get("brier", ev.get("brier")), 4)),
        ("observed / expected", _ci(ci.get("observed_expected", cal.get("observed_expected")))),
        ("calibration intercept", _ci(ci.get("intercept", cal.get("intercept")))),
        ("calibration slope", _ci(ci.get("slope", cal.get("slope")))),
        ("ECE (10 equal-frequency bins)", _num(cal.get("ece"), 4)),
        (
            f"net benefit at {_num(at.get('threshold'), 3)} (treat all)",
            f"{_num(at.get('model'), 4)} ({_num(at.get('treat_all'), 4)})",
        ),
    ]
    oracle = ev.get("oracle")
    if isinstance(oracle, Mapping):
        rows += [
            ("oracle AUC (true risk)", _num(oracle.get("oracle_auc"))),
            ("AUC gap to oracle", _num(oracle.get("auc_gap"))),
            ("O/E against true risk", _num(oracle.get("observed_expected_vs_truth"))),
            ("slope against true risk", _num(oracle.get("slope_vs_truth"))),
            ("mean |p - true risk|", _num(oracle.get("mean_absolute_error"), 4)),
        ]
    return rows


def _headline_section(ev: Mapping[str, Any]) -> str:
    note = _note(
        "95% CIs: patient-level bootstrap percentile intervals "
        f"({_num(ev.get('n_boot'))} resamples). Perfect calibration: O/E 1, intercept 0, slope 1."
    )
    return _section("headline", _table(["metric", MODEL_LABEL], _headline_rows(ev)) + note)


def _threshold_rows(ev: Mapping[str, Any]) -> list[list[str]]:
    thresholds = ev.get("thresholds") or {}
    rows = []
    for band, key, share in (
        ("green (rule-out)", "green", "share_ruled_out"),
        ("red (rule-in)", "red", "share_expedited"),
    ):
        m = thresholds.get(key)
        if not isinstance(m, Mapping):
            rows.append([band, "not offered", *["–"] * 7])
            continue
        cancers = m.get("cancers_ruled_out", m.get("cancers_expedited"))
        rows.append(
            [
                band,
                _num(m.get("threshold"), 4),
                _ci(m.get("sensitivity"), percent=True),
                _ci(m.get("specificity"), percent=True),
                _ci(m.get("ppv"), percent=True),
                _ci(m.get("npv"), percent=True),
                _ci(m.get(f"{share}_ci", m.get(share)), percent=True),
                _num(cancers),
                f"{_num(m.get('tp'))}/{_num(m.get('fp'))}/{_num(m.get('tn'))}/{_num(m.get('fn'))}",
            ]
        )
    return rows


def _threshold_section(ev: Mapping[str, Any]) -> str:
    header = [
        "band",
        "threshold",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
        "share ruled out / expedited",
        "cancers in band",
        "TP/FP/TN/FN",
    ]
    note = _note(
        "Green: p < rule-out threshold (cancers in band = false negatives). Red: p >= rule-in "
        "threshold. Thresholds were chosen on the calibration period. Wilson 95% CIs."
    )
    return _section("thresholds", _table(header, _threshold_rows(ev)) + note)


def _subgroup_section(ev: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    block = ev.get("subgroups") or {}
    rows = block.get("rows", []) if isinstance(block, Mapping) else list(block)
    if not rows:
        return _section("subgroups", _note("No subgroup columns were available."))
    target = (card.get("triage_policy") or {}).get("rule_out_sensitivity")
    plot = _forest_plot(rows, target if _finite(target) else None)
    table = _table(
        ["subgroup", "level", "n", "cancers", "AUC [95% CI]", "O/E", "rule-out sensitivity"],
        [
            [
                r.get("column"),
                r.get("level"),
                _num(r.get("n")),
                _num(r.get("events")),
                _ci({"estimate": r.get("auc"), "low": r.get("auc_low"), "high": r.get("auc_high")}),
                _num(r.get("observed_expected")),
                _ci(r.get("rule_out_sensitivity"), percent=True),
            ]
            for r in rows
        ],
    )
    skipped = block.get("skipped", []) if isinstance(block, Mapping) else []
    notes = "".join(_note(f"{s.get('column')}: {s.get('reason')}") for s in skipped)
    method = _note(
        f"AUC needs at least {block.get('min_events_for_auc', 5)} cancers and one non-cancer; "
        "AUC CIs are Hanley-McNeil (row-level), sensitivity CIs Wilson."
    )
    return _section("subgroups", plot + table + method + notes)


def _comparison_section(ev: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    left, right = dict(_headline_rows(ev)), dict(_headline_rows(base))
    rows = [[k, left[k], right.get(k, "–")] for k in left]
    names = ("threshold", "sensitivity", "specificity", "PPV", "NPV", "share in band")
    for mine, theirs in zip(_threshold_rows(ev), _threshold_rows(base), strict=True):
        # Columns 1-6 of a threshold row: threshold, sensitivity, specificity, PPV, NPV, share.
        rows += [
            [f"{mine[0]}: {n}", a, b] for n, a, b in zip(names, mine[1:7], theirs[1:7], strict=True)
        ]
    note = _note("Both models are evaluated on the same rows at the same triage thresholds.")
    return _section("comparison", _table(["metric", MODEL_LABEL, BASELINE_LABEL], rows) + note)


def _period_section(ev: Mapping[str, Any]) -> str:
    rows = [
        [
            r.get("period"),
            _num(r.get("n")),
            _num(r.get("events")),
            _num(r.get("auc")),
            _num(r.get("observed_expected")),
        ]
        for r in ev.get("by_period") or []
    ]
    if not rows:
        return _section("periods", _note("No dates: performance by period not available."))
    return _section("periods", _table(["period", "n", "cancers", "AUC", "O/E"], rows))


def _prevalence_section(block: Mapping[str, Any]) -> str:
    header = [
        "cut-off",
        "threshold",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
        "number needed to test",
        "tested per 100k",
        "cancers found per 100k",
    ]
    rows = [
        [
            r.get("label"),
            _num(r.get("threshold"), 4),
            _ci(r.get("sensitivity"), percent=True),
            _ci(r.get("specificity"), percent=True),
            _num(r.get("ppv"), 5),
            _num(r.get("npv"), 6),
            _num(r.get("number_needed_to_test"), 0),
            _num(r.get("tested_per_100k"), 0),
            _num(r.get("cancers_found_per_100k"), 1),
        ]
        for r in [*block.get("at_thresholds", []), *block.get("sweep", [])]
    ]
    intro = _note(
        f"Deployment prevalence {_num(block.get('deployment_prevalence'), 6)}; "
        f"case fraction of this sample {_num(block.get('sample_prevalence'), 4)}. "
        + str(block.get("note", ""))
    )
    return _section("prevalence", intro + _table(header, rows))


def _extra_section(tables: Mapping[str, pd.DataFrame]) -> str:
    parts = [f"<h3>{_e(name)}</h3>{_frame_table(frame)}" for name, frame in tables.items()]
    return _section("extra", "".join(parts))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef}tr:nth-child(even) td{background:#f8f8fc}
dl{display:grid;grid-template-columns:14em 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
.note{color:#555;font-size:.88em}nav{font-size:.85em;margin:.6em 0}img{max-width:100%}
ul.facts{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.6em}
"""


def render_report(
    *,
    title: str,
    model_card: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    baseline_evaluation: Mapping[str, Any] | None = None,
    shap_sample: pd.DataFrame | None = None,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
) -> str:
    """One self-contained HTML report (inline CSS, base64 PNG plots, all text escaped)."""
    import matplotlib

    matplotlib.use("Agg")  # headless rendering; set here so importing this module has no effect
    ev, base = evaluation, baseline_evaluation
    calibration_note = "Equal-frequency bins; shaded: Wilson 95% CI of the observed proportion."
    sections: dict[str, Callable[[], str]] = {
        "card": lambda: _card_section(model_card),
        "tripod": lambda: _tripod_section(model_card),
        "headline": lambda: _headline_section(ev),
        "roc": lambda: _section("roc", _roc_plot(ev, base)),
        "calibration": lambda: _section(
            "calibration", _calibration_plot(ev, base) + _note(calibration_note)
        ),
        "decision": lambda: _section("decision", _decision_plot(ev, base)),
        "thresholds": lambda: _threshold_section(ev),
        "subgroups": lambda: _subgroup_section(ev, model_card),
    }
    if base:
        sections["comparison"] = lambda: _comparison_section(ev, base)
    sections["periods"] = lambda: _period_section(ev)
    prevalence = ev.get("prevalence_adjusted")
    if isinstance(prevalence, Mapping):
        sections["prevalence"] = lambda: _prevalence_section(prevalence)
    if shap_sample is not None and not shap_sample.empty:
        shap_note = _note("Contributions in calibrated log-odds for a random evaluation sample.")
        sections["shap"] = lambda: _section("shap", _shap_plot(shap_sample) + shap_note)
    if extra_tables:
        sections["extra"] = lambda: _extra_section(extra_tables)
    parts = [_header(title, model_card, ev, list(sections))]
    parts += [render() for render in sections.values()]
    notes = "".join(_note(str(n)) for n in ev.get("notes") or [])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}{notes}</body></html>"
    )
