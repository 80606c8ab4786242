"""The report's building blocks: its section titles, sections, notes and tables (from rows or
from a DataFrame), all text escaped and every table in a horizontally scrollable box so a wide
one is never cut off at the page's edge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation.formatting import escape, number_text

SECTIONS: dict[str, str] = {
    "lead": "Replay results",
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
P_VALUE_FLOOR = 0.001


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table of text cells, in a box that scrolls sideways when it is too wide."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{escape(cls)}"' if cls else ""
    return (
        f'<div class="wide"><table{klass}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def cell_text(column: str, value: Any) -> str:
    """One DataFrame cell as printed: counts with thousands separators, floats at 3 decimals,
    p-values below 0.001 as `< 0.001`, flags as yes/no, missing values as a dash."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and column.endswith("p_value") and math.isfinite(value):
        return f"< {P_VALUE_FLOOR}" if value < P_VALUE_FLOOR else f"{value:.3f}"
    if isinstance(value, int | float):
        return number_text(value)
    return str(value)


def frame_table(frame: pd.DataFrame, max_rows: int = 200) -> str:
    """A DataFrame as a table: its index only when named (a RangeIndex 0, 1, 2 says nothing),
    cells by `cell_text`, at most `max_rows` rows (the rest counted)."""
    shown = frame.head(max_rows)
    if any(name is not None for name in shown.index.names):
        shown = shown.reset_index()
    columns = [str(c) for c in shown.columns]
    rows = [
        [cell_text(column, value) for column, value in zip(columns, row, strict=True)]
        for row in shown.itertuples(index=False, name=None)
    ]
    more = f"<p class='note'>{len(frame) - max_rows:,} more rows not shown.</p>"
    return table(columns, rows) + (more if len(frame) > max_rows else "")


def frame_tables(tables: Mapping[str, pd.DataFrame]) -> str:
    """Named DataFrames, each under its name as a heading."""
    return "".join(f"<h3>{escape(name)}</h3>{frame_table(frame)}" for name, frame in tables.items())


def section(key: str, body: str) -> str:
    """A report section headed by its title in `SECTIONS` (the anchor the navigation links)."""
    return f'<section id="{key}"><h2>{escape(SECTIONS[key])}</h2>{body}</section>'


def note(text: str) -> str:
    """A small grey explanatory paragraph."""
    return f'<p class="note">{escape(text)}</p>'
