"""Commands about data: the analyte catalogue, the shipped specs, cohort validation and the
simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from training.cli.app import app
from training.console import make_console


@app.command()
def analytes() -> None:
    """Print the analyte catalogue: codes, LOINC, units, reference intervals and hard limits."""
    from models.analytes import CATALOGUE

    table = Table(title=f"Analyte catalogue {CATALOGUE.version} ({len(CATALOGUE)} analytes)")
    for column in ("code", "name", "LOINC", "unit", "other units", "reference", "limits", "panel"):
        table.add_column(column)
    for a in CATALOGUE:
        reference = a.reference.describe()
        if a.reference_male and a.reference_female:
            reference = f"M {a.reference_male.describe()}, F {a.reference_female.describe()}"
        table.add_row(
            a.code,
            a.name,
            " ".join((a.loinc, *a.alt_loinc)),
            a.unit,
            ", ".join(a.alt_units) or "-",
            reference,
            a.limits.describe(),
            a.panel,
        )
    make_console().print(table)


@app.command()
def specs() -> None:
    """List the shipped model specs."""
    from models.spec import load_spec, spec_names

    table = Table(title="Model specs")
    for column in ("name", "title", "features", "eligibility", "split (train/cal/eval)"):
        table.add_column(column)
    for name in spec_names():
        spec = load_spec(name)
        s = spec.split
        table.add_row(
            name,
            spec.title,
            str(len(spec.features.names)),
            f"age {spec.eligibility.min_age:g}+, {', '.join(spec.eligibility.required_panels)}",
            f"{s.train.start.year}-{s.train.end.year} / {s.calibrate.start.year}-"
            f"{s.calibrate.end.year} / {s.evaluate.start.year}-{s.evaluate.end.year}",
        )
    make_console().print(table)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a wide cohort, CSV or Parquet")],
    spec: Annotated[
        str | None, typer.Option(help="spec name or path: column map and eligibility")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit non-zero when any error is found")] = False,
    issues_out: Annotated[
        Path | None, typer.Option("--issues-out", help="write every issue to this Parquet file")
    ] = None,
) -> None:
    """Validate a cohort through the catalogue and print issues by code and field."""
    from models.analytes import CATALOGUE
    from models.columns import map_columns
    from models.frame_validation import validate_frame
    from models.spec import load_spec
    from training.cohorts.reader import read_table

    frame = read_table(file)
    model_spec = load_spec(spec) if spec else None
    units: dict[str, str] = {}
    if model_spec is not None:
        frame, units = map_columns(frame, model_spec)
    result = validate_frame(
        frame,
        catalogue=model_spec.catalogue if model_spec else CATALOGUE,
        eligibility=model_spec.eligibility if model_spec else None,
        units=units,
    )
    summary = result.summary()
    table = Table(title=f"{file}: {len(frame):,} rows, {int(result.eligible.sum()):,} eligible")
    for column in ("severity", "code", "field", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for row in summary.to_dict("records"):
        style = "red" if row["severity"] == "error" else "yellow"
        table.add_row(
            str(row["severity"]),
            str(row["code"]),
            str(row["field"]),
            f"{row['count']:,}",
            style=style,
        )
    make_console().print(table if len(summary) else f"{file}: {len(frame):,} rows, no issues")
    if issues_out is not None:
        result.issues.to_parquet(issues_out, index=False)
    n_errors = int((result.issues["severity"] == "error").sum())
    if strict and n_errors:
        make_console().print(f"[red]{n_errors:,} errors[/red]")
        raise typer.Exit(code=1)


@app.command()
def simulate(
    cohort: Annotated[str, typer.Option(help="referrals | myeloma")] = "referrals",
    n: Annotated[
        int | None,
        typer.Option(help="referrals: number of referrals; myeloma: population size"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same files")] = 7,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("var/cohorts"),
    artefacts: Annotated[bool, typer.Option(help="inject the documented lab artefacts")] = True,
) -> None:
    """Simulate a cohort (wide and long Parquet plus a manifest) with known true risks."""
    from training.cohorts.simulator import run_simulation

    manifest = run_simulation(cohort=cohort, n=n, seed=seed, out=out, artefacts=artefacts)
    make_console().print_json(data=manifest)
