"""`triage cohort from-omop SOURCE --out DIR`: an OMOP CDM v5.4 instance as a cohort folder."""

from __future__ import annotations

from typing import Annotated

import typer

from training.cli.cohort import (
    HorizonOption,
    IndexConceptsOption,
    OutOption,
    TimeZoneOption,
    cohort_app,
    print_import,
)


@cohort_app.command("from-omop")
def from_omop(
    source: Annotated[
        str,
        typer.Argument(
            help="a folder of CDM tables (<table>.parquet or <table>.csv) or a database URL "
            "(e.g. postgresql+psycopg://user:password@host/db)"
        ),
    ],
    out: OutOption,
    index_concepts: IndexConceptsOption = None,
    schema: Annotated[
        str | None, typer.Option(help="the database's CDM schema; default: the connection's")
    ] = None,
    horizon_days: HorizonOption = 365,
    time_zone: TimeZoneOption = "Europe/London",
) -> None:
    """Import an OMOP CDM v5.4 instance (person, observation_period, measurement, concept,
    observation or procedure_occurrence, condition_occurrence...) into a long cohort folder
    that validate, train and replay read; print what was excluded."""
    from training.cohorts.standard.omop_import import import_omop

    manifest = import_omop(
        source,
        out,
        index_concepts=index_concepts,
        horizon_days=horizon_days,
        time_zone=time_zone,
        schema=schema,
    )
    print_import(manifest, out)
