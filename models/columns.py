"""A cohort's own columns onto the names the models read, by a spec's `column_map`.

A mapped column becomes an analyte (its values in the declared unit, converted later by the
validation; the unit is never guessed), a role (`patient_id`, `index_date`, `age`, `sex`,
`pathway`, `lab`, `outcome`) or a subgroup column; a coded column's codes are replaced by their
stated meaning (`{1: male, 2: female}`). Every frame scorer (training's validation, the cohort
reader, replay, the MLflow pyfunc) maps through here, so a spec reads the same columns wherever
it is used. Mapping a frame twice changes nothing (the spec refuses maps where it would).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.spec import ColumnMapping, ModelSpec, code_text


class ColumnError(ValueError):
    """A frame without a column its spec's `column_map` names, or with a clashing column."""


def map_columns(
    frame: pd.DataFrame, spec: ModelSpec, *, strict: bool = False
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename and recode a cohort's columns by the spec's `column_map`.

    Returns the mapped frame and the declared unit of each mapped analyte (the validation
    converts it). A column already under its target name (a frame mapped before) is left alone.
    A mapped model input (an analyte, age, sex, pathway) must be there; so must every mapped
    column when `strict` (a cohort file, read whole). Rows to score alone (the MLflow pyfunc,
    whose schema keeps the model inputs only) need no patient id, index date or outcome.
    """
    if not spec.column_map:
        return frame, {}
    targets = {column: spec.column_target(m) for column, m in spec.column_map.items()}
    pending = {c: t for c, t in targets.items() if c != t and not _already_mapped(frame, c, t)}
    needed = targets if strict else {c: t for c, t in targets.items() if _model_input(spec, t)}
    missing = [c for c, t in needed.items() if c not in frame.columns and t not in frame.columns]
    if missing:
        raise ColumnError(
            f"columns named in the spec's column_map are missing: {missing}; the cohort has "
            f"{_some(frame.columns)}"
        )
    clashes = [t for c, t in pending.items() if t in frame.columns]
    if clashes:
        raise ColumnError(
            f"column_map targets already present in the cohort: {clashes}; map only one column "
            "to each"
        )
    pending = {c: t for c, t in pending.items() if c in frame.columns}
    mapped = frame.rename(columns=pending) if pending else frame
    recoded = {  # only columns this call brings in: a frame mapped before is recoded already
        targets[c]: _recode(mapped[targets[c]], m, c)
        for c, m in spec.column_map.items()
        if m.values and c in frame.columns
    }
    if recoded:
        mapped = mapped.assign(**recoded)
    units = {targets[c]: m.unit for c, m in spec.column_map.items() if m.unit is not None}
    return mapped, units


def _model_input(spec: ModelSpec, target: str) -> bool:
    return target in spec.catalogue or target in ("age", "sex", "pathway")


def _already_mapped(frame: pd.DataFrame, column: str, target: str) -> bool:
    return column not in frame.columns and target in frame.columns


def _recode(column: pd.Series, mapping: ColumnMapping, name: str) -> pd.Series:
    """Each listed code replaced by its meaning; anything else kept, for the validation to judge
    (an outcome, which no validation judges, must have every code listed). Runs once per
    distinct value, not per row."""
    recoding = mapping.recoding()
    positions, uniques = pd.factorize(column)
    # An unlisted code stays, as text (one type per column, so it can be written to Parquet).
    meanings = np.array(
        [recoding.get(code_text(u), u if isinstance(u, str) else code_text(u)) for u in uniques]
        + [None],
        dtype=object,
    )  # the -1 of a missing value picks the trailing None
    values = meanings[positions]
    if all(isinstance(v, int | np.integer) for v in recoding.values()):
        numeric = pd.to_numeric(pd.Series(values, index=column.index), errors="coerce")
        unknown = pd.unique(column[numeric.isna() & column.notna()])
        if len(unknown):
            raise ColumnError(
                f"column {name!r}: codes {[str(u) for u in unknown[:5]]} are not listed in "
                f"column_map.{name}.values ({', '.join(mapping.recoding())})"
            )
        return numeric
    return pd.Series(values, index=column.index, dtype=object)


def _some(columns: pd.Index, n: int = 12) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
