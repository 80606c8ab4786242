"""Releases: champion predictors copied from the MLflow registry into the BentoML model store.

`release_champions` imports each champion with `bentoml.mlflow.import_model` (provenance kept in
labels), then writes one `triage-champions` model holding every champion's predictor folder and a
`release.json` with versions, run ids and SHA-256 digests of each file. The service loads that one
model (so `bentoml build` packs every champion) and verifies every digest before serving.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.predictor import META_FILE, MODEL_FILES, ArtifactError, TriagePredictor, file_sha256

URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
BUNDLE_NAME = "triage-champions"
RELEASE_FILE = "release.json"
PREDICTOR_IN_MLFLOW_MODEL = Path("artifacts") / "predictor"


def use_mlflow_stores(tracking_uri: str, registry_uri: str) -> None:
    """Make these MLflow's default stores in this process. MLflow's setters also export them as
    `MLFLOW_TRACKING_URI`/`MLFLOW_REGISTRY_URI`, which a later reader would take for the
    user's own choice: the variables are restored as they were."""
    import mlflow

    saved = {name: os.environ.get(name) for name in URI_VARIABLES}
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Served:
    name: str
    version: str
    run_id: str | None
    predictor: TriagePredictor


def release_champions(
    tracking_uri: str, names: list[str] | None = None, *, registry_uri: str | None = None
) -> dict[str, Any]:
    """Copy every registered model that has a `champion` alias into the BentoML store.

    The stores may be a local SQLite file or a tracking server (http): the model files are
    downloaded through the registry either way (`registry_uri` defaults to `tracking_uri`)."""
    import bentoml
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    registry_uri = registry_uri or tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    use_mlflow_stores(tracking_uri, registry_uri)  # bentoml.mlflow downloads through them
    entries: dict[str, Any] = {}
    imported: dict[str, Path] = {}
    for model in client.search_registered_models():
        if names is not None and model.name not in names:
            continue
        try:
            version = client.get_model_version_by_alias(model.name, "champion")
        except MlflowException:
            continue
        bento_model = bentoml.mlflow.import_model(
            f"triage-{model.name.replace('_', '-')}",
            f"models:/{model.name}@champion",
            labels={
                "spec": model.name,
                "mlflow_version": str(version.version),
                "alias": "champion",
            },
            metadata={"run_id": version.run_id, "source": version.source},
        )
        stored = bentoml.models.get(bento_model.tag)  # the saved copy, not the staging folder
        imported[model.name] = Path(stored.path) / "mlflow_model" / PREDICTOR_IN_MLFLOW_MODEL
        entries[model.name] = {
            "version": str(version.version),
            "run_id": version.run_id,
            "bentoml_tag": str(bento_model.tag),
            "mlflow_uri": f"models:/{model.name}/{version.version}",
        }
    if not entries:
        raise LookupError("no registered model has a champion: promote one first")
    with bentoml.models.create(
        BUNDLE_NAME, labels={"models": "-".join(sorted(entries))}, metadata={"models": entries}
    ) as bundle:
        for name, source in imported.items():
            target = Path(bundle.path) / name
            shutil.copytree(source, target)
            files = [f for f in (*MODEL_FILES.values(), META_FILE) if (target / f).is_file()]
            entries[name]["sha256"] = {f: file_sha256(target / f) for f in files}
        release = {
            "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "models": entries,
        }
        (Path(bundle.path) / RELEASE_FILE).write_text(json.dumps(release, indent=1))
    return {"tag": str(bundle.tag), **release}


def load_release(folder: Path, *, num_threads: int = 1) -> dict[str, Served]:
    """Every predictor of a release folder, each verified against the release digests."""
    manifest_path = folder / RELEASE_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing; the release is incomplete")
    release = json.loads(manifest_path.read_text())
    served = {}
    for name, entry in release["models"].items():
        for file, expected in entry["sha256"].items():
            if file_sha256(folder / name / file) != expected:
                raise ArtifactError(
                    f"{folder / name / file}: checksum mismatch with the release; "
                    "the artifact was altered or corrupted - refusing to serve it"
                )
        predictor = TriagePredictor.load(folder / name, num_threads=num_threads)
        served[name] = Served(name, entry["version"], entry.get("run_id"), predictor)
    return served


def verify_store_release() -> dict[str, Served]:
    """Load and verify the latest release in the BentoML store (the serve pre-flight).

    Raises LookupError when nothing is released and ArtifactError when an artifact was altered.
    """
    import bentoml

    try:
        folder = Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path)
    except bentoml.exceptions.NotFound as error:
        raise LookupError(f"no champion models released: {error}") from None
    return load_release(folder)
