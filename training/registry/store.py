"""MLflow tracking and registry: where runs, model versions and aliases live.

Which stores: an explicit URI (the `--tracking-uri` option), else the standard MLflow variables
`MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`, else an embedded SQLite store `mlflow.db` in the
work folder with its artifacts in `mlartifacts/` beside it. A team can thus share one
`mlflow server` over HTTP: experiments are then created without an artifact location, so the
server's own artifact root applies (e.g. `mlflow-artifacts:/`, proxied by the server), and every
download goes through the server. Registered model names are the spec names; aliases are
`challenger` (set by training) and `champion` (set by promotion, behind the gates).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.predictor import META_FILE, TriagePredictor
from models.spec import ModelSpec, load_spec

T = TypeVar("T")
CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # the logged pyfunc model's name within a run
PREDICTOR_SUBDIR = "artifacts/predictor"  # where the predictor folder sits inside the model
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
# Stores reached through a server, which owns where artifacts go (never a local path of ours).
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


class RegistryError(LookupError):
    """A model name, version or alias that the registry does not hold."""


@dataclass(frozen=True)
class Tracking:
    """The MLflow tracking and registry stores, and the work folder they default to.

    `uri` and `registry_uri` left empty are resolved at construction: the environment's
    `MLFLOW_TRACKING_URI` (else `sqlite:///<workdir>/mlflow.db`), and `MLFLOW_REGISTRY_URI`
    (else the tracking URI), as MLflow itself resolves them."""

    workdir: Path
    uri: str = ""
    registry_uri: str = ""

    def __post_init__(self) -> None:
        uri = self.uri or os.environ.get(TRACKING_URI_ENV) or self.default_uri
        object.__setattr__(self, "uri", uri)
        registry = self.registry_uri or os.environ.get(REGISTRY_URI_ENV) or uri
        object.__setattr__(self, "registry_uri", registry)

    @property
    def default_uri(self) -> str:
        """The embedded store: SQLite in the work folder."""
        return f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"

    @property
    def is_server(self) -> bool:
        """Whether runs are logged through a tracking server (which places the artifacts)."""
        return urlparse(self.uri).scheme.lower() in SERVER_SCHEMES

    @property
    def artifact_root(self) -> str | None:
        """Where new experiments keep their artifacts: None through a server (its own default
        root applies); beside a SQLite file (`mlartifacts/`); else in the work folder."""
        if self.is_server:
            return None
        folder = _sqlite_folder(self.uri) or self.workdir.resolve()
        return (folder / "mlartifacts").as_uri()

    @cached_property
    def client(self) -> MlflowClient:
        for uri in (self.uri, self.registry_uri):
            folder = _sqlite_folder(uri)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            _check_reachable(uri)
        self.activate()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.registry_uri)

    def activate(self) -> None:
        """Make these the stores of MLflow's fluent API (`start_run`, `register_model`), in this
        process only: MLflow's setters also export `MLFLOW_TRACKING_URI`/`MLFLOW_REGISTRY_URI`,
        which the next `Tracking` would then take for the user's choice, so they are restored."""
        from serving.release import use_mlflow_stores

        use_mlflow_stores(self.uri, self.registry_uri)

    def experiment_id(self, spec_name: str) -> str:
        """The experiment of a spec (one per spec), created on first use."""
        name = f"triage/{spec_name}"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        root = self.artifact_root
        if root is None:
            return str(self.client.create_experiment(name))
        return str(self.client.create_experiment(name, artifact_location=f"{root}/{spec_name}"))

    def describe(self) -> str:
        """The tracking store for a console line (a database URI without its password)."""
        parsed = urlparse(self.uri)
        if parsed.password:
            return self.uri.replace(f":{parsed.password}@", ":***@")
        return self.uri


def _check_reachable(uri: str) -> None:
    """Fail at once, saying so, when a tracking server does not answer (MLflow's own client
    would retry with back-off for minutes before its error)."""
    if urlparse(uri).scheme.lower() not in ("http", "https"):
        return
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=10)
    except httpx.TransportError as error:
        raise RegistryError(f"the MLflow tracking server {uri} does not answer: {error}") from None


def _sqlite_folder(uri: str) -> Path | None:
    """The folder of a `sqlite:///` file store (None for any other store or in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri.removeprefix("sqlite:///").split("?")[0])
    if not path or path == ":memory:":
        return None
    return Path(path).resolve().parent


def registered_names(client: MlflowClient) -> list[str]:
    """Every registered model name, sorted."""
    return sorted(model.name for model in client.search_registered_models())


def unregistered(client: MlflowClient, name: str) -> RegistryError:
    """The error for a name that is not registered, listing what is."""
    names = registered_names(client)
    return RegistryError(
        f"no registered model {name!r}; registered: {', '.join(names) if names else 'none'}"
    )


def resolve_version(client: MlflowClient, name: str, ref: str | None = None) -> ModelVersion:
    """A registered version from an alias (`champion`) or a version number (`3`); `None` means
    the champion, else the latest version."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise unregistered(client, name) from None
    if ref is None:
        ref = CHAMPION if CHAMPION in model.aliases else _latest(client, name)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as error:
        aliases = ", ".join(sorted(model.aliases)) or "none"
        raise RegistryError(
            f"model {name!r} has no version or alias {ref!r} (aliases: {aliases})"
        ) from error


def _latest(client: MlflowClient, name: str) -> str:
    versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    if not versions:
        raise RegistryError(f"model {name!r} has no registered version")
    return str(max(versions))


def parse_model_ref(ref: str) -> tuple[str, str]:
    """`NAME@ALIAS` or `NAME/VERSION` -> (name, alias or version); bare NAME means champion."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, alias
    if "/" in ref:
        name, _, version = ref.partition("/")
        return name, version
    return ref, CHAMPION


def _uris(client: MlflowClient) -> dict[str, str | None]:
    """The client's stores, for downloads that must go where the client goes (a server)."""
    return {
        "tracking_uri": client.tracking_uri,
        "registry_uri": getattr(client, "_registry_uri", None) or client.tracking_uri,
    }


def download_model(client: MlflowClient, version: ModelVersion, dest: Path) -> Path:
    """Download a registered version's logged model folder; returns its local path."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{version.name}/{version.version}",
        dst_path=str(dest),
        **_uris(client),
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
            run_id=run_id, artifact_path=path, dst_path=tmp, **_uris(client)
        )
        return read(Path(local))


def run_artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A JSON artifact logged with `mlflow.log_dict`."""
    return read_run_artifact(client, run_id, path, lambda p: json.loads(p.read_text()))


def registered_spec(tracking: Tracking, name: str, ref: str | None = None) -> ModelSpec:
    """The spec logged with a registered version (alias or number; `None`: the champion, else
    the latest version): the one inside its predictor folder, whatever file it came from."""
    import mlflow

    client = tracking.client
    version = resolve_version(client, name, ref)
    with tempfile.TemporaryDirectory(prefix="triage-spec-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}/{PREDICTOR_SUBDIR}/{META_FILE}",
            dst_path=tmp,
            **_uris(client),
        )
        meta = json.loads(Path(local).read_text())
    return ModelSpec.model_validate(meta["spec"])


def is_spec_file(model: str) -> bool:
    """Whether a `--model` value names a spec file rather than a registered model."""
    return Path(model).suffix in {".yaml", ".yml"} or Path(model).exists()


def model_spec(tracking: Tracking, model: str, ref: str | None = None) -> ModelSpec:
    """The spec behind `--model`: a spec file as given (its `name` is the registered model),
    else the spec logged with the registered version `ref` of that name."""
    if is_spec_file(model):
        return load_spec(model)
    return registered_spec(tracking, model, ref)
