"""One self-contained HTML evaluation report: the model card (`card`), headline metrics, figures
(`plots`), thresholds, subgroups, periods and any extra tables.

The report is a single HTML string: inline CSS, plots embedded as base64 PNG, no external
resources, every piece of text escaped. It is rendered from the JSON-serialisable dicts of
`training.evaluation.evaluate.evaluate_predictions`, so a logged run can be re-rendered from its
artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from training.evaluation.formatting import (
    difference_text,
    escape,
    family_label,
    flag_text,
    green_risk_text,
    inline_text,
    interval_text,
    is_finite_number,
    number_text,
    threshold_choice_text,
)
from training.evaluation.plots import (
    BASELINE_LABEL,
    MODEL_LABEL,
    calibration_plot,
    decision_plot,
    forest_plot,
    roc_plot,
    shap_plot,
)

SECTIONS: dict[str, str] = {
    "card": "Model card",
    "tripod": "TRIPOD+AI checklist",
    "headline": "Headline metrics",
    "roc": "ROC curve",
    "calibration": "Calibration",
    "decision": "Decision curve",
    "thresholds": "Triage thresholds",
    "subgroups": "Subgroups",
    "comparison": "Served model vs comparator",
    "periods": "Performance by period",
    "prevalence": "Prevalence-adjusted performance (case-control)",
    "shap": "Explanations (SHAP)",
    "extra": "Additional tables",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{escape(cls)}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, max_rows: int = 200) -> str:
    shown = frame.head(max_rows)
    rows = [
        [number_text(v) if isinstance(v, float) else v for v in row] for row in shown.itertuples()
    ]
    table = _table([str(shown.index.name or ""), *map(str, shown.columns)], rows)
    more = f"<p class='note'>{len(frame) - max_rows:,} more rows not shown.</p>"
    return table + (more if len(frame) > max_rows else "")


def _section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(SECTIONS[key])}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def outcome_words(card: Mapping[str, Any]) -> tuple[str, str]:
    """The outcome's name and plural in words from the model card (cards logged before outcomes
    had names: cancer, cancers)."""
    outcome = card.get("outcome") or {}
    name = str(outcome.get("name") or "cancer")
    default = "cancers" if name == "cancer" else f"{name} events"
    return name, str(outcome.get("plural") or default)


def _horizon(outcome: Mapping[str, Any]) -> str:
    """`horizon 730 days`, or `any time in follow-up` (horizon_days None)."""
    if "horizon_days" in outcome and outcome["horizon_days"] is None:
        return "any time in follow-up"
    return f"horizon {outcome.get('horizon_days', '–')} days"


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
    items = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in facts)
    nav = " · ".join(f'<a href="#{k}">{escape(SECTIONS[k])}</a>' for k in sections)
    return (
        f"<header><h1>{escape(title)}</h1><ul class='facts'>{items}</ul><nav>{nav}</nav>"
        f"{_findings(card, evaluation)}</header>"
    )


def _findings(card: Mapping[str, Any], ev: Mapping[str, Any]) -> str:
    """The highlighted box at the top: scale, family, green-band risk, flagged subgroups."""
    family: Mapping[str, Any] = card.get("model_family") or {}
    served = family_label(ev.get("model_family") or family.get("chosen"), "not recorded")
    lines = [f"Figures on the {ev.get('scale') or 'scale of the given predictions'} scale."]
    lines.append(
        f"Served model: {served}; calibration-period ΔAUC (LightGBM - spline) "
        f"{difference_text(family.get('calibration_auc_difference'))}; evaluation-period ΔAUC "
        f"(served - comparator) {difference_text(ev.get('vs_baseline'))}."
        + (f" {family['text']}" if family.get("text") else "")
    )
    lines.append(green_risk_text((ev.get("thresholds") or {}).get("green")))
    items = "".join(f"<li>{escape(x)}</li>" for x in lines)
    block = ev.get("subgroups")
    flags = block.get("flagged") if isinstance(block, Mapping) else None
    if flags:
        plural = outcome_words(card)[1]
        listed = "".join(f"<li>{escape(flag_text(f, plural))}</li>" for f in flags)
        flagged = f"<p class='flag'><b>Subgroups flagged ({len(flags)})</b></p><ul>{listed}</ul>"
    elif isinstance(flags, list) and isinstance(block, Mapping):
        checked = block.get("min_events_for_flags", "–")
        flagged = f"<p>No subgroup flagged (levels with at least {escape(checked)} events).</p>"
    else:
        flagged = ""
    return f"<div class='findings'><h2>Key findings</h2><ul>{items}</ul>{flagged}</div>"


def _card_section(card: Mapping[str, Any]) -> str:
    periods = card.get("periods") or {}
    outcome = card.get("outcome") or {}
    features = card.get("features") or {}
    data = card.get("data") or {}
    rows = [
        ("Title", card.get("title", "–")),
        ("Intended use", card.get("intended_use", "–")),
        ("Population", card.get("population", "–")),
        ("Setting", inline_text(card.get("setting", "–"))),
        *(
            [("Data source", str(card["data_source"].get("description", "–")))]
            if isinstance(card.get("data_source"), Mapping)
            else []
        ),
        *(
            (name.capitalize(), inline_text(periods[name]))
            for name in ("train", "calibrate", "evaluate")
            if name in periods
        ),
        (
            "Outcome",
            f"{outcome.get('definition', '–')} (column {outcome.get('column', '–')}, "
            f"{_horizon(outcome)})",
        ),
        (
            "Features",
            f"{features.get('count', '–')}: "
            + inline_text(
                [
                    *features.get("analytes", []),
                    *features.get("derived", []),
                    *features.get("demographics", []),
                    *features.get("context", []),
                ]
            ),
        ),
        ("Eligibility", inline_text(card.get("eligibility", "–"))),
        *_card_model_rows(card),
        ("Triage policy", inline_text(card.get("triage_policy", "–"))),
        *(
            [("Recommendations", inline_text(card["recommendations"]))]
            if isinstance(card.get("recommendations"), Mapping)
            else []
        ),
        ("Rows per period", inline_text(data.get("rows", "–"))),
        ("Events per period", inline_text(data.get("events", "–"))),
        ("Exclusions (validation codes)", inline_text(data.get("exclusions", "–"))),
        ("Input checks", inline_text(card.get("input_checks", "–"))),
    ]
    body = "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"
    not_for = "".join(f"<li>{escape(x)}</li>" for x in card.get("not_for", []))
    limits = "".join(f"<li>{escape(x)}</li>" for x in card.get("limitations", []))
    return _section(
        "card",
        body
        + f"<h3>Must not be used for</h3><ul>{not_for}</ul>"
        + f"<h3>Limitations</h3><ul>{limits}</ul>",
    )


def _card_model_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Calibration, the population scale, the model family and the thresholds (older cards:
    the calibration dict as logged)."""
    if "population_scale" not in card:
        return [("Calibration", inline_text(card.get("calibration", "–")))]
    family = card.get("model_family") or {}
    return [
        ("Calibration", str((card.get("calibration") or {}).get("method", "–"))),
        ("Population scale", str(card["population_scale"])),
        ("Model family", str(family.get("text", "not recorded"))),
        ("Thresholds", " ".join(card.get("thresholds") or ["not recorded"])),
    ]


def _tripod_section(card: Mapping[str, Any]) -> str:
    rows = [
        [r.get("item", "–"), r.get("topic", ""), r.get("status", ""), r.get("where", "")]
        for r in card.get("tripod_ai", [])
    ]
    body = _table(["item", "topic", "status", "where / how"], rows)
    return _section("tripod", body + _note(str(card.get("tripod_ai_note", ""))))


def _headline_rows(ev: Mapping[str, Any], events: str = "cancers") -> list[tuple[str, str]]:
    cal = ev.get("calibration") or {}
    ci = cal.get("ci") or {}
    at = ev.get("net_benefit_at") or {}
    rows = [
        (
            f"rows / patients / {events}",
            " / ".join(number_text(ev.get(k)) for k in ("n", "n_patients", "events")),
        ),
        ("prevalence", number_text(ev.get("prevalence"), 4)),
        ("AUC [95% CI]", interval_text(ev.get("auc"))),
        ("Brier score", interval_text(ci.get("brier", ev.get("brier")), 4)),
        (
            "observed / expected",
            interval_text(ci.get("observed_expected", cal.get("observed_expected"))),
        ),
        ("calibration intercept", interval_text(ci.get("intercept", cal.get("intercept")))),
        ("calibration slope", interval_text(ci.get("slope", cal.get("slope")))),
        ("ECE (10 equal-frequency bins)", number_text(cal.get("ece"), 4)),
        (
            f"net benefit at {number_text(at.get('threshold'), 3)} (treat all)",
            f"{number_text(at.get('model'), 4)} ({number_text(at.get('treat_all'), 4)})",
        ),
    ]
    oracle = ev.get("oracle")
    if isinstance(oracle, Mapping):
        rows += [
            ("oracle AUC (true risk)", number_text(oracle.get("oracle_auc"))),
            ("AUC gap to oracle", number_text(oracle.get("auc_gap"))),
            ("O/E against true risk", number_text(oracle.get("observed_expected_vs_truth"))),
            ("slope against true risk", number_text(oracle.get("slope_vs_truth"))),
            ("mean |p - true risk|", number_text(oracle.get("mean_absolute_error"), 4)),
        ]
    return rows


def _headline_section(ev: Mapping[str, Any], events: str) -> str:
    note = _note(
        "95% CIs: patient-level bootstrap percentile intervals "
        f"({number_text(ev.get('n_boot'))} resamples). "
        "Perfect calibration: O/E 1, intercept 0, slope 1."
    )
    table = _table(["metric", family_label(ev.get("model_family"), MODEL_LABEL)],
                   _headline_rows(ev, events))  # fmt: skip
    return _section("headline", table + note)


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
                number_text(m.get("threshold"), 4),
                interval_text(m.get("sensitivity"), percent=True),
                interval_text(m.get("specificity"), percent=True),
                interval_text(m.get("ppv"), percent=True),
                interval_text(m.get("npv"), percent=True),
                interval_text(m.get(f"{share}_ci", m.get(share)), percent=True),
                number_text(cancers),
                f"{number_text(m.get('tp'))}/{number_text(m.get('fp'))}/{number_text(m.get('tn'))}/{number_text(m.get('fn'))}",
            ]
        )
    return rows


def _threshold_section(ev: Mapping[str, Any], events: str) -> str:
    header = ["band", "threshold", "sensitivity", "specificity", "PPV", "NPV"]
    header += ["share ruled out / expedited", f"{events} in band", "TP/FP/TN/FN"]
    thresholds = ev.get("thresholds") or {}
    green: Mapping[str, Any] = thresholds.get("green") or {}
    method = green.get("ci_method", "wilson")
    note = _note(
        f"Green: p < rule-out threshold ({events} in band = false negatives). Red: p >= rule-in "
        f"threshold. Thresholds were chosen on the calibration period. 95% CIs: {method}"
        f" (sensitivity: {green.get('sensitivity_ci_method', 'wilson')})."
    )
    chosen = thresholds.get("chosen") or {}
    choices = _table(
        ["band", "how the threshold was chosen (calibration period)"],
        [[band, threshold_choice_text(chosen.get(key))]
         for band, key in (("green (rule-out)", "rule_out"), ("red (rule-in)", "rule_in"))],
    )  # fmt: skip
    risk = f"<p><b>{escape(green_risk_text(thresholds.get('green')))}</b></p>"
    return _section("thresholds", risk + _table(header, _threshold_rows(ev)) + note + choices)


def _subgroup_section(ev: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    name, events = outcome_words(card)
    block = ev.get("subgroups") or {}
    rows = block.get("rows", []) if isinstance(block, Mapping) else list(block)
    if not rows:
        return _section("subgroups", _note("No subgroup columns were available."))
    target = (card.get("triage_policy") or {}).get("rule_out_sensitivity")
    plot = forest_plot(rows, target if is_finite_number(target) else None)
    header = ["subgroup", "level", "n", events, "AUC [95% CI]", "O/E [95% CI]"]
    table = _table(
        [*header, "rule-out sensitivity", "flags"],
        [
            [
                r.get("column"),
                r.get("level"),
                number_text(r.get("n")),
                number_text(r.get("events")),
                interval_text(
                    {"estimate": r.get("auc"), "low": r.get("auc_low"), "high": r.get("auc_high")}
                ),
                interval_text(r.get("observed_expected_ci", r.get("observed_expected"))),
                interval_text(r.get("rule_out_sensitivity"), percent=True),
                ", ".join(r.get("flags") or [])
                or ("none" if r.get("checked", True) else "too few to check"),
            ]
            for r in rows
        ],
    )
    skipped = block.get("skipped", []) if isinstance(block, Mapping) else []
    notes = "".join(_note(f"{s.get('column')}: {s.get('reason')}") for s in skipped)
    without = "non-cancer" if name == "cancer" else f"row without {name}"
    method = _note(
        f"AUC needs at least {block.get('min_events_for_auc', 5)} {events} and one {without}; "
        "AUC and O/E CIs are patient-level bootstrap percentiles (not Hanley-McNeil), "
        f"sensitivity CIs Wilson. Levels with at least {block.get('min_events_for_flags', '–')} "
        f"{events} are flagged when the sensitivity's upper bound is below "
        f"{block.get('sensitivity_target', '–')} or the O/E CI lies outside "
        f"{inline_text(block.get('oe_range', '–'))}."
    )
    return _section("subgroups", plot + table + method + notes)


def _comparison_section(ev: Mapping[str, Any], base: Mapping[str, Any], events: str) -> str:
    left, right = dict(_headline_rows(ev, events)), dict(_headline_rows(base, events))
    rows = [[k, left[k], right.get(k, "–")] for k in left]
    names = ("threshold", "sensitivity", "specificity", "PPV", "NPV", "share in band")
    for mine, theirs in zip(_threshold_rows(ev), _threshold_rows(base), strict=True):
        # Columns 1-6 of a threshold row: threshold, sensitivity, specificity, PPV, NPV, share.
        rows += [
            [f"{mine[0]}: {n}", a, b] for n, a, b in zip(names, mine[1:7], theirs[1:7], strict=True)
        ]
    note = _note(
        "Both models are evaluated on the same rows, each at its own thresholds chosen on the "
        "calibration period. The comparator is the family not served."
    )
    labels = [family_label(ev.get("model_family"), MODEL_LABEL),
              family_label(base.get("model_family"), BASELINE_LABEL) + " (comparator)"]  # fmt: skip
    return _section("comparison", _table(["metric", *labels], rows) + note)


def _period_section(ev: Mapping[str, Any], events: str) -> str:
    rows = [
        [
            r.get("period"),
            number_text(r.get("n")),
            number_text(r.get("events")),
            number_text(r.get("auc")),
            number_text(r.get("observed_expected")),
        ]
        for r in ev.get("by_period") or []
    ]
    if not rows:
        return _section("periods", _note("No dates: performance by period not available."))
    return _section("periods", _table(["period", "n", events, "AUC", "O/E"], rows))


def _prevalence_section(block: Mapping[str, Any], events: str) -> str:
    header = [
        "cut-off",
        "threshold",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
        "number needed to test",
        "tested per 100k",
        f"{events} found per 100k",
    ]
    rows = [
        [
            r.get("label"),
            number_text(r.get("threshold"), 4),
            interval_text(r.get("sensitivity"), percent=True),
            interval_text(r.get("specificity"), percent=True),
            number_text(r.get("ppv"), 5),
            number_text(r.get("npv"), 6),
            number_text(r.get("number_needed_to_test"), 0),
            number_text(r.get("tested_per_100k"), 0),
            number_text(r.get("cancers_found_per_100k"), 1),
        ]
        for r in [*block.get("at_thresholds", []), *block.get("sweep", [])]
    ]
    intro = _note(
        f"Deployment prevalence {number_text(block.get('deployment_prevalence'), 6)}; "
        f"case fraction of this sample {number_text(block.get('sample_prevalence'), 4)}. "
        + _PREVALENCE_NOTE.format(events=events)
    )
    return _section("prevalence", intro + _table(header, rows))


# The report's own wording (the evaluation's stored note says "events"), naming the outcome.
_PREVALENCE_NOTE = (
    "Thresholds apply to the case-control-scale probabilities. Sensitivity and specificity come "
    "from the sample; PPV, NPV, the number needed to test (NND = (TP+FP)/TP = 1/PPV) and tests "
    "and {events} per 100,000 are at the deployment prevalence by Bayes' rule."
)


def _extra_section(tables: Mapping[str, pd.DataFrame]) -> str:
    parts = [f"<h3>{escape(name)}</h3>{_frame_table(frame)}" for name, frame in tables.items()]
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
.findings{border:2px solid #c60;background:#fff8ef;padding:.4em 1em;margin:1em 0}
.findings h2{margin-top:.3em;border:0}.flag{color:#a30}
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
    events = outcome_words(model_card)[1]
    calibration_note = "Equal-frequency bins; shaded: Wilson 95% CI of the observed proportion."
    sections: dict[str, Callable[[], str]] = {
        "card": lambda: _card_section(model_card),
        "tripod": lambda: _tripod_section(model_card),
        "headline": lambda: _headline_section(ev, events),
        "roc": lambda: _section("roc", roc_plot(ev, base)),
        "calibration": lambda: _section(
            "calibration", calibration_plot(ev, base) + _note(calibration_note)
        ),
        "decision": lambda: _section("decision", decision_plot(ev, base)),
        "thresholds": lambda: _threshold_section(ev, events),
        "subgroups": lambda: _subgroup_section(ev, model_card),
    }
    if base:
        sections["comparison"] = lambda: _comparison_section(ev, base, events)
    sections["periods"] = lambda: _period_section(ev, events)
    prevalence = ev.get("prevalence_adjusted")
    if isinstance(prevalence, Mapping):
        sections["prevalence"] = lambda: _prevalence_section(prevalence, events)
    if shap_sample is not None and not shap_sample.empty:
        shap_note = _note("Contributions in calibrated log-odds for a random evaluation sample.")
        sections["shap"] = lambda: _section("shap", shap_plot(shap_sample) + shap_note)
    if extra_tables:
        sections["extra"] = lambda: _extra_section(extra_tables)
    parts = [_header(title, model_card, ev, list(sections))]
    parts += [render() for render in sections.values()]
    notes = "".join(_note(str(n)) for n in ev.get("notes") or [])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}{notes}</body></html>"
    )
