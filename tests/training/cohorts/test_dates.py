"""Index dates and sample times as the outside world writes them: year-only, year-month,
timezone-aware around midnight, naive local, day-first (refused), mixed (refused), and the as-of
rule that never uses a result from the index day, whatever its time."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.cohorts.asof import as_of_wide
from training.cohorts.dates import DateError, calendar_days, implied_precision, tied_share

LONDON = "Europe/London"


def days(values: list[object], zone: str = LONDON) -> list[str]:
    parsed, _ = calendar_days(pd.Series(values, dtype=object), zone, "index_date")
    return [d.date().isoformat() if pd.notna(d) else "NaT" for d in parsed]


def test_coarse_dates_stand_for_the_middle_of_what_they_name() -> None:
    parsed, precision = calendar_days(pd.Series(["2015", "2016"]), LONDON, "d")
    assert precision == "year" and list(parsed.dt.strftime("%Y-%m-%d")) == [
        "2015-07-01",
        "2016-07-01",
    ], "a year-only date is 1 July"
    parsed, precision = calendar_days(pd.Series(["2015-03", "2015-04-02"]), LONDON, "d")
    assert precision == "month" and parsed[0].day == 15, "a year-month is the 15th"


def test_aware_timestamps_are_local_calendar_days_around_midnight() -> None:
    # 23:30 UTC on 30 June 2016 is 00:30 on 1 July in London (BST); in winter UTC == GMT.
    assert days(["2016-06-30T23:30:00Z", "2016-12-31T23:30:00+00:00"]) == [
        "2016-07-01",
        "2016-12-31",
    ]
    assert days(["2016-06-30T23:30:00Z"], "America/New_York") == ["2016-06-30"]
    assert days(["2016-06-30 23:59:59", None]) == ["2016-06-30", "NaT"], "naive is local"


def test_day_first_and_mixed_dates_are_refused_naming_the_column() -> None:
    with pytest.raises(DateError, match="index_date: '01/07/2015' is not an ISO 8601 date"):
        days(["2015-07-01", "01/07/2015"])
    with pytest.raises(DateError, match="mixes timestamps with a time zone"):
        days(["2015-07-01T10:00:00+01:00", "2015-07-01T10:00:00"])


def test_a_datetime_column_on_one_day_of_each_year_is_recognised_as_years() -> None:
    years = pd.Series(pd.to_datetime([f"{2010 + i % 9}-07-01" for i in range(40)]))
    assert implied_precision(years) == "year"
    spread = pd.Series(pd.date_range("2015-01-01", periods=40, freq="5D"))
    assert implied_precision(spread) == "day"
    assert tied_share(years) == 1.0 and tied_share(spread) == 0.0


def test_a_result_on_the_index_day_is_never_used_whatever_its_time() -> None:
    events = pd.DataFrame({"patient_id": [1, 2], "index_date": ["2016-05-10T23:59", "2016-05-10"]})
    results = pd.DataFrame(
        {
            "patient_id": [1, 1, 2],
            "sample_time": [
                *("2016-05-10T00:01+01:00", "2016-05-09T23:59+01:00"),
                "2016-05-09T23:30Z",
            ],
            "code": ["haemoglobin"] * 3,
            "value": [99.0, 120.0, 130.0],
            "unit": ["g/L"] * 3,
        }
    )
    wide = as_of_wide(results, events, time_zone=LONDON)
    assert wide["haemoglobin"][0] == 120.0, "00:01 on the index day is excluded, 23:59 before kept"
    assert pd.isna(wide["haemoglobin"][1]), "23:30 UTC on 9 May is 00:30 BST on 10 May: excluded"


@settings(max_examples=60, deadline=None)
@given(
    index_minute=st.integers(0, 24 * 60 - 1),
    offsets=st.lists(st.integers(-3 * 24 * 60, 2 * 24 * 60), min_size=1, max_size=6),
    window=st.integers(1, 3),
)
def test_as_of_keeps_the_latest_result_before_the_index_day_in_local_time(
    index_minute: int, offsets: list[int], window: int
) -> None:
    zone = ZoneInfo(LONDON)
    index_local = datetime(2016, 3, 27, tzinfo=zone) + timedelta(minutes=index_minute)  # DST day
    taken = [index_local + timedelta(minutes=m) for m in offsets]
    events = pd.DataFrame({"patient_id": [7], "index_date": [index_local.isoformat()]})
    results = pd.DataFrame(
        {
            "patient_id": [7] * len(taken),
            "sample_time": [t.astimezone(ZoneInfo("UTC")).isoformat() for t in taken],
            "code": ["crp"] * len(taken),
            "value": [float(i) for i in range(len(taken))],
            "unit": ["mg/L"] * len(taken),
        }
    )
    wide = as_of_wide(results, events, window_days=window, time_zone=LONDON)
    index_day = index_local.date()
    usable = [
        (t.replace(tzinfo=None), i)
        for i, t in enumerate(taken)
        if t.date() < index_day and t.date() >= index_day - timedelta(days=window)
    ]
    expected = max(usable)[1] if usable else None  # the latest; a tie: the later row
    got = wide["crp"][0] if "crp" in wide else float("nan")
    if expected is None:
        assert pd.isna(got), f"no result lies in the window before {index_day}, got {got}"
    else:
        assert got == float(expected), f"expected result {expected} before {index_day}, got {got}"
