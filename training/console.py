"""What every front door (the `triage` CLI, the main job) sets up first: no usage telemetry, a
console that keeps tables readable, and BentoML's model store inside the work folder."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

TELEMETRY_OFF = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def no_telemetry() -> None:
    """Switch BentoML's and MLflow's usage reports off (unless the caller chose otherwise)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


def make_console() -> Console:
    """A console as wide as the terminal, or 200 columns when piped (tables stay readable)."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


def use_bentoml_store(workdir: Path) -> Path:
    """Point BentoML's model store at the work folder (before bentoml is imported)."""
    home = Path(os.environ.setdefault("BENTOML_HOME", str((workdir / "bentoml").resolve())))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return home
