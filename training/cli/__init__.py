"""The `triage` command line: one typer command per workload, each parsing its options, calling
the wing that does the work (cohorts, fit, evaluation, registry, replay, serving) and printing
what it returned. Commands live in `data`, `models` and `replay`; `app` holds what they share."""

from training.cli import data, models, replay  # noqa: F401  (each module registers its commands)
from training.cli.app import app

__all__ = ["app"]
