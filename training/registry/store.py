"""MLflow tracking and registry: where runs, model versions and aliases live.

Everything sits under one work folder (default `var/`): a SQLite store (`mlflow.db`) and a local
artifact folder (`mlartifacts/`). Registered model names are the spec names; aliases are
`challenger` (set by training) and `champion` (set by promotion, behind the gates).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.predictor import TriagePredictor

T = TypeVar("T")
CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # the logged pyfunc model's name within a run
PREDICTOR_SUBDIR = "artifacts/predictor"  # where the predictor folder sits inside the model


class RegistryError(LookupError):
    """A model name, version or alias that the registry does not hold."""


@dataclass(frozen=True)
class Tracking:
    """The MLflow stores of one work folder."""

    workdir: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return (self.workdir / "mlartifacts").resolve().as_uri()

    @cached_property
    def client(self) -> MlflowClient:
        import mlflow

        self.workdir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, spec_name: str) -> str:
        """The experiment of a spec (one per spec), created on first use."""
        name = f"triage/{spec_name}"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(
            self.client.create_experiment(
                name, artifact_location=f"{self.artifact_root}/{spec_name}"
            )
        )


def resolve_version(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """A registered version from an alias (`champion`) or a version number (`3`)."""
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as error:
        raise RegistryError(f"model {name!r} has no version or alias {ref!r}") from error


def parse_model_ref(ref: str) -> tuple[str, str]:
    """`NAME@ALIAS` or `NAME/VERSION` -> (name, alias or version); bare NAME means champion."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, alias
    if "/" in ref:
        name, _, version = ref.partition("/")
        return name, version
    return ref, CHAMPION


def download_model(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """Download a registered version's logged model folder; returns its local path."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{version.name}/{version.version}",
        dst_path=str(dest),
        tracking_uri=client._tracking_client.tracking_uri,
    )
    return Path(local)


def load_predictor(
    client: MlflowClient, name: str, ref: str, dest: Path, *, num_threads: int = 1
) -> tuple[TriagePredictor, ModelVersion]:
    """The predictor of a registered version (alias or number), verified on load."""
    version = resolve_version(client, name, ref)
    folder = download_model(client, version, dest / f"{name}-v{version.version}")
    return TriagePredictor.load(folder / PREDICTOR_SUBDIR, num_threads=num_threads), version


def read_run_artifact(client: MlflowClient, run_id: str, path: str, read: Callable[[Path], T]) -> T:
    """Read one run artifact through a temporary download that is removed afterwards."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="triage-artifact-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=tmp,
            tracking_uri=client._tracking_client.tracking_uri,
        )  # fmt: skip
        return read(Path(local))


def run_artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A JSON artifact logged with `mlflow.log_dict`."""
    return read_run_artifact(client, run_id, path, lambda p: json.loads(p.read_text()))
