"""The `triage` application object and what its commands share: the work-folder option, the
MLflow stores it names, and how a confidence interval prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.errors import UserErrorGroup
from training.console import no_telemetry, project_workdir
from training.evaluation.formatting import is_finite_number

app = typer.Typer(
    cls=UserErrorGroup,
    help="Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of a user error (TRIAGE_DEBUG=1)")
    ] = False,
) -> None:
    """Cancer early-diagnosis triage models: catalogue, cohorts, training, serving, replay."""
    no_telemetry()  # no usage reports leave the machine
    ctx.meta["triage.debug"] = debug


WorkdirOption = Annotated[
    Path,
    typer.Option(
        envvar="TRIAGE_HOME",
        help="work folder: reports, BentoML store, and the embedded MLflow store (git-ignored)",
    ),
]
# The default work folder: the project's own var/ (never one in the current directory).
WORKDIR = project_workdir()
TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking store or server, e.g. http://mlflow:5000 (default: "
        "$MLFLOW_TRACKING_URI, else SQLite in the work folder; the registry: "
        "$MLFLOW_REGISTRY_URI, else the same)",
    ),
]


def _tracking(workdir: Path, tracking_uri: str | None = None):  # type: ignore[no-untyped-def]
    from training.registry.store import Tracking

    return Tracking(workdir, uri=tracking_uri or "")


def _fmt_ci(block: dict[str, Any] | None) -> str:
    """`0.754 [0.738, 0.770]`; the estimate alone without finite bounds; `-` without one."""
    block = block or {}
    estimate, low, high = (block.get(k) for k in ("estimate", "low", "high"))
    if not is_finite_number(estimate):
        return "-"
    if not (is_finite_number(low) and is_finite_number(high)):
        return f"{estimate:.3f}"
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"
