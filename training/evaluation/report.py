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
    probability_text,
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
from training.evaluation.report_card import card_section, outcome_words, tripod_section
from training.evaluation.report_tables import SECTIONS, frame_tables, note, section, table

__all__ = ["SECTIONS", "outcome_words", "render_report"]


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
            f"net benefit at {probability_text(at.get('threshold'))} (treat all): "
            f"{at.get('reason') or 'reason not recorded'}",
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
    caption = note(
        "95% CIs: patient-level bootstrap percentile intervals "
        f"({number_text(ev.get('n_boot'))} resamples). "
        "Perfect calibration: O/E 1, intercept 0, slope 1."
    )
    body = table(
        ["metric", family_label(ev.get("model_family"), MODEL_LABEL)], _headline_rows(ev, events)
    )
    return section("headline", body + caption)


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
                probability_text(m.get("threshold")),
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
    caption = note(
        f"Green: p < rule-out threshold ({events} in band = false negatives). Red: p >= rule-in "
        f"threshold. Thresholds were chosen on the calibration period. 95% CIs: {method}"
        f" (sensitivity: {green.get('sensitivity_ci_method', 'wilson')})."
    )
    chosen = thresholds.get("chosen") or {}
    choices = table(
        ["band", "how the threshold was chosen (calibration period)"],
        [[band, threshold_choice_text(chosen.get(key))]
         for band, key in (("green (rule-out)", "rule_out"), ("red (rule-in)", "rule_in"))],
    )  # fmt: skip
    risk = f"<p><b>{escape(green_risk_text(thresholds.get('green')))}</b></p>"
    return section("thresholds", risk + table(header, _threshold_rows(ev)) + caption + choices)


def _subgroup_section(ev: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    name, events = outcome_words(card)
    block = ev.get("subgroups") or {}
    rows = block.get("rows", []) if isinstance(block, Mapping) else list(block)
    if not rows:
        return section("subgroups", note("No subgroup columns were available."))
    target = (card.get("triage_policy") or {}).get("rule_out_sensitivity")
    oe_range = block.get("oe_range") if isinstance(block, Mapping) else None
    plot = forest_plot(rows, target if is_finite_number(target) else None, oe_range)
    header = ["subgroup", "level", "n", events, "AUC [95% CI]", "O/E [95% CI]"]
    body = table(
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
                _oe_text(r),
                interval_text(r.get("rule_out_sensitivity"), percent=True),
                ", ".join(r.get("flags") or [])
                or ("none" if r.get("checked", True) else "too few to check"),
            ]
            for r in rows
        ],
    )
    skipped = block.get("skipped", []) if isinstance(block, Mapping) else []
    notes = "".join(note(f"{s.get('column')}: {s.get('reason')}") for s in skipped)
    without = "non-cancer" if name == "cancer" else f"row without {name}"
    method = note(
        f"AUC needs at least {block.get('min_events_for_auc', 5)} {events} and one {without}; "
        "AUC and O/E CIs are patient-level bootstrap percentiles (not Hanley-McNeil), "
        f"sensitivity CIs Wilson. Levels with at least {block.get('min_events_for_flags', '–')} "
        f"{events} are flagged when {_flag_rule(block)}."
    )
    return section("subgroups", plot + body + method + notes)


def _flag_rule(block: Mapping[str, Any]) -> str:
    """When a subgroup level is flagged, in words (no sensitivity check without a target)."""
    oe_range = block.get("oe_range")
    rule = (
        f"the O/E CI lies outside {inline_text(oe_range)}"
        if isinstance(oe_range, list | tuple)
        else "the O/E CI lies outside the accepted range"
    )
    target = block.get("sensitivity_target")
    if not is_finite_number(target):
        return rule + " (no rule-out sensitivity target was set)"
    return f"the sensitivity's upper bound is below {target:g} or {rule}"


def _oe_text(row: Mapping[str, Any]) -> str:
    """A subgroup's O/E with its CI; `[–]` for rows of older evaluations that have no CI."""
    ci = row.get("observed_expected_ci")
    if isinstance(ci, Mapping) and is_finite_number(ci.get("low")):
        return interval_text(ci)
    estimate = ci.get("estimate") if isinstance(ci, Mapping) else row.get("observed_expected")
    return f"{number_text(estimate)} [–]" if is_finite_number(estimate) else "–"


def _comparison_section(ev: Mapping[str, Any], base: Mapping[str, Any], events: str) -> str:
    left, right = dict(_headline_rows(ev, events)), dict(_headline_rows(base, events))
    rows = [[k, left[k], right.get(k, "–")] for k in left]
    names = ("threshold", "sensitivity", "specificity", "PPV", "NPV", "share in band")
    for mine, theirs in zip(_threshold_rows(ev), _threshold_rows(base), strict=True):
        # Columns 1-6 of a threshold row: threshold, sensitivity, specificity, PPV, NPV, share.
        rows += [
            [f"{mine[0]}: {n}", a, b] for n, a, b in zip(names, mine[1:7], theirs[1:7], strict=True)
        ]
    caption = note(
        "Both models are evaluated on the same rows, each at its own thresholds chosen on the "
        "calibration period. The comparator is the family not served."
    )
    comparator = base.get("model_family")
    labels = [
        family_label(ev.get("model_family"), MODEL_LABEL),
        f"{family_label(comparator)} (comparator)" if comparator else BASELINE_LABEL,
    ]
    return section("comparison", table(["metric", *labels], rows) + caption)


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
        return section("periods", note("No dates: performance by period not available."))
    return section("periods", table(["period", "n", events, "AUC", "O/E"], rows))


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
            probability_text(r.get("threshold")),
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
    intro = note(
        f"Deployment prevalence {number_text(block.get('deployment_prevalence'), 6)}; "
        f"case fraction of this sample {number_text(block.get('sample_prevalence'), 4)}. "
        + _PREVALENCE_NOTE.format(events=events)
    )
    return section("prevalence", intro + table(header, rows))


# The report's own wording (the evaluation's stored note says "events"), naming the outcome.
_PREVALENCE_NOTE = (
    "Thresholds apply to the case-control-scale probabilities. Sensitivity and specificity come "
    "from the sample; PPV, NPV, the number needed to test (NND = (TP+FP)/TP = 1/PPV) and tests "
    "and {events} per 100,000 are at the deployment prevalence by Bayes' rule."
)


def _decision_section(ev: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    scale = ev.get("scale")
    text = (
        "Net benefit on the case-control sample's scale (its own prevalence), where the "
        "thresholds apply; not the deployment population's."
        if scale == "case-control sample"
        else f"Net benefit on the {scale or 'given probabilities'} scale; the x range runs from a "
        "tenth of the prevalence (or where the curve starts) to three times the highest "
        "threshold shown."
    )
    return section("decision", decision_plot(ev, base) + note(text))


REPORT_CSS = """
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
.wide{overflow-x:auto;max-width:100%}
"""


def render_report(
    *,
    title: str,
    model_card: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    baseline_evaluation: Mapping[str, Any] | None = None,
    shap_sample: pd.DataFrame | None = None,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
    lead_tables: Mapping[str, pd.DataFrame] | None = None,
) -> str:
    """One self-contained HTML report (inline CSS, base64 PNG plots, all text escaped); the same
    inputs give the same bytes. `lead_tables` (a replay's results) come first, right after the
    key findings, `extra_tables` last. The plots use matplotlib's object API: the process's
    backend and pyplot's figures are left alone."""
    ev, base = evaluation, baseline_evaluation
    events = outcome_words(model_card)[1]
    calibration_note = "Equal-frequency bins; shaded: Wilson 95% CI of the observed proportion."
    sections: dict[str, Callable[[], str]] = {}
    if lead_tables:
        sections["lead"] = lambda: section("lead", frame_tables(lead_tables))
    sections |= {
        "card": lambda: card_section(model_card, events),
        "tripod": lambda: tripod_section(model_card),
        "headline": lambda: _headline_section(ev, events),
        "roc": lambda: section("roc", roc_plot(ev, base)),
        "calibration": lambda: section(
            "calibration", calibration_plot(ev, base) + note(calibration_note)
        ),
        "decision": lambda: _decision_section(ev, base),
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
        shap_note = note("Contributions in calibrated log-odds for a random evaluation sample.")
        seed = ev.get("seed") if isinstance(ev.get("seed"), int) else None
        sections["shap"] = lambda: section("shap", shap_plot(shap_sample, seed) + shap_note)
    if extra_tables:
        sections["extra"] = lambda: section("extra", frame_tables(extra_tables))
    parts = [_header(title, model_card, ev, list(sections))]
    parts += [render() for render in sections.values()]
    notes = "".join(note(str(n)) for n in ev.get("notes") or [])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{REPORT_CSS}</style></head><body>{''.join(parts)}{notes}</body></html>"
    )
