"""Index dates and sample times as the models use them: calendar days in one time zone.

The rules (stated once, used by every reader):

- an index date is a **calendar day in the spec's time zone** (`split.time_zone`, default
  Europe/London): a timezone-aware timestamp is converted to that zone and cut to its day; a
  naive one is taken as already local; a column mixing the two is refused (there is no honest
  way to line them up);
- a result counts for an index event only when it was taken **before the index day began**
  (so a result on the index day is never used, whatever its time: `training.cohorts.asof`);
- only ISO 8601 text is read (`YYYY-MM-DD`, a date-time, or a coarse `YYYY-MM` / `YYYY`): a
  day-first or month-first date (`01/07/2015`) is refused rather than guessed;
- a coarse date stands for the middle of what it names: `YYYY` -> 1 July, `YYYY-MM` -> the 15th.
  Its precision is reported, since a year-only date assigns a whole year to one period and
  makes the as-of window meaningless.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

import numpy as np
import pandas as pd

Precision = Literal["day", "month", "year"]
_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_AWARE = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$")


class DateError(ValueError):
    """A date column that cannot be read by the rules above; the message names the column."""


def calendar_days(column: pd.Series, time_zone: str, name: str) -> tuple[pd.Series, Precision]:
    """The column as local calendar days (datetime64 at midnight, NaT where missing) and the
    coarsest precision its text had ("day" for a datetime column: see `implied_precision`)."""
    local, precision = _local(column, time_zone, name)
    return local.dt.normalize(), precision


def local_times(column: pd.Series, time_zone: str, name: str) -> pd.Series:
    """The column as naive local timestamps (sample times: the time of day is kept)."""
    return _local(column, time_zone, name)[0]


def _local(column: pd.Series, time_zone: str, name: str) -> tuple[pd.Series, Precision]:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_convert(time_zone).dt.tz_localize(None), "day"
    if pd.api.types.is_datetime64_dtype(column.dtype):  # its precision: `implied_precision`
        return column.astype("datetime64[ns]"), "day"
    positions, uniques = pd.factorize(column)  # each distinct value parsed once
    parsed, precision = _parse_distinct(pd.Index(uniques), time_zone, name)
    values = np.append(parsed.to_numpy("datetime64[ns]"), np.datetime64("NaT", "ns"))
    return pd.Series(values[positions], index=column.index), precision


def _parse_distinct(
    uniques: pd.Index, time_zone: str, name: str
) -> tuple[pd.DatetimeIndex, Precision]:
    if len(uniques) and all(isinstance(u, dt.date) for u in uniques):
        moments = pd.to_datetime(list(uniques))
        if moments.tz is not None:
            moments = moments.tz_convert(time_zone).tz_localize(None)
        return pd.DatetimeIndex(moments), "day"
    text = [str(u).strip() for u in uniques]
    kinds = [_kind(t) for t in text]
    bad = [t for t, k in zip(text, kinds, strict=True) if k is None]
    if bad:
        raise DateError(
            f"{name}: {bad[0]!r} is not an ISO 8601 date (YYYY-MM-DD, a date-time, YYYY-MM or "
            f"YYYY); {len(bad):,} distinct values cannot be read (day-first and month-first "
            "dates are never guessed)"
        )
    if "aware" in kinds and "naive" in kinds:
        aware = next(t for t, k in zip(text, kinds, strict=True) if k == "aware")
        naive = next(t for t, k in zip(text, kinds, strict=True) if k == "naive")
        raise DateError(
            f"{name}: mixes timestamps with a time zone ({aware!r}) and without ({naive!r}); "
            "give every value an offset, or none (naive values are read as local time)"
        )
    out = [_parse_one(t, str(k), time_zone) for t, k in zip(text, kinds, strict=True)]
    precision: Precision = "year" if "year" in kinds else "month" if "month" in kinds else "day"
    return pd.DatetimeIndex(out), precision


def _kind(text: str) -> str | None:
    if _YEAR.match(text):
        return "year"
    if _MONTH.match(text):
        return "month"
    if _DAY.match(text):
        return "day"
    if len(text) > 10 and _DAY.match(text[:10]) and text[10] in "T ":
        return "aware" if _AWARE.search(text[11:]) else "naive"
    return None


def _parse_one(text: str, kind: str, time_zone: str) -> pd.Timestamp:
    if kind == "year":
        return pd.Timestamp(int(text), 7, 1)
    if kind == "month":
        return pd.Timestamp(int(text[:4]), int(text[5:7]), 15)
    moment = pd.Timestamp(text)
    if moment.tzinfo is not None:
        moment = moment.tz_convert(time_zone).tz_localize(None)
    return moment


def implied_precision(column: pd.Series) -> Precision:
    """A datetime column whose every value is one day of the year (all 1 July, say) holds years;
    one whose every value is one day of the month holds months (with enough rows to tell)."""
    days = column.dropna()
    if len(days) < 20:  # too few to tell a pattern from chance
        return "day"
    if (days.dt.month * 100 + days.dt.day).nunique() == 1 and days.dt.year.nunique() > 1:
        return "year"
    if days.dt.day.nunique() == 1 and days.dt.month.nunique() > 1:
        return "month"
    return "day"


def tied_share(days: pd.Series, heap: float = 0.01) -> float:
    """Share of rows whose date is shared by at least `heap` of all rows (and by two rows at
    least): 0 for dates spread over many days, 1 for year-only dates."""
    counts = days.dropna().value_counts()
    if counts.empty:
        return 0.0
    heaped = counts >= max(2.0, heap * counts.sum())
    return float(counts[heaped].sum() / counts.sum())
