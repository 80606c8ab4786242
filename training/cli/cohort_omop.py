"""`triage cohort from-omop SOURCE --out DIR`: an OMOP CDM v5.4 instance as a cohort folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from training.cli.cohort import cohort_app, print_import


@cohort_app.command("from-omop")
def from_omop(
    source: Annotated[
        str,
        typer.Argument(
            help="a folder of CDM tables (<table>.parquet or <table>.csv) or a database URL "
            "(e.g. postgresql+psycopg://user:password@host/db)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="the cohort folder to write")],
    index_concepts: Annotated[
        Path | None,
        typer.Option(
            help="CSV of index-event concepts (vocabulary_id, concept_code, "
            "concept_name, pathway); default: the shipped set"
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="the database's CDM schema; default: the connection's")
    ] = None,
    horizon_days: Annotated[
        int, typer.Option(help="days after the index day in which a cancer counts")
    ] = 365,
    time_zone: Annotated[
        str, typer.Option(help="the cohort's local time zone (IANA name)")
    ] = "Europe/London",
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
