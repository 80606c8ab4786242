"""`triage cohort from-fhir-bulk FOLDER --out DIR`: a FHIR Bulk Data export as a cohort folder."""

from __future__ import annotations

from datetime import date
from pathlib import Path
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


@cohort_app.command("from-fhir-bulk")
def from_fhir_bulk(
    folder: Annotated[
        Path, typer.Argument(help="the export: NDJSON files, with the Bulk manifest.json if any")
    ],
    out: OutOption,
    index_concepts: IndexConceptsOption = None,
    horizon_days: HorizonOption = 365,
    time_zone: TimeZoneOption = "Europe/London",
    followup_end: Annotated[
        str | None,
        typer.Option(
            help="YYYY-MM-DD up to which outcomes are complete; default: the Bulk "
            "manifest's transactionTime"
        ),
    ] = None,
) -> None:
    """Import a FHIR Bulk Data export (Patient, ServiceRequest, Condition, Observation NDJSON)
    into a long cohort folder that validate, train and replay read; print what was excluded."""
    from training.cohorts.standard import SourceError
    from training.cohorts.standard.fhir_bulk_import import import_fhir_bulk

    end = None
    if followup_end is not None:
        try:
            end = date.fromisoformat(followup_end)
        except ValueError:
            raise SourceError(
                f"invalid_followup_end: --followup-end {followup_end!r} is not YYYY-MM-DD"
            ) from None
    manifest = import_fhir_bulk(
        folder,
        out,
        index_concepts=index_concepts,
        horizon_days=horizon_days,
        time_zone=time_zone,
        followup_end=end,
    )
    print_import(manifest, out)
