"""The `triage` application object and what its commands share: the work-folder option, the
MLflow stores it names, and how a confidence interval prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training.console import no_telemetry

app = typer.Typer(
    help="Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay."""
    no_telemetry()  # no usage reports leave the machine


WorkdirOption = Annotated[
    Path,
    typer.Option(
        envvar="TRIAGE_HOME", help="work folder: MLflow store, artifacts, reports (git-ignored)"
    ),
]


def _tracking(workdir: Path):  # type: ignore[no-untyped-def]
    from training.registry.store import Tracking

    return Tracking(workdir)


def _fmt_ci(block: dict[str, Any] | None) -> str:
    if not block or block.get("estimate") is None:
        return "-"
    return f"{block['estimate']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"
