"""Commands about data: the analyte catalogue, the shipped specs, cohort validation and the
simulator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from training.cli.app import WORKDIR, app
from training.console import make_console

if TYPE_CHECKING:
    import pandas as pd

    from models.spec import ModelSpec


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
    file: Annotated[Path, typer.Argument(help="a cohort: CSV, Parquet or a cohort folder")],
    spec: Annotated[
        str | None, typer.Option(help="spec name or path: column map and eligibility")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit non-zero when any error is found")] = False,
    issues_out: Annotated[
        Path | None, typer.Option("--issues-out", help="write every issue to this Parquet file")
    ] = None,
) -> None:
    """Validate a cohort through the catalogue: issues by code and field, each with an example
    (its row and message), and the columns nothing recognised."""
    from models.analytes import CATALOGUE
    from models.columns import map_columns
    from models.frame_validation import validate_frame
    from models.spec import load_spec
    from training.cohorts.reader import open_cohort

    model_spec = load_spec(spec) if spec else None
    frame = open_cohort(file, spec=model_spec).read()
    units: dict[str, str] = {}
    if model_spec is not None:
        frame, units = map_columns(frame, model_spec)
    result = validate_frame(
        frame,
        catalogue=model_spec.catalogue if model_spec else CATALOGUE,
        eligibility=model_spec.eligibility if model_spec else None,
        units=units,
    )
    console = make_console()
    console.print(issue_table(result.summary(), f"{file}: {len(frame):,} rows, "
                              f"{int(result.eligible.sum()):,} eligible"))  # fmt: skip
    unknown = unrecognised_columns(list(frame.columns), model_spec)
    if unknown:
        console.print(
            f"[yellow]{len(unknown)} columns not recognised (ignored): {', '.join(unknown)}. "
            f"Name them with catalogue codes or LOINC (`triage analytes`), or map them in a "
            f"spec's column_map and pass --spec.[/yellow]"
        )
    if issues_out is not None:
        result.issues.to_parquet(issues_out, index=False)
    n_errors = int((result.issues["severity"] == "error").sum())
    if strict and n_errors:
        console.print(f"[red]{n_errors:,} errors[/red]")
        raise typer.Exit(code=1)


def issue_table(summary: pd.DataFrame, title: str) -> Table | str:
    """Issues by severity, code and field with their count and one example row and message."""
    if not len(summary):
        return f"{title}, no issues"
    table = Table(title=title)
    for column in ("severity", "code", "field", "rows", "example"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for row in summary.to_dict("records"):
        table.add_row(
            str(row["severity"]), str(row["code"]), str(row["field"]), f"{row['count']:,}",
            f"row {row['row']:,}: {row['example']}",
            style="red" if row["severity"] == "error" else "yellow",
        )  # fmt: skip
    return table


def unrecognised_columns(columns: list[str], spec: ModelSpec | None) -> list[str]:
    """Columns that are neither an analyte (code or LOINC, or its `_unit`), a role, a known
    cohort column nor a spec's subgroup: what a validation without a column map ignores."""
    from models.analytes import CATALOGUE
    from models.spec import ROLES
    from training.fit.train import META_COLUMNS

    catalogue = spec.catalogue if spec is not None else CATALOGUE
    known = {*ROLES, *META_COLUMNS, "cancer", "sample_time", "diagnosis_date", "prior_cancer"}
    if spec is not None:
        known |= {spec.outcome.column, spec.split.date_column, *spec.subgroups}
    return [
        c for c in map(str, columns)
        if c not in known and catalogue.resolve(c.removesuffix("_unit")) is None
    ]  # fmt: skip


@app.command()
def simulate(
    cohort: Annotated[str, typer.Option(help="referrals | myeloma")] = "referrals",
    n: Annotated[
        int | None,
        typer.Option(help="referrals: number of referrals; myeloma: population size"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same files")] = 7,
    out: Annotated[Path, typer.Option(help="output folder")] = WORKDIR / "cohorts",
    artefacts: Annotated[bool, typer.Option(help="inject the documented lab artefacts")] = True,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="native | omop | fhir-bulk: besides the native files, also export the cohort "
            "as an OMOP CDM v5.4 instance (OUT/omop/) or as FHIR Bulk Data NDJSON "
            "(OUT/fhir-bulk/), to import back with `triage cohort from-omop|from-fhir-bulk`",
        ),
    ] = "native",
    table_format: Annotated[
        str, typer.Option(help="--format omop: the tables as parquet | csv")
    ] = "parquet",
) -> None:
    """Simulate a cohort (wide and long Parquet plus a manifest) with known true risks."""
    from training.cohorts.simulator import run_simulation

    if format not in ("native", "omop", "fhir-bulk"):
        raise typer.BadParameter(
            f"{format!r}: choose native, omop or fhir-bulk", param_hint="--format"
        )
    manifest = run_simulation(cohort=cohort, n=n, seed=seed, out=out, artefacts=artefacts)
    if format != "native":
        manifest["export"] = export_simulated(out, manifest["cohort"], format, table_format)
    make_console().print_json(data=manifest)


def export_simulated(out: Path, name: str, format: str, table_format: str) -> dict[str, object]:
    """Export the native cohort just written in `out` as an OMOP instance or Bulk NDJSON."""
    import pandas as pd

    index = pd.read_parquet(out / f"{name}_index.parquet")
    results = pd.read_parquet(out / f"{name}_results.parquet")
    if format == "omop":
        from training.cohorts.standard.omop_export import write_omop

        folder = out / "omop"
        files = write_omop(index, results, folder, table_format=table_format)
    else:
        from training.cohorts.standard.fhir_bulk_export import write_fhir_bulk

        folder = out / "fhir-bulk"
        files = write_fhir_bulk(index, results, folder)
    return {"format": format, "folder": str(folder), "files": files}
