"""The `replay` command: a cohort through pinned model version(s)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.table import Table

from training.cli.app import WORKDIR, TrackingUriOption, WorkdirOption, _fmt_ci, _tracking, app
from training.console import make_console

if TYPE_CHECKING:
    from training.cohorts.reader import Source
    from training.replay.outputs import ReplayResult

NOTHING_SCORED_STATUS = 3  # the replay ran, but a model scored no row (see the command's help)


@app.command()
def replay(
    model: Annotated[
        list[str],
        typer.Option(help="NAME@ALIAS or NAME/VERSION; give it twice (A then B) for side by side"),
    ],
    cohort: Annotated[
        Path, typer.Option(help="wide Parquet/CSV, or a folder with wide or long (results+index)")
    ],
    out: Annotated[Path, typer.Option(help="output folder: scores, drift, report, manifest")],
    window: Annotated[int, typer.Option(help="as-of window in days, for long cohorts")] = 90,
    explain: Annotated[
        bool, typer.Option(help="add base + per-feature contributions (calibrated log-odds)")
    ] = False,
    engine: Annotated[str, typer.Option(help="local (chunked) | spark")] = "local",
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
    source: Annotated[
        str, typer.Option(help="auto | wide | long: which tables of a cohort folder to use")
    ] = "auto",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for CIs")] = 200,
    chunk_rows: Annotated[int, typer.Option(help="rows per chunk (local engine)")] = 200_000,
    spark_master: Annotated[
        str | None, typer.Option(help="Spark master (default: spark-submit's, else local[*])")
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(help="replay only a period of the model's spec: train | calibrate | evaluate"),
    ] = None,
    start: Annotated[
        datetime | None,
        typer.Option("--from", formats=["%Y-%m-%d"], help="only index dates on or after (ISO)"),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option("--to", formats=["%Y-%m-%d"], help="only index dates on or before (ISO)"),
    ] = None,
) -> None:
    """Replay a cohort through pinned model version(s): scores, drift, evaluation, what-if.

    Exit status 0: rows were scored, every output is written.

    Exit status 3: a model scored no row; the console and manifest.json say why; no report.

    Exit status 2: unusable input (e.g. a column the model needs is missing); nothing written.
    """
    from rich.progress import Progress

    from training.cohorts.reader import open_cohort
    from training.replay.options import ReplayOptions
    from training.replay.run import replay as run_replay

    if engine not in ("local", "spark") or source not in ("auto", "wide", "long"):
        raise typer.BadParameter(f"--engine local|spark and --source auto|wide|long: {engine}")
    if not 1 <= len(model) <= 2:
        raise typer.BadParameter("give --model once, or twice for side by side")
    if period is not None and (start is not None or end is not None):
        raise typer.BadParameter("give --period, or --from/--to, not both")
    options = ReplayOptions(
        cohort=cohort,
        out=out,
        window_days=window,
        source=cast("Source", source),
        explain=explain,
        engine=cast(Literal["local", "spark"], engine),
        chunk_rows=chunk_rows,
        n_boot=n_boot,
        spark_master=spark_master,
        period=period,
        start=None if start is None else start.date(),
        end=None if end is None else end.date(),
    )
    console = make_console()
    with Progress(console=console, transient=True) as progress:
        rows = open_cohort(cohort, window, options.source).n_rows()
        task = progress.add_task("replaying", total=rows)
        result = run_replay(
            _tracking(workdir, tracking_uri),
            model,
            options,
            lambda done: progress.update(task, completed=done),
        )
    table = Table(title=f"replay of {cohort} ({result.manifest['cohort']['rows']:,} rows)")
    for column in ("model", "run", "booster sha256", "scored", "ineligible", "green", "red",
                   "drift flags", "AUC [95% CI]", "O/E", "events in green"):  # fmt: skip
        table.add_column(column)
    for outcome in result.models:
        counts, ev, pinned = outcome.counts(), outcome.evaluation or {}, outcome.pinned
        total: dict[Any, Any] = outcome.what_if.iloc[-1].to_dict() if len(outcome.what_if) else {}
        table.add_row(
            pinned.label, pinned.run_id or "-", pinned.booster_sha256[:12],
            f"{counts['scored']:,}", f"{counts['ineligible']:,}",
            f"{counts['bands']['green']:,}", f"{counts['bands']['red']:,}",
            str(int(outcome.drift["flagged"].sum())), _fmt_ci(ev.get("auc")),
            f"{ev['calibration']['observed_expected']:.3f}" if ev else "-",
            str(total.get("cancers green", "-")),
        )  # fmt: skip
    console.print(table)
    for line in replay_lines(result):
        console.print(line, markup=False, highlight=False)
    if result.manifest["nothing_scored"]:
        raise typer.Exit(NOTHING_SCORED_STATUS)


def replay_lines(result: ReplayResult) -> list[str]:
    """What the console says after the table: per model the ineligible rows by reason and the
    drift flags grouped by feature and lab; the paired AUC difference; the outputs; and, when a
    model scored nothing, why and that there is no report."""
    from training.evaluation.drift import console_summary
    from training.replay.outputs import by_count

    lines = []
    for outcome in result.models:
        reasons = ", ".join(f"{k} {v:,}" for k, v in by_count(outcome.summary.exclusions))
        lines.append(f"{outcome.pinned.label}: ineligible (kept in the scores): {reasons or '-'}")
        flags = int(outcome.drift["flagged"].sum())
        if flags:
            lines.append(f"{outcome.pinned.label}: drift flags {flags:,}, by feature and lab:")
            lines += [f"  {line}" for line in console_summary(outcome.drift)]
        else:
            lines.append(f"{outcome.pinned.label}: no drift flags")
    diff = (result.comparison or {}).get("auc_difference")
    if diff:
        a, b = result.comparison["models"]  # type: ignore[index]
        lines.append(f"AUC {a} - {b}: {_fmt_ci(diff)} (paired bootstrap)")
    lines.append(f"outputs in {result.out}: {', '.join(result.manifest['outputs'])}")
    if result.manifest["nothing_scored"]:
        lines.append(f"nothing scored: {result.manifest['reason']}")
        lines.append("no report: there are no scored rows to evaluate; see manifest.json")
    return lines
