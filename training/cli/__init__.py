"""The `triage` command line: one typer command per workload, each parsing its options, calling
the wing that does the work (cohorts, fit, evaluation, registry, replay, serving) and printing
what it returned. Commands live in `data`, `cohort` (with `cohort_omop` and `cohort_fhir`),
`models`, `replay`, `audit` and `monitor`; `app` holds what they share."""

# Each module registers its commands.
from training.cli import (  # noqa: F401
    audit,
    cohort,
    cohort_fhir,
    cohort_omop,
    data,
    models,
    monitor,
    replay,
)
from training.cli.app import app

__all__ = ["app"]
