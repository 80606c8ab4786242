"""One stored score as a small, self-contained, accessible HTML page (`GET /v1/result/{id}`).

Shown in an EHR iframe, so: no scripts, no external assets (a Content-Security-Policy of
`default-src 'none'` says so to the browser too), readable at 400 px wide, the band in words as
well as colour, text and colours at WCAG AA contrast (>= 4.5:1), the drivers as an inline SVG
waterfall on the log-odds scale with a `<title>`/`<desc>` and a table of the same numbers. It
shows the request id, never a patient identifier (the stored response holds none).

The same wording functions (`percent_text`, `frequency_text`) write the CDS Hooks cards.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Band colours: (background, text). Contrast of each pair >= 4.5:1 (tests check the ratios).
BAND_COLOURS = {
    "green": ("#1b5e20", "#ffffff"),
    "amber": ("#ffd54f", "#1a1a1a"),
    "red": ("#b71c1c", "#ffffff"),
}
BAND_WORDS = {
    "green": "low estimated risk (below the rule-out threshold)",
    "amber": "intermediate estimated risk (between the rule-out and rule-in thresholds)",
    "red": "high estimated risk (at or above the rule-in threshold)",
}
INCREASE, DECREASE, INK, PAGE = "#b3261e", "#1a5fb4", "#1a1a1a", "#ffffff"
PROBABILITY_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.99)
# Waterfall geometry, in SVG user units (the viewBox scales to the page's width).
WIDTH, LABEL_WIDTH, ROW, TOP, AXIS = 400, 150, 24, 18, 34
LABEL_CHARACTERS = 24


@dataclass(frozen=True)
class Outcome:
    """The predicted event, from a model description's `outcome` (name, horizon in days)."""

    name: str = "cancer"
    horizon_days: int | None = None
    definition: str | None = None


def outcome_of(model: Mapping[str, Any]) -> Outcome:
    """The model's outcome; `cancer` with no horizon when the description does not give one."""
    given = model.get("outcome")
    if not isinstance(given, Mapping):
        return Outcome()
    horizon = given.get("horizon_days")
    return Outcome(
        str(given.get("name") or "cancer"),
        int(horizon) if isinstance(horizon, int | float) else None,
        str(given["definition"]) if given.get("definition") else None,
    )


def percent_text(probability: float) -> str:
    """0.0568 -> `5.7%`; below 1%, two decimals (0.0049 -> `0.49%`), so green is not `0.0%`."""
    percent = 100 * probability
    return f"{percent:.2f}%" if percent < 1 else f"{percent:.1f}%"


def horizon_text(outcome: Outcome) -> str:
    """365 days -> `within 12 months`; 730 -> `within 24 months`; other spans in days."""
    days = outcome.horizon_days
    if days is None:
        return "(the model description gives no time horizon)"
    if days % 365 == 0:
        return f"within {12 * days // 365} months"
    return f"within {days} days"


def frequency_text(probability: float, outcome: Outcome) -> str:
    """The probability as a natural frequency, the form clinicians and patients read best."""
    per_thousand = round(1000 * probability)
    if per_thousand < 1:
        share = "fewer than 1 in 1,000"
    else:
        share = f"about {min(per_thousand, 1000):,} in 1,000"
    return f"{share} patients like this are diagnosed with {outcome.name} {horizon_text(outcome)}"


def _logistic(log_odds: float) -> float:
    return 1 / (1 + math.exp(-log_odds))


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def feature_names(model: Mapping[str, Any]) -> dict[str, str]:
    """Feature code -> name in words, from the description's inputs (`haemoglobin` ->
    `Haemoglobin`); anything else (age, sex, derived ratios) from its code."""
    return {item["code"]: str(item["name"]) for item in model.get("inputs", [])}


@dataclass(frozen=True)
class Step:
    """One row of the waterfall, on the calibrated log-odds scale."""

    label: str
    start: float
    end: float
    kind: str  # "base", "increase", "decrease", "final"


def waterfall_steps(response: Mapping[str, Any], names: Mapping[str, str]) -> list[Step]:
    """Base -> each driver -> the other features together -> final log-odds. The "other" step is
    `log_odds - base - sum(drivers)`, so the steps always close on the final log-odds."""
    base, final = float(response["base"]), float(response["log_odds"])
    steps = [Step("Starting point", base, base, "base")]
    running = base
    drivers = response.get("drivers", [])
    for driver in drivers:
        change = float(driver["contribution"])
        label = names.get(driver["feature"], str(driver["feature"]).replace("_", " ").capitalize())
        steps.append(Step(label, running, running + change, _kind(change)))
        running += change
    others = final - running
    count = len(response.get("contributions", {})) - len(drivers)
    if count > 0 or abs(others) > 1e-12:
        label = f"Other {count} features" if count > 0 else "Other features"
        steps.append(Step(label, running, final, _kind(others)))
    steps.append(Step("Final estimate", final, final, "final"))
    return steps


def _kind(change: float) -> str:
    return "increase" if change >= 0 else "decrease"


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARACTERS else label[: LABEL_CHARACTERS - 1] + "…"


def _axis(steps: Sequence[Step], thresholds: Sequence[float]) -> tuple[float, float]:
    """The log-odds domain: every step and threshold, padded by 5% each side."""
    values = [v for s in steps for v in (s.start, s.end)] + list(thresholds)
    low, high = min(values), max(values)
    pad = max(0.05 * (high - low), 0.1)
    return low - pad, high + pad


def waterfall_svg(response: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """The drivers as an inline SVG waterfall (log-odds axis, probability tick labels); each bar
    carries `data-start`/`data-end` in log-odds so tests can check the arithmetic."""
    steps = waterfall_steps(response, feature_names(model))
    cuts = [_logit(t) for t in (response.get("thresholds") or {}).values() if t and 0 < t < 1]
    low, high = _axis(steps, cuts)
    plot = WIDTH - LABEL_WIDTH - 10

    def x(value: float) -> float:
        return round(LABEL_WIDTH + plot * (value - low) / (high - low), 2)

    height = TOP + ROW * len(steps) + AXIS
    bottom = TOP + ROW * len(steps)
    parts = [
        f'<svg class="waterfall" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="wf-title wf-desc">',
        '<title id="wf-title">How each result moved the estimate</title>',
        f'<desc id="wf-desc">{escape(_description(steps))}</desc>',
    ]
    for value, name in zip(cuts, ("rule-out", "rule-in"), strict=False):
        parts.append(
            f'<line x1="{x(value)}" x2="{x(value)}" y1="{TOP - 4}" y2="{bottom}" stroke="{INK}" '
            f'stroke-dasharray="3 3" stroke-width="1"/><text x="{x(value)}" y="{TOP - 7}" '
            f'font-size="9" text-anchor="middle" fill="{INK}">{name}</text>'
        )
    for index, step in enumerate(steps):
        y = TOP + ROW * index
        parts.append(f"<g><title>{escape(step.label)}</title>")
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 16}" font-size="12" text-anchor="end" '
            f'fill="{INK}">{escape(_short(step.label))}</text>'
        )
        parts.append(_bar(step, x, y))
        parts.append("</g>")
    parts.append(
        f'<line x1="{LABEL_WIDTH}" x2="{WIDTH - 10}" y1="{bottom + 2}" y2="{bottom + 2}" '
        f'stroke="{INK}"/>'
    )
    for tick in PROBABILITY_TICKS:
        if low <= _logit(tick) <= high:
            at = x(_logit(tick))
            parts.append(
                f'<line x1="{at}" x2="{at}" y1="{bottom + 2}" y2="{bottom + 6}" stroke="{INK}"/>'
                f'<text x="{at}" y="{bottom + 17}" font-size="9" text-anchor="middle" '
                f'fill="{INK}">{tick * 100:g}%</text>'
            )
    parts.append(
        f'<text x="{(LABEL_WIDTH + WIDTH) / 2}" y="{bottom + 30}" font-size="10" '
        f'text-anchor="middle" fill="{INK}">estimated probability (log-odds scale)</text></svg>'
    )
    return "".join(parts)


def _bar(step: Step, x: Any, y: float) -> str:
    """A bar from start to end (a diamond for the base and the final estimate), with its change
    in log-odds written beside it: the sign in text, not only the colour."""
    data = f'data-kind="{step.kind}" data-start="{step.start!r}" data-end="{step.end!r}"'
    if step.kind in ("base", "final"):
        cx, cy = x(step.end), y + 11
        label = percent_text(_logistic(step.end))
        return (
            f'<path class="step" {data} d="M{cx} {cy - 7}L{cx + 7} {cy}L{cx} {cy + 7}'
            f'L{cx - 7} {cy}Z" fill="{INK}"/><text x="{cx + 10}" y="{y + 15}" font-size="10" '
            f'fill="{INK}">{label}</text>'
        )
    left, right = sorted((x(step.start), x(step.end)))
    colour = INCREASE if step.kind == "increase" else DECREASE
    change = f"{step.end - step.start:+.2f}"
    beside = right + 3 if right < WIDTH - 45 else left - 3
    anchor = "start" if right < WIDTH - 45 else "end"
    return (
        f'<rect class="step" {data} x="{left}" y="{y + 4}" width="{max(right - left, 1.5)}" '
        f'height="{ROW - 8}" fill="{colour}"/><text x="{beside}" y="{y + 15}" font-size="10" '
        f'text-anchor="{anchor}" fill="{INK}">{change}</text>'
    )


def _description(steps: Sequence[Step]) -> str:
    moves = [
        f"{s.label} {'raised' if s.kind == 'increase' else 'lowered'} it by "
        f"{abs(s.end - s.start):.2f} log-odds"
        for s in steps
        if s.kind in ("increase", "decrease")
    ]
    return (
        f"Starting from {percent_text(_logistic(steps[0].end))} for an average patient, "
        + "; ".join(moves)
        + f"; final estimate {percent_text(_logistic(steps[-1].end))}."
    )


def waterfall_table(response: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """The waterfall's numbers as a table (for screen readers, print, and anyone who prefers)."""
    rows = []
    for step in waterfall_steps(response, feature_names(model)):
        change = "" if step.kind in ("base", "final") else f"{step.end - step.start:+.2f}"
        rows.append(
            f'<tr><th scope="row">{escape(step.label)}</th><td>{change}</td>'
            f"<td>{step.end:.2f}</td><td>{percent_text(_logistic(step.end))}</td></tr>"
        )
    return (
        '<table><caption>Each step of the chart</caption><thead><tr><th scope="col">Step</th>'
        '<th scope="col">Change (log-odds)</th><th scope="col">Running total (log-odds)</th>'
        '<th scope="col">Probability</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
    )


STYLE = f"""
body {{ margin: 0; background: {PAGE}; color: {INK};
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }}
main {{ max-width: 44rem; margin: 0 auto; padding: 0.75rem 1rem 2rem; }}
h1 {{ font-size: 1.3rem; margin: 0.2rem 0 0.4rem; }}
h2 {{ font-size: 1.1rem; margin: 1.4rem 0 0.4rem; border-bottom: 1px solid #767676; }}
.meta {{ font-size: 0.85rem; color: #4a4a4a; margin: 0; overflow-wrap: anywhere; }}
.band {{ display: inline-block; padding: 0.3rem 0.7rem; border-radius: 0.3rem; font-weight: 700;
  border: 2px solid {INK}; }}
{"".join(f".band-{b} {{ background: {bg}; color: {fg}; }}" for b, (bg, fg) in BAND_COLOURS.items())}
.probability {{ font-size: 1.15rem; }}
svg.waterfall {{ display: block; max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.85rem; width: 100%; }}
th, td {{ border: 1px solid #767676; padding: 0.2rem 0.35rem; text-align: left; }}
td {{ font-variant-numeric: tabular-nums; }}
ul, ol {{ padding-left: 1.3rem; }}
dt {{ font-weight: 700; margin-top: 0.4rem; }}
dd {{ margin-left: 0; }}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"


def _thresholds_text(thresholds: Mapping[str, Any]) -> str:
    rule_out, rule_in = thresholds.get("rule_out"), thresholds.get("rule_in")
    said = []
    if rule_out is not None:
        said.append(f"green below {percent_text(float(rule_out))}")
    if rule_in is not None:
        said.append(f"red at or above {percent_text(float(rule_in))}")
    return ("Bands: " + ", ".join(said) + ".") if said else ""


def _model_section(model: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    parts = [
        '<section aria-labelledby="model-h"><h2 id="model-h">About the model</h2><dl>',
        f"<dt>Model</dt><dd>{escape(str(model.get('title') or ref.get('name')))} "
        f"({escape(str(ref.get('name')))}, version {escape(str(ref.get('version')))})</dd>",
    ]
    if not model.get("intended_use"):
        parts.append(
            "<dt>Intended use</dt><dd>The description of this model version is not "
            "available on this server.</dd>"
        )
    else:
        parts.append(f"<dt>Intended use</dt><dd>{escape(str(model['intended_use']))}</dd>")
    if model.get("population"):
        parts.append(f"<dt>Population</dt><dd>{escape(str(model['population']))}</dd>")
    outcome = outcome_of(model)
    if outcome.definition:
        parts.append(f"<dt>Outcome</dt><dd>{escape(outcome.definition)}</dd>")
    not_for = model.get("not_for") or []
    if not_for:
        items = "".join(f"<li>{escape(str(item))}</li>" for item in not_for)
        parts.append(f"<dt>Not for</dt><dd><ul>{items}</ul></dd>")
    parts.append("</dl></section>")
    return "".join(parts)


def render_result(
    response: Mapping[str, Any], model: Mapping[str, Any], *, received_at: str
) -> str:
    """The page for one score: `response` is the ScoreResponse JSON as stored, `model` the model's
    description as /v1/models lists it (title, intended_use, not_for, outcome, inputs)."""
    band, probability = str(response["band"]), float(response["probability"])
    if band not in BAND_COLOURS:
        raise ValueError(f"unknown band {band!r}")
    ref = response.get("model") or {}
    outcome = outcome_of(model)
    drivers = "".join(f"<li>{escape(str(d['text']))}</li>" for d in response.get("drivers", []))
    warnings = "".join(
        f"<li>{escape(str(w.get('message', w)))}</li>" for w in response.get("warnings", [])
    )
    return f"""<!doctype html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<title>Cancer triage result: {band} band, {percent_text(probability)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>Cancer triage result</h1>
<p class="meta">Scored {escape(received_at)} by {escape(str(ref.get("name")))} version
{escape(str(ref.get("version")))}. Request {escape(str(response.get("request_id")))}.</p>
<section aria-labelledby="result-h">
<h2 id="result-h">Result</h2>
<p><span class="band band-{band}">{band.capitalize()} band</span>
<span class="band-words">{escape(BAND_WORDS[band])}</span></p>
<p class="probability">Estimated probability of {escape(outcome.name)}:
<strong>{percent_text(probability)}</strong></p>
<p>This means {escape(frequency_text(probability, outcome))}.</p>
<p>{escape(str(response.get("recommendation", "")))}</p>
<p>{escape(_thresholds_text(response.get("thresholds") or {}))}</p>
</section>
<section aria-labelledby="drivers-h">
<h2 id="drivers-h">What moved the estimate</h2>
{waterfall_svg(response, model)}
<ol class="drivers">{drivers}</ol>
<details><summary>The chart as a table</summary>{waterfall_table(response, model)}</details>
</section>
<section aria-labelledby="warnings-h">
<h2 id="warnings-h">Warnings</h2>
{f'<ul class="warnings">{warnings}</ul>' if warnings else "<p>None.</p>"}
</section>
{_model_section(model, ref)}
</main>
</body>
</html>
"""


def render_stored(
    stored: str | bytes | Mapping[str, Any],
    models: Sequence[Mapping[str, Any]],
    *,
    received_at: str,
) -> str:
    """The page for a stored score, as the route has it: the response JSON from the audit store
    and the served models' descriptions (/v1/models). A description is used only for the same
    name and version; otherwise the page says it is not available (a since-replaced model).
    Raises ValueError when the stored JSON is not a score response."""
    response = json.loads(stored) if isinstance(stored, str | bytes) else dict(stored)
    if not isinstance(response, Mapping) or "probability" not in response:
        raise ValueError("the stored record is not a score response")
    ref = response.get("model") or {}
    model = next(
        (
            m
            for m in models
            if m.get("name") == ref.get("name") and str(m.get("version")) == str(ref.get("version"))
        ),
        {"name": ref.get("name"), "version": ref.get("version")},
    )
    return render_result(response, model, received_at=received_at)
