"""What every front door (the `triage` CLI, the main job) sets up first: no usage telemetry and
no download progress bars, the work folder, a console that keeps tables readable, and BentoML's
model store inside the work folder."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

TELEMETRY_OFF = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}
# MLflow draws a "Downloading artifacts" bar for every artifact it fetches: noise in the output
# of compare, promote, replay and report.
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
HOME_ENV = "TRIAGE_HOME"
PROJECT_NAME = "cancer-triage"


def no_telemetry() -> None:
    """Switch BentoML's and MLflow's usage reports and MLflow's progress bars off (unless the
    caller chose otherwise)."""
    for name, value in (TELEMETRY_OFF | QUIET).items():
        os.environ.setdefault(name, value)


def project_workdir() -> Path:
    """`var/` of the project this code runs from (the folder with its pyproject.toml), never
    of the current directory; for an installed copy with no project around it, a per-user
    folder (`$XDG_DATA_HOME/cancer-triage`, else `~/.local/share/cancer-triage`)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{PROJECT_NAME}"' in pyproject.read_text(errors="replace"):
        return root / "var"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / PROJECT_NAME


def default_workdir() -> Path:
    """The work folder when none is given: `$TRIAGE_HOME`, else the project's `var/`."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else project_workdir()


def make_console() -> Console:
    """A console as wide as the terminal, or 200 columns when piped (tables stay readable)."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


def use_bentoml_store(workdir: Path) -> Path:
    """Point BentoML's model store at the work folder (before bentoml is imported)."""
    home = Path(os.environ.setdefault("BENTOML_HOME", str((workdir / "bentoml").resolve())))
    no_telemetry()
    return home
