"""Shipped specs for the small simulated cohorts of the tests.

A shipped spec asks for `split.min_events` (30) events in each period, so a model is never fitted
or calibrated on a handful of cases. The test cohorts are kept small for speed (20,000 referrals
hold ~16 lower-GI cancers in a calibration year), so fixtures that need a model, not a good one,
lower that floor here, in one place, and say so.
"""

from __future__ import annotations

from models.spec import ModelSpec, load_spec, parse_spec

FIXTURE_MIN_EVENTS = 5


def small_cohort_spec(name: str, min_events: int = FIXTURE_MIN_EVENTS) -> ModelSpec:
    """The shipped spec `name` with `split.min_events` lowered for a small test cohort."""
    data = load_spec(name).model_dump(mode="json")
    data["split"]["min_events"] = min_events
    return parse_spec(data, f"{name}.yaml (small test cohort)")
