"""`triage cohort ...`: cohorts from standard sources. The importers register their commands
here (`cohort_omop`: `from-omop`; `cohort_fhir`: `from-fhir-bulk`), and share how an import's
outcome is printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from training.cli.app import app
from training.console import make_console

cohort_app = typer.Typer(
    help="Cohorts from standard sources: an OMOP CDM v5.4 instance, a FHIR Bulk Data export.",
    no_args_is_help=True,
)
app.add_typer(cohort_app, name="cohort")

# The options both importers take.
OutOption = Annotated[Path, typer.Option(help="the cohort folder to write")]
IndexConceptsOption = Annotated[
    Path | None,
    typer.Option(
        help="CSV of index-event concepts (vocabulary_id, concept_code, concept_name, pathway); "
        "default: the shipped set"
    ),
]
HorizonOption = Annotated[
    int, typer.Option(help="days after the index day in which a cancer counts")
]
TimeZoneOption = Annotated[str, typer.Option(help="the cohort's local time zone (IANA name)")]


def print_import(manifest: dict[str, Any], out: object) -> None:
    """The counts, then every exclusion rule with what it excluded (zeros included)."""
    console = make_console()
    counts = Table(title=f"Cohort written to {out}")
    counts.add_column("count")
    counts.add_column("n", justify="right")
    for name, value in manifest["counts"].items():
        counts.add_row(str(name), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(counts)
    excluded = Table(title="Excluded, by step and reason")
    for column in ("step", "reason", "n", "rule"):
        excluded.add_column(column, justify="right" if column == "n" else "left")
    for row in manifest["exclusions"]:
        excluded.add_row(row["step"], row["reason"], f"{row['count']:,}", row["rule"])
    console.print(excluded)
