"""The report's model card and TRIPOD+AI sections, rendered from the card dict of
`training.evaluation.card.build_model_card` (older logged cards and replay cards included).

Every row is written in words: counts with thousands separators, periods as `A to B`, a value the
card does not give as "not given" or left out; never a Python repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.evaluation.formatting import escape, inline_text, is_finite_number
from training.evaluation.report_tables import note, section, table


def outcome_words(card: Mapping[str, Any]) -> tuple[str, str]:
    """The outcome's name and plural in words from the model card (cards logged before outcomes
    had names: cancer, cancers)."""
    outcome = card.get("outcome") or {}
    name = str(outcome.get("name") or "cancer")
    default = "cancers" if name == "cancer" else f"{name} events"
    return name, str(outcome.get("plural") or default)


def _horizon(outcome: Mapping[str, Any]) -> str:
    """`horizon 730 days`, or `any time in follow-up` (horizon_days None)."""
    days = outcome.get("horizon_days")
    if "horizon_days" in outcome and days is None:
        return "any time in follow-up"
    return f"horizon {inline_text(days)} days" if days is not None else "horizon not given"


def _period_text(period: Any) -> str:
    """`2011-01-01 to 2015-12-31` from a `{start, end}` mapping (missing ends: not given)."""
    if not isinstance(period, Mapping):
        return inline_text(period)
    return f"{period.get('start') or 'not given'} to {period.get('end') or 'not given'}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "not given"


def replay_rows(replay: Mapping[str, Any], events: str) -> list[tuple[str, str]]:
    """`Replayed period` and `Rows replayed` of a replay's card (`model_card["replay"]`)."""
    start, end = replay.get("start"), replay.get("end")
    period = "not given" if start is None and end is None else _period_text(replay)
    rows = (
        f"{_count(replay.get('rows'))} rows: {_count(replay.get('scored'))} scored, "
        f"{_count(replay.get('ineligible'))} ineligible; {_count(replay.get('events'))} "
        f"{events} among the scored"
    )
    return [("Replayed period", period), ("Rows replayed", rows)]


def _calibration_text(calibration: Any) -> str:
    """The calibration method, and the legacy deployment prevalence or matching when given."""
    if not isinstance(calibration, Mapping):
        return inline_text(calibration)
    text = str(calibration.get("method") or "not given")
    prevalence = calibration.get("deployment_prevalence")
    if is_finite_number(prevalence):
        text += f"; shifted to the deployment prevalence {prevalence:g}"
    design = calibration.get("case_control")
    if isinstance(design, Mapping):
        text += f"; case-control matched on {inline_text(design.get('match_on'))}"
    return text


def _sentences(value: Any) -> str:
    """A mapping of sentences on one line: `green: Low risk ...; red: High risk ...`."""
    if not isinstance(value, Mapping):
        return inline_text(value)
    return "; ".join(f"{k}: {str(v).strip().rstrip('.')}" for k, v in value.items()) + "."


def _features_text(features: Mapping[str, Any]) -> str:
    names = [
        d if isinstance(d, str) else str(d.get("name", d)) if isinstance(d, Mapping) else str(d)
        for key in ("analytes", "derived", "demographics", "context")
        for d in features.get(key) or []
    ]
    return f"{inline_text(features.get('count', len(names)))}: {inline_text(names)}"


def _policy_text(policy: Any) -> str:
    if not isinstance(policy, Mapping):
        return inline_text(policy)
    return (
        f"rule-out sensitivity target {inline_text(policy.get('rule_out_sensitivity'))}, "
        f"rule-in PPV target {inline_text(policy.get('rule_in_ppv'))}"
    )


def _checks_text(checks: Any) -> str:
    if not isinstance(checks, Mapping):
        return inline_text(checks)
    return (
        f"errors (not scored): {inline_text(checks.get('errors_not_scored', []))}; "
        f"warnings (scored): {inline_text(checks.get('warnings_scored', []))}"
    )


def _card_model_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Calibration, the population scale, the model family and the thresholds (older cards:
    the calibration alone)."""
    calibration = ("Calibration", _calibration_text(card.get("calibration")))
    if "population_scale" not in card:
        return [calibration]
    family = card.get("model_family") or {}
    return [
        calibration,
        ("Population scale", str(card["population_scale"])),
        ("Model family", str(family.get("text") or "not recorded")),
        ("Thresholds", " ".join(card.get("thresholds") or ["not recorded"])),
    ]


def _data_rows(card: Mapping[str, Any], events: str) -> list[tuple[str, str]]:
    """The replay's period and rows, or the training run's rows and events per period; and the
    exclusions, when the card records them."""
    data = card.get("data") or {}
    rows: list[tuple[str, str]] = []
    if isinstance(card.get("replay"), Mapping):
        rows += replay_rows(card["replay"], events)
    if data.get("rows"):
        rows.append(("Rows per period", inline_text(data["rows"])))
    if data.get("events"):
        rows.append(("Events per period", inline_text(data["events"])))
    if "exclusions" in data:
        rows.append(("Exclusions (validation codes)", inline_text(data["exclusions"])))
    return rows


def card_section(card: Mapping[str, Any], events: str) -> str:
    """The model card: purpose, data, outcome, features, model, policy, limitations."""
    periods = card.get("periods") or {}
    outcome = card.get("outcome") or {}
    source = card.get("data_source")
    setting = card.get("setting")
    rows = [
        ("Title", inline_text(card.get("title", "not given"))),
        ("Intended use", inline_text(card.get("intended_use", "not given"))),
        ("Population", inline_text(card.get("population", "not given"))),
        (
            "Setting",
            f"{setting.get('kind', 'not given')}; pathways: {inline_text(setting.get('pathways'))}"
            if isinstance(setting, Mapping)
            else inline_text(setting),
        ),
        *(
            [("Data source", str(source.get("description") or "not given"))]
            if isinstance(source, Mapping)
            else []
        ),
        *(
            (name.capitalize(), _period_text(periods[name]))
            for name in ("train", "calibrate", "evaluate")
            if name in periods
        ),
        (
            "Outcome",
            f"{outcome.get('definition', 'not given')} (column "
            f"{outcome.get('column', 'not given')}, {_horizon(outcome)})",
        ),
        ("Features", _features_text(card.get("features") or {})),
        ("Eligibility", inline_text(card.get("eligibility", "not given"))),
        *_card_model_rows(card),
        ("Triage policy", _policy_text(card.get("triage_policy", "not given"))),
        *(
            [("Recommendations", _sentences(card["recommendations"]))]
            if isinstance(card.get("recommendations"), Mapping)
            else []
        ),
        *_data_rows(card, events),
        ("Input checks", _checks_text(card.get("input_checks", "not given"))),
    ]
    body = "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"
    not_for = "".join(f"<li>{escape(x)}</li>" for x in card.get("not_for", []))
    limits = "".join(f"<li>{escape(x)}</li>" for x in card.get("limitations", []))
    return section(
        "card",
        body
        + f"<h3>Must not be used for</h3><ul>{not_for}</ul>"
        + f"<h3>Limitations</h3><ul>{limits}</ul>",
    )


def tripod_section(card: Mapping[str, Any]) -> str:
    """The TRIPOD+AI checklist: item, topic, status and where the report covers it."""
    rows = [
        [r.get("item", "–"), r.get("topic", ""), r.get("status", ""), r.get("where", "")]
        for r in card.get("tripod_ai", [])
    ]
    body = table(["item", "topic", "status", "where / how"], rows)
    return section("tripod", body + note(str(card.get("tripod_ai_note", ""))))
