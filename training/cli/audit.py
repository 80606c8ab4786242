"""`triage audit`: verify the hash chain, export the trail, re-score it.

Each command opens the store the server writes (`TRIAGE_AUDIT_URL`, else the work folder's
SQLite file) with the server's HMAC key (`TRIAGE_HMAC_KEY`, else the work folder's key file),
which the chain's MACs need. Exit status 1 when the chain is broken or a re-score differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from training.cli.app import WORKDIR, WorkdirOption, app
from training.console import make_console, use_bentoml_store

if TYPE_CHECKING:
    from serving.audit import AuditStore

audit_app = typer.Typer(
    help="The audit trail of scored and refused requests.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
BROKEN_STATUS = 1


def _open_store(workdir: Path) -> AuditStore:
    from serving.audit import AuditStore
    from serving.config import ServingConfig

    config = ServingConfig.from_env({**os.environ, "TRIAGE_HOME": str(workdir)})
    return AuditStore(config.audit_url, config.hmac_key.get_secret_value())


def _check_chain(store: AuditStore) -> bool:
    """Print the chain's state (the head MAC, to anchor elsewhere, or the first broken link)."""
    report = store.verify()
    colour = "green" if report.ok else "red"
    make_console().print(f"[{colour}]{report.describe()}[/{colour}]")
    return report.ok


@audit_app.command("verify")
def audit_verify(workdir: WorkdirOption = WORKDIR) -> None:
    """Recompute the hash chain; print the head (seq, MAC) or the first broken link."""
    store = _open_store(workdir)
    try:
        if not _check_chain(store):
            raise typer.Exit(code=BROKEN_STATUS)
    finally:
        store.close()


@audit_app.command("export")
def audit_export(
    out: Annotated[
        Path | None, typer.Option(help="Parquet file to write (default: WORKDIR/audit.parquet)")
    ] = None,
    workdir: WorkdirOption = WORKDIR,
) -> None:
    """Verify the chain, then write the audit trail (pseudonymised) to Parquet."""
    # Also when the chain is broken: the export is the evidence; the exit status says so.
    store = _open_store(workdir)
    try:
        intact = _check_chain(store)
        out = out or workdir / "audit.parquet"
        rows = store.export_parquet(out)
        make_console().print(f"{rows:,} audit rows -> {out}")
    finally:
        store.close()
    if not intact:
        raise typer.Exit(code=BROKEN_STATUS)


@audit_app.command("replay")
def audit_replay(workdir: WorkdirOption = WORKDIR) -> None:
    """Re-score every scored row (and shadow row) with its released predictor version: outputs
    must be identical."""
    use_bentoml_store(workdir)
    import bentoml

    from serving.audit_replay import predictors_by_version, replay_rows
    from serving.release import BUNDLE_NAME, load_release

    served = load_release(Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path))
    store = _open_store(workdir)
    try:
        predictors = predictors_by_version(served)
        report = replay_rows(store.rows(), predictors)
        report += replay_rows(store.shadow_rows(), predictors, shadow=True)
    finally:
        store.close()
    console = make_console()
    skipped = ", ".join(f"{n:,} {why}" for why, n in report.skipped.items()) or "none"
    console.print(f"re-scored {report.checked:,} rows; skipped: {skipped}")
    for miss in report.mismatches[:20]:
        console.print(
            f"[red]seq {miss.seq} request {miss.request_id} item {miss.item}"
            f"{f' shadow {miss.shadow}' if miss.shadow else ''}: {miss.output} "
            f"stored {miss.stored!r}, re-scored {miss.rescored!r}[/red]"
        )
    if not report.ok:
        console.print(f"[red]{len(report.mismatches):,} outputs differ[/red]")
        raise typer.Exit(code=BROKEN_STATUS)
    console.print("[green]every re-scored row is identical[/green]")
