"""A custom cohort's columns onto catalogue codes, by a spec's `column_map`.

Every frame scorer (training's validation, replay, the MLflow pyfunc) renames through here, so a
spec that maps `hb_gl` to `haemoglobin` reads the same columns wherever it is used.
"""

from __future__ import annotations

import pandas as pd

from models.spec import ModelSpec


class ColumnError(ValueError):
    """A frame without a column its spec's `column_map` names, or with a clashing column."""


def map_columns(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename a custom cohort's columns to catalogue codes using the spec's `column_map`.

    Returns the renamed frame and the declared unit of each mapped column (the validation then
    converts it; the unit is never guessed).
    """
    if not spec.column_map:
        return frame, {}
    missing = [c for c in spec.column_map if c not in frame.columns]
    if missing:
        raise ColumnError(f"columns named in the spec's column_map are missing: {missing}")
    clashes = [
        m.code for c, m in spec.column_map.items() if m.code in frame.columns and m.code != c
    ]
    if clashes:
        raise ColumnError(f"column_map targets already present in the cohort: {clashes}")
    renamed = frame.rename(columns={c: m.code for c, m in spec.column_map.items()})
    units = {m.code: m.unit for m in spec.column_map.values() if m.unit is not None}
    return renamed, units
