"""`triage monitor`: post-market surveillance of one model from the audit trail."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from training.cli.app import WORKDIR, TrackingUriOption, WorkdirOption, _tracking, app
from training.console import make_console

ALERT_STATUS = 1  # an alert fired: a scheduler pages someone
NOTHING_AUDITED_STATUS = 3  # no audited request for the model in the window


@app.command()
def monitor(
    model: Annotated[str, typer.Option(help="the model's name (e.g. any_cancer)")],
    out: Annotated[Path, typer.Option(help="folder for monitor.json and monitor.html")],
    start: Annotated[
        datetime | None,
        typer.Option("--from", formats=["%Y-%m-%d"], help="first day received (local, ISO)"),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option("--to", formats=["%Y-%m-%d"], help="last day received (local, ISO)"),
    ] = None,
    outcomes: Annotated[
        Path | None,
        typer.Option(help="CSV/Parquet: patient_reference, diagnosis_date[, site]"),
    ] = None,
    follow_up_end: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="the day the outcomes are complete to "
            "(default: today); only horizons ended by then count",
        ),
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option(
            help="spec name or file whose monitoring block sets the alert thresholds "
            "(default: the shipped spec of the model)"
        ),
    ] = None,
    audit_url: Annotated[
        str | None,
        typer.Option(help="audit store URL (default: TRIAGE_AUDIT_URL, else the work folder's)"),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for realised CIs")] = 200,
    workdir: WorkdirOption = WORKDIR,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Volumes, bands, refusals, drift and shadow agreement from the audit trail; with
    --outcomes, realised performance of every version on scores whose horizon has elapsed.

    Exit status 0: no alert fired. 1: an alert fired (monitor.json lists it). 3: no audited
    request for the model in the window. 2: unusable input (e.g. an outcomes file's columns).
    """
    from models.spec import load_spec
    from serving.config import audit_url as default_audit_url
    from serving.config import existing_hmac_key
    from training.monitor.audit_rows import Window
    from training.monitor.run import MonitorOptions
    from training.monitor.run import monitor as run_monitor

    env = {**os.environ, "TRIAGE_HOME": str(workdir)}
    policy = load_spec(spec or model)
    options = MonitorOptions(
        model=model,
        out=out,
        audit_url=audit_url or default_audit_url(env),
        hmac_key=existing_hmac_key(env),
        window=Window(
            start.date() if start else None, end.date() if end else None, policy.split.time_zone
        ),
        policy=policy,
        outcomes=outcomes,
        follow_up_end=follow_up_end.date() if follow_up_end else None,
        n_boot=n_boot,
    )
    result = run_monitor(_tracking(workdir, tracking_uri), options)
    console = make_console()
    report = result.report
    if result.nothing_audited:
        console.print(f"[yellow]nothing audited: {report['reason']}[/yellow]")
        raise typer.Exit(code=NOTHING_AUDITED_STATUS)
    console.print(
        f"{report['requests']:,} requests, {report['shadow_rows']:,} shadow scores "
        f"({report['window']}); versions served {', '.join(report['served_versions'])}"
        + (f", shadow {', '.join(report['shadow_versions'])}" if report["shadow_versions"] else "")
    )
    if "outcomes" in report:
        found = report["outcomes"]
        left = ", ".join(f"{k} {v:,}" for k, v in found["excluded"].items() if v) or "none"
        console.print(
            f"outcomes: {found['rows']:,} rows, {found['used']:,} linked; left out: "
            f"{left}; scores elapsed {found['scores_elapsed']:,}, still open "
            f"{found['scores_open']:,}"
        )
    for path in result.files:
        console.print(f"-> {path}")
    if result.fired:
        console.print(f"[red]{len(result.fired)} alert(s) fired[/red]")
        for alert in result.fired[:20]:
            where = alert.get("week") or alert.get("period") or ""
            what = alert.get("feature") or alert.get("code") or ""
            console.print(
                f"[red]  {alert['check']} {alert.get('model', '')} {where} {what}: "
                f"{alert['threshold']}[/red]"
            )
        raise typer.Exit(code=ALERT_STATUS)
    console.print("[green]no alert fired[/green]")
