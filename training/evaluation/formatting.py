"""Numbers and text as the reports print them: escaped, thousands-separated, intervals as
`estimate [low, high]`, missing values as a dash.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np

# --------------------------------------------------------------------------- formatting


def escape(value: Any) -> str:
    """The value as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def is_finite_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number_text(value: Any, digits: int = 3) -> str:
    """A number as printed: integers with thousands separators, floats at `digits`, a dash
    for missing or non-finite values (numpy scalars as their Python values)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def probability_text(value: Any) -> str:
    """A probability to 3 significant figures as a plain decimal (0.0000692, not 6.92e-05; 0.121);
    a dash when missing."""
    if not is_finite_number(value):
        return "–"
    return str(
        np.format_float_positional(value, precision=3, unique=True, fractional=False, trim="-")
    )


def interval_text(interval: Any, digits: int = 3, percent: bool = False) -> str:
    """`estimate [low, high]`, or as percentages."""
    if not isinstance(interval, Mapping):
        return number_text(interval, digits)
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits

    def part(key: str) -> str:
        value = interval.get(key)
        return number_text(value * scale, d) if is_finite_number(value) else "–"

    if not is_finite_number(interval.get("estimate")):
        return "–"
    if not (is_finite_number(interval.get("low")) and is_finite_number(interval.get("high"))):
        return f"{part('estimate')}{unit}"
    return f"{part('estimate')}{unit} [{part('low')}, {part('high')}]"


def inline_text(value: Any) -> str:
    """A value, mapping or list on one line in words (`key: value, ...`): counts with thousands
    separators, a missing value as "not given", an empty list as "none", a flag as yes/no."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {inline_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(inline_text(v) for v in value) or "none"
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else "not given"
    return str(value)


# --------------------------------------------------------------------------- findings

FAMILY_LABELS = {"lightgbm": "LightGBM", "spline": "spline logistic"}
_FLAG_WORDS = {
    "rule_out_sensitivity": "rule-out sensitivity below target",
    "observed_expected": "O/E outside the range",
}


def family_label(family: Any, default: str = "model") -> str:
    """`LightGBM` / `spline logistic` for a model family (`default` when none is recorded)."""
    return FAMILY_LABELS.get(str(family), str(family)) if family else default


def green_risk_text(green: Any) -> str:
    """`Risk in the green band 0.4% [0.3%, 0.6%], below the 3% referral threshold`, or why the
    risk cannot be given."""
    if not isinstance(green, Mapping):
        return "No green band: no rule-out threshold was set."
    risk = green.get("risk_in_green")
    if not isinstance(risk, Mapping) or not is_finite_number(risk.get("estimate")):
        return "Risk in the green band: not available (nobody in the band)."

    def pct(value: Any) -> str:
        return f"{value * 100:.2g}%" if is_finite_number(value) else "–"

    ci = f" [{pct(risk.get('low'))}, {pct(risk.get('high'))}]"
    ci = ci if is_finite_number(risk.get("low")) and is_finite_number(risk.get("high")) else ""
    text = f"Risk in the green band {pct(risk['estimate'])}{ci}"
    referral = green.get("referral_threshold")
    if not is_finite_number(referral):
        return text + " (no referral threshold compared: not on the population's scale)."
    below = green.get("risk_in_green_below_referral")
    relation = (
        "below"
        if below is True
        else "NOT clearly below (the upper bound reaches)"
        if below is False
        else "compared with"
    )
    return f"{text}, {relation} the {referral * 100:g}% referral threshold."


def flag_text(entry: Mapping[str, Any], events: str = "events") -> str:
    """One flagged subgroup level: `age_band 80+ (42 events): rule-out sensitivity below target
    (sensitivity 88.1% [76.0, 94.6]; O/E 1.31 [1.02, 1.66])`."""
    checks = ", ".join(_FLAG_WORDS.get(str(f), str(f)) for f in entry.get("flags") or [])
    figures = (
        f"sensitivity {interval_text(entry.get('rule_out_sensitivity'), percent=True)}; "
        f"O/E {interval_text(entry.get('observed_expected_ci'), 2)}"
    )
    return (
        f"{entry.get('column')} {entry.get('level')} ({number_text(entry.get('events'))} "
        f"{events}): {checks or 'flagged'} ({figures})"
    )


def threshold_choice_text(choice: Any) -> str:
    """How a threshold was chosen: method, events behind it, or why it was not set."""
    if not isinstance(choice, Mapping):
        return "choice not recorded"
    events = f"{number_text(choice.get('events'))} events (minimum {choice.get('min_events')})"
    if choice.get("threshold") is None:
        return f"not set: {choice.get('reason') or 'no reason recorded'}; {events}"
    bound = choice.get("lower_bound")
    bound_text = f", lower bound {number_text(bound)}" if is_finite_number(bound) else ""
    return (
        f"{choice.get('method')} (target {number_text(choice.get('target'), 4)}"
        f"{bound_text}), {events}"
    )


def difference_text(value: Any) -> str:
    """`+0.0123 [-0.0010, +0.0250]` (a paired AUC difference), or `not recorded`."""
    if not isinstance(value, Mapping) or not is_finite_number(value.get("estimate")):
        return "not recorded"
    low, high = value.get("low"), value.get("high")
    ci = f" [{low:+.4f}, {high:+.4f}]" if is_finite_number(low) and is_finite_number(high) else ""
    return f"{value['estimate']:+.4f}{ci}"
