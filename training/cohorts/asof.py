"""As-of selection: from a long lab extract to one wide row per index event.

A model may only see what was known before its index date. For each index event (a referral, or
a person's index blood test) and each analyte, the result kept is the latest one taken within
`window_days` before the index day: `index_day - window <= sample_time < index_day`, where the
index day is the index date's calendar day in the spec's time zone (`training.cohorts.dates`:
aware timestamps converted, naive ones taken as local). Anything on or after the index day is
never used, whatever its time. Two results of one analyte taken at the same moment: the one
later in the extract wins (an amended result is filed after the one it corrects). Test codes are
resolved to catalogue codes through `Catalogue.resolve` (LOINC or catalogue code); values and
units stay as reported, so the usual validation converts them afterwards. Training and replay
both use this function.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import CATALOGUE, Catalogue
from models.units import unit_key, unit_table
from training.cohorts.dates import calendar_days, local_times

DEFAULT_TIME_ZONE = "Europe/London"  # the spec's `split.time_zone` default

RESULT_COLUMNS = ("patient_id", "sample_time", "code", "value", "unit")
EVENT_COLUMNS = ("patient_id", "index_date")


def as_of_wide(
    results: pd.DataFrame,
    index_events: pd.DataFrame,
    *,
    window_days: int = 90,
    catalogue: Catalogue = CATALOGUE,
    time_zone: str = DEFAULT_TIME_ZONE,
) -> pd.DataFrame:
    """One row per index event (in the given order): the event's columns, then `{code}` (value
    as reported) and `{code}_unit` (unit as reported) for every analyte found in `results`, in
    catalogue order. NaN where no result falls inside the window. Ties in sample time go to the
    result that comes later in `results`; results with unknown codes or no value are ignored."""
    _require(results, RESULT_COLUMNS, "results")
    _require(index_events, EVENT_COLUMNS, "index_events")
    events = index_events.reset_index(drop=True)
    analyte, codes = _resolve(results["code"], catalogue)
    usable = (analyte >= 0) & results["value"].notna().to_numpy()
    result_rows, event_rows = _pair_by_patient(
        results["patient_id"].to_numpy(np.int64)[usable],
        events["patient_id"].to_numpy(np.int64),
    )
    result_rows = np.flatnonzero(usable)[result_rows]
    taken = _to_ns(local_times(results["sample_time"], time_zone, "sample_time"))[result_rows]
    index_day, _ = calendar_days(events["index_date"], time_zone, "index_date")
    index_date = _to_ns(index_day)[event_rows]
    window = np.timedelta64(window_days, "D")
    inside = (taken >= index_date - window) & (taken < index_date)
    result_rows, event_rows, taken = result_rows[inside], event_rows[inside], taken[inside]
    chosen_result, chosen_event, chosen_analyte = _latest(result_rows, event_rows, taken, analyte)
    units = _meant_units(results, chosen_result, catalogue)
    return _spread(events, results, chosen_result, chosen_event, chosen_analyte, codes, units)


def _require(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{name} lacks columns {missing}; it has {list(frame.columns)}")


def _resolve(codes: pd.Series, catalogue: Catalogue) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Each result's analyte as a position in `found` (-1 when unknown), and `found`: the
    analytes present, in catalogue order. Resolution runs once per distinct code, not per row."""
    categorical = codes.astype("category")
    resolved = [catalogue.resolve(str(c)) for c in categorical.cat.categories]
    present = {a.code for a in resolved if a is not None}
    found = [code for code in catalogue.codes if code in present]
    position = np.array(
        [found.index(a.code) if a is not None else -1 for a in resolved] + [-1], dtype=np.int64
    )
    return position[categorical.cat.codes.to_numpy()], found  # code -1 (missing) -> the last, -1


def _to_ns(column: pd.Series) -> npt.NDArray[np.datetime64]:
    return np.asarray(pd.to_datetime(column).to_numpy(dtype="datetime64[ns]"))


def _pair_by_patient(
    result_patient: npt.NDArray[np.int64], event_patient: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every (result, event) pair of the same patient, as positions: a vectorised inner join
    (most patients have one event, so this is about the size of `results`)."""
    order = np.argsort(event_patient, kind="stable")
    sorted_patient = event_patient[order]
    first = np.searchsorted(sorted_patient, result_patient, side="left")
    count = np.searchsorted(sorted_patient, result_patient, side="right") - first
    result_rows = np.repeat(np.arange(len(result_patient)), count)
    within = np.arange(len(result_rows)) - np.repeat(np.cumsum(count) - count, count)
    return result_rows, order[np.repeat(first, count) + within]


def _latest(
    result_rows: npt.NDArray[np.int64],
    event_rows: npt.NDArray[np.int64],
    taken: npt.NDArray[np.datetime64],
    analyte: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The last result per (event, analyte) by sample time, then by position in `results`."""
    kind = analyte[result_rows]
    order = np.lexsort((result_rows, taken, kind, event_rows))
    event_sorted, kind_sorted = event_rows[order], kind[order]
    last = np.r_[
        (event_sorted[1:] != event_sorted[:-1]) | (kind_sorted[1:] != kind_sorted[:-1]), True
    ]
    if len(order) == 0:
        last = np.zeros(0, dtype=bool)
    return result_rows[order][last], event_sorted[last], kind_sorted[last]


def _spread(
    events: pd.DataFrame,
    results: pd.DataFrame,
    result_rows: npt.NDArray[np.int64],
    event_rows: npt.NDArray[np.int64],
    analyte: npt.NDArray[np.int64],
    codes: list[str],
    units: pd.Categorical,
) -> pd.DataFrame:
    """The chosen results as `{code}` and `{code}_unit` columns beside the event columns
    (`units`: the chosen results' units, `_meant_units`)."""
    values = np.full((len(events), len(codes)), np.nan)
    values[event_rows, analyte] = results["value"].to_numpy(np.float64)[result_rows]
    unit_codes = np.full((len(events), len(codes)), -1, dtype=np.int64)
    unit_codes[event_rows, analyte] = units.codes
    columns: dict[str, object] = {}
    for j, code in enumerate(codes):
        columns[code] = values[:, j]
        columns[f"{code}_unit"] = pd.Categorical.from_codes(
            unit_codes[:, j], categories=units.categories
        )
    analytes = pd.DataFrame(columns, index=events.index)
    clashes = [c for c in analytes.columns if c in events.columns]
    if clashes:
        raise ValueError(f"index_events already has analyte columns {clashes}")
    return pd.concat([events, analytes], axis=1)


def _meant_units(
    results: pd.DataFrame, result_rows: npt.NDArray[np.int64], catalogue: Catalogue
) -> pd.Categorical:
    """The chosen results' units, each as its own LOINC means it: "mg/dL" under 3094-0 (urea
    nitrogen) is "mg/dL{BUN}", so a value spread under the analyte code `urea` keeps the factor of
    the code it was reported with (urea and its nitrogen differ 2.14-fold). A unit that code does
    not accept is marked so, and validation refuses it rather than reading it as urea's."""
    units = results["unit"].to_numpy(object)[result_rows]
    special = {loinc for analyte in catalogue for loinc in analyte.loinc_units}
    if special:
        codes = results["code"].to_numpy(object)[result_rows].astype(str)
        rows = np.flatnonzero(np.isin(codes, sorted(special)))
        meanings: dict[tuple[str, object], object] = {}
        for row in rows:
            pair = (codes[row], units[row])
            if pair not in meanings:
                meanings[pair] = _meaning(catalogue, *pair)
            units[row] = meanings[pair]
    return pd.Categorical(units)


def _meaning(catalogue: Catalogue, loinc: str, unit: object) -> object:
    if not isinstance(unit, str):
        return unit
    measured, analyte = catalogue.as_measured(loinc), catalogue.resolve(loinc)
    match = unit_table(measured).get(unit_key(unit)) if measured is not None else None
    if match is None or analyte is None:
        return f"{unit} (not a unit of LOINC {loinc})"
    return analyte.unit_meaning(loinc, match.unit)
