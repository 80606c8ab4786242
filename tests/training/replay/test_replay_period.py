"""Which index days a replay covers: a period of the model's spec, an open or closed custom
range, or everything; a reversed range is refused."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from models.spec import load_spec
from training.cohorts.reader import CohortError
from training.replay.options import ReplayOptions
from training.replay.outputs import replayed_period

SPEC = load_spec("any_cancer")


def options(**kwargs: object) -> ReplayOptions:
    return ReplayOptions(Path("cohort.csv"), Path("out"), **kwargs)  # type: ignore[arg-type]


def test_a_spec_period_is_taken_from_the_spec() -> None:
    assert options(period="evaluate").date_range(SPEC) == SPEC.split.evaluate
    assert options().date_range(SPEC) is None, "no restriction: every row"


def test_a_custom_range_may_be_open_at_either_end() -> None:
    since = options(start=date(2018, 1, 1)).date_range(SPEC)
    assert since is not None and since.start == date(2018, 1, 1) and since.end == date.max
    until = options(end=date(2012, 6, 30)).date_range(SPEC)
    assert until is not None and until.start == date.min and until.end == date(2012, 6, 30)


def test_a_reversed_range_or_an_unknown_period_is_refused() -> None:
    with pytest.raises(CohortError, match="is after"):
        options(start=date(2019, 1, 1), end=date(2018, 1, 1)).date_range(SPEC)
    with pytest.raises(CohortError, match="unknown period 'validation'"):
        options(period="validation").date_range(SPEC)


def test_the_report_shows_the_requested_bounds_else_the_dates_replayed() -> None:
    found = {"first": "2011-01-03", "last": "2019-12-30"}

    def shown(start: date | None = None, end: date | None = None) -> tuple[object, object]:
        range_ = options(start=start, end=end).date_range(SPEC)
        period = None if range_ is None else {"start": str(range_.start), "end": str(range_.end)}
        return replayed_period({"period": period, "index_dates": found})

    assert shown() == ("2011-01-03", "2019-12-30"), "no period: the first and last day replayed"
    assert shown(start=date(2018, 1, 1)) == ("2018-01-01", "2019-12-30"), "open end"
    assert shown(end=date(2012, 6, 30)) == ("2011-01-03", "2012-06-30"), "open start"
    evaluate = SPEC.split.evaluate
    assert replayed_period(
        {"period": {"start": str(evaluate.start), "end": str(evaluate.end)}, "index_dates": found}
    ) == (str(evaluate.start), str(evaluate.end))
    assert replayed_period({"period": None, "index_dates": {"first": None, "last": None}}) == (
        None,
        None,
    ), "nothing replayed: no dates"
