"""Releases: champion predictors copied from the MLflow registry into the BentoML model store.

`release_champions` imports each champion, and any extra version named for pinning, with
`bentoml.mlflow.import_model` (provenance kept in labels), then writes one `triage-champions`
model holding every predictor folder and a `release.json` with versions, run ids, the aliases as
resolved at release time, and SHA-256 digests of each file. The service loads that one model (so
`bentoml build` packs every released version) and verifies every digest before serving.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from models.predictor import META_FILE, MODEL_FILES, ArtifactError, TriagePredictor, file_sha256

URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
BUNDLE_NAME = "triage-champions"
RELEASE_FILE = "release.json"
PREDICTOR_IN_MLFLOW_MODEL = Path("artifacts") / "predictor"
CHAMPION = "champion"
PINNED_DIR = "pinned"  # pinned (non-champion) versions: PINNED_DIR/NAME/VERSION in the bundle


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


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`NAME/VERSION`, `NAME@ALIAS` or `NAME` -> (name, version or None, alias or None), the
    spelling of MLflow's `models:/` URIs (a bare NAME means its champion)."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, None, alias
    if "/" in ref:
        name, _, version = ref.partition("/")
        return name, version, None
    return ref, None, None


class Release(dict[str, Served]):
    """A loaded release: the champions by name (a dict, as releases always were), plus every
    released version by name and version (champions included) and the aliases as they stood
    at release time, so a request can pin `NAME/VERSION` or `NAME@ALIAS`."""

    def __init__(
        self,
        champions: Mapping[str, Served],
        versions: Mapping[str, Mapping[str, Served]],
        aliases: Mapping[str, Mapping[str, str]],
        released_at: str | None = None,
    ) -> None:
        super().__init__(champions)
        self.versions = {name: dict(found) for name, found in versions.items()}
        self.aliases = {name: dict(found) for name, found in aliases.items()}
        self.released_at = released_at

    @property
    def champions(self) -> dict[str, Served]:
        return dict(self)

    def find(
        self, name: str, version: str | None = None, alias: str | None = None
    ) -> Served | None:
        """The champion of `name`, or its released `version`, or the version `alias` named at
        release time; None when that was not released."""
        if version is not None and alias is not None:
            raise ValueError("pin a version or an alias, not both")
        if alias is not None:
            version = self.aliases.get(name, {}).get(alias)
            if version is None:
                return None
        if version is None:
            return self.get(name)
        return self.versions.get(name, {}).get(version)

    def resolve(self, ref: str) -> Served | None:
        """`find` for a reference spelt `NAME`, `NAME/VERSION` or `NAME@ALIAS`."""
        return self.find(*parse_ref(ref))


def release_champions(
    tracking_uri: str,
    names: list[str] | None = None,
    *,
    registry_uri: str | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Copy every registered model that has a `champion` alias into the BentoML store, and the
    `extra` versions named `NAME/VERSION` or `NAME@ALIAS` (pinned: served only when a request
    names them; an alias is resolved now, and recorded).

    The stores may be a local SQLite file or a tracking server (http): the model files are
    downloaded through the registry either way (`registry_uri` defaults to `tracking_uri`)."""
    from mlflow.tracking import MlflowClient

    registry_uri = registry_uri or tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    use_mlflow_stores(tracking_uri, registry_uri)  # bentoml.mlflow downloads through them
    champions = _champions(client, names)
    if not champions:
        raise LookupError("no registered model has a champion: promote one first")
    # MLflow gives version numbers as int or str depending on the call: compared as text
    aliases = {name: {CHAMPION: str(version.version)} for name, version in champions.items()}
    pinned: dict[str, dict[str, Any]] = {}
    for ref in extra:
        name, version, alias = _resolve(client, ref)
        number = str(version.version)
        if alias is not None:
            aliases.setdefault(name, {})[alias] = number
        if name not in champions or aliases[name][CHAMPION] != number:
            pinned.setdefault(name, {})[number] = version
    imported = {name: _import(version, CHAMPION) for name, version in champions.items()}
    for name, versions in pinned.items():
        for number, version in versions.items():
            imported[f"{PINNED_DIR}/{name}/{number}"] = _import(version, "pinned")
    return _bundle(imported, aliases)


def _champions(client: Any, names: list[str] | None) -> dict[str, Any]:
    """Model name -> its champion's ModelVersion (names without a champion are skipped)."""
    from mlflow.exceptions import MlflowException

    found = {}
    for model in client.search_registered_models():
        if names is not None and model.name not in names:
            continue
        try:
            found[model.name] = client.get_model_version_by_alias(model.name, CHAMPION)
        except MlflowException:
            continue
    return found


def _resolve(client: Any, ref: str) -> tuple[str, Any, str | None]:
    """(name, ModelVersion, alias or None) for `NAME/VERSION` or `NAME@ALIAS`."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_ref(ref)
    if version is None and alias is None:
        raise ValueError(f"{ref!r}: name a version (NAME/3) or an alias (NAME@challenger)")
    try:
        if version is not None:
            return name, client.get_model_version(name, version), None
        return name, client.get_model_version_by_alias(name, alias), alias
    except MlflowException:
        raise LookupError(f"{ref!r}: the registry holds no such version or alias") from None


class Imported(NamedTuple):
    """A registered version imported into the BentoML store, to be copied into the bundle."""

    name: str
    entry: dict[str, Any]  # its release.json entry (digests added when copied)
    source: Path  # its predictor folder in the BentoML store


def _import(version: Any, role: str) -> Imported:
    """Import one registered version by number (an alias could move meanwhile) into the
    BentoML store."""
    import bentoml

    uri = f"models:/{version.name}/{version.version}"
    bento_model = bentoml.mlflow.import_model(
        f"triage-{version.name.replace('_', '-')}",
        uri,
        labels={"spec": version.name, "mlflow_version": str(version.version), "alias": role},
        metadata={"run_id": version.run_id, "source": version.source},
    )
    stored = bentoml.models.get(bento_model.tag)  # the saved copy, not the staging folder
    entry = {
        "version": str(version.version),
        "run_id": version.run_id,
        "bentoml_tag": str(bento_model.tag),
        "mlflow_uri": uri,
    }
    predictor = Path(stored.path) / "mlflow_model" / PREDICTOR_IN_MLFLOW_MODEL
    return Imported(version.name, entry, predictor)


def _bundle(
    imported: dict[str, Imported],
    aliases: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """Write the `triage-champions` model: each predictor in its folder (champions under their
    name, pinned versions under `pinned/NAME/VERSION`), with digests in `release.json`."""
    import bentoml

    champions: dict[str, Any] = {}
    pinned: dict[str, dict[str, Any]] = {}
    for path, (name, entry, _) in imported.items():
        entry["path"] = path
        if path == name:
            champions[name] = entry
        else:
            pinned.setdefault(name, {})[entry["version"]] = entry
    labels = {"models": "-".join(sorted(champions))}
    with bentoml.models.create(
        BUNDLE_NAME, labels=labels, metadata={"models": champions, "pinned": pinned}
    ) as bundle:
        for path, (_, entry, source) in imported.items():
            target = Path(bundle.path) / path
            shutil.copytree(source, target)
            files = [f for f in (*MODEL_FILES.values(), META_FILE) if (target / f).is_file()]
            entry["sha256"] = {f: file_sha256(target / f) for f in files}
        release = {
            "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "models": champions,
            "pinned": pinned,
            "aliases": aliases,
        }
        (Path(bundle.path) / RELEASE_FILE).write_text(json.dumps(release, indent=1))
    return {"tag": str(bundle.tag), **release}


def load_release(folder: Path, *, num_threads: int = 1) -> Release:
    """Every predictor of a release folder (champions and pinned versions), each verified
    against the release digests before it is loaded."""
    manifest_path = folder / RELEASE_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing; the release is incomplete")
    release = json.loads(manifest_path.read_text())

    def load(name: str, entry: dict[str, Any]) -> Served:
        where = _inside(folder, entry.get("path", name))
        for file, expected in entry["sha256"].items():
            if file_sha256(where / file) != expected:
                raise ArtifactError(
                    f"{where / file}: checksum mismatch with the release; "
                    "the artifact was altered or corrupted - refusing to serve it"
                )
        predictor = TriagePredictor.load(where, num_threads=num_threads)
        return Served(name, entry["version"], entry.get("run_id"), predictor)

    champions = {name: load(name, entry) for name, entry in release["models"].items()}
    versions = {name: {served.version: served} for name, served in champions.items()}
    for name, entries in (release.get("pinned") or {}).items():
        for number, entry in entries.items():
            versions.setdefault(name, {})[number] = load(name, entry)
    aliases = {name: {CHAMPION: served.version} for name, served in champions.items()}
    for name, named in (release.get("aliases") or {}).items():
        aliases.setdefault(name, {}).update(named)
    return Release(champions, versions, aliases, release.get("released_at"))


def _inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing a manifest path that leads out of the release."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ArtifactError(f"{relative}: outside the release folder; refusing to load it")
    return path


def verify_store_release() -> Release:
    """Load and verify the latest release in the BentoML store (the serve pre-flight).

    Raises LookupError when nothing is released and ArtifactError when an artifact was altered.
    """
    import bentoml

    try:
        folder = Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path)
    except bentoml.exceptions.NotFound as error:
        raise LookupError(f"no champion models released: {error}") from None
    return load_release(folder)
