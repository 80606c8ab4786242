"""User errors on the command line: one clear message on stderr and exit status 2.

A spec, cohort, column map, registry, unit or model-artifact problem is the user's to fix, not
a bug: it prints as `error: <message>` without a traceback. `--debug` (or `TRIAGE_DEBUG=1`)
shows the traceback as well, for a bug report.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer import _click  # typer's own copy of click: its Context is what a group receives
from typer.core import TyperGroup

USER_ERROR_STATUS = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean "fix the input", imported only when one is raised."""
    from models.columns import ColumnError
    from models.predictor import ArtifactError
    from models.routing import RoutingError
    from models.spec import SpecError
    from models.units import UnknownUnitError
    from training.cohorts.dates import DateError
    from training.cohorts.reader import CohortError
    from training.cohorts.standard import SourceError
    from training.cohorts.standard.concept_sets import ConceptSetError
    from training.monitor.outcomes import OutcomesError
    from training.registry.store import RegistryError

    return (
        SpecError, CohortError, ColumnError, DateError, RegistryError, RoutingError,
        UnknownUnitError, ArtifactError, FileNotFoundError, SourceError, ConceptSetError,
        OutcomesError,
    )  # fmt: skip


def debugging(ctx: _click.Context) -> bool:
    """True with `--debug` or TRIAGE_DEBUG set to anything but empty/0/false."""
    flag = os.environ.get("TRIAGE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return bool(ctx.meta.get("triage.debug")) or flag


class UserErrorGroup(TyperGroup):
    """The `triage` group: a user error ends the command with its message and status 2."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            if not isinstance(error, user_error_types()) or debugging(ctx):
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(USER_ERROR_STATUS) from None
