"""Numbers and text as the reports print them: escaped, thousands-separated, intervals as
`estimate [low, high]`, missing values as a dash.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

# --------------------------------------------------------------------------- formatting


def escape(value: Any) -> str:
    """The value as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def is_finite_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number_text(value: Any, digits: int = 3) -> str:
    """A number as printed: integers with thousands separators, floats at `digits`, a dash
    for missing or non-finite values."""
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


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
    """A value, mapping or list on one line (`key: value, ...`)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {inline_text(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple):
        return ", ".join(inline_text(v) for v in value) or "–"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else "–"
    return str(value)
