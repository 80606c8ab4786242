"""Which index days a replay covers: a period of the model's spec, an open or closed custom
range, or everything; a reversed range is refused."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from models.spec import load_spec
from training.cohorts.reader import CohortError
from training.replay.options import ReplayOptions

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
