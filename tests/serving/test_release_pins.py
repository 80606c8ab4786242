"""Releases carry pinned versions: named non-champion versions are packed, verified like the
champions, and found by version or by the alias they had at release time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models.predictor import MODEL_FILES, ArtifactError
from serving.release import BUNDLE_NAME, RELEASE_FILE, load_release
from tests.serving.conftest import Released
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import Tracking

PINS = ["any_cancer/2", "any_cancer@challenger", "any_cancer/1", "lower_gi@champion"]
RELEASE = """
import json, sys
from serving.release import release_champions
uri, pins = sys.argv[1], json.loads(sys.argv[2])
try:
    release_champions(uri, extra=["any_cancer/9"])
except LookupError as error:
    print("refused:", error)
print(json.dumps(release_champions(uri, extra=pins)))
"""


@pytest.fixture(scope="module")
def pinned(released: Released, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry of its own (the session's stays as it is): any_cancer v1 champion, v2, v3
    challenger; lower_gi v1 champion; released with PINS into a BentoML store of its own."""
    root = tmp_path_factory.mktemp("pins")
    tracking = Tracking(root / "var")
    runs = [log_training(released.results["any_cancer"], tracking) for _ in range(3)]
    promote(tracking, released.results["any_cancer"].spec, "1", override_reason="test")
    gi = log_training(released.results["lower_gi"], tracking)
    promote(tracking, released.results["lower_gi"].spec, "1", override_reason="test")
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    done = subprocess.run(
        [sys.executable, "-c", RELEASE, tracking.uri, json.dumps(PINS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    refusal, manifest = next(line for line in lines if line.startswith("refused:")), lines[-1]
    (folder,) = (root / "bentoml" / "models" / BUNDLE_NAME).glob(f"*/{RELEASE_FILE}")
    # the registry moves on after the release: the release keeps what the alias meant then
    tracking.client.set_registered_model_alias("any_cancer", "challenger", "2")
    return {
        "folder": folder.parent,
        "manifest": json.loads(manifest),
        "refusal": refusal,
        "runs": {str(run.version): run.run_id for run in runs},
        "lower_gi_run": gi.run_id,
    }


def test_pinned_versions_are_found_by_version_and_release_time_alias(
    pinned: dict[str, Any],
) -> None:
    release, runs = load_release(pinned["folder"]), pinned["runs"]
    assert {n: (s.version, s.run_id) for n, s in release.champions.items()} == {
        "any_cancer": ("1", runs["1"]),
        "lower_gi": ("1", pinned["lower_gi_run"]),
    }, "the champions, as before (and the release is still a dict of them)"
    assert dict(release) == release.champions
    found = {
        ref: (s.version, s.run_id) if (s := release.resolve(ref)) is not None else None
        for ref in ("any_cancer", "any_cancer/1", "any_cancer/2", "any_cancer/3",
                    "any_cancer@challenger", "any_cancer@champion", "lower_gi@champion",
                    "any_cancer/4", "any_cancer@staging", "lower_gi/2", "unknown")
    }  # fmt: skip
    assert found == {
        "any_cancer": ("1", runs["1"]),
        "any_cancer/1": ("1", runs["1"]),
        "any_cancer/2": ("2", runs["2"]),
        "any_cancer/3": ("3", runs["3"]),  # released as @challenger, found by number too
        "any_cancer@challenger": ("3", runs["3"]),  # v3 at release time (v2 in the registry now)
        "any_cancer@champion": ("1", runs["1"]),
        "lower_gi@champion": ("1", pinned["lower_gi_run"]),
        "any_cancer/4": None,
        "any_cancer@staging": None,
        "lower_gi/2": None,
        "unknown": None,
    }
    assert release.find("any_cancer", version="1") is release["any_cancer"], "loaded once"
    with pytest.raises(ValueError, match="not both"):
        release.find("any_cancer", version="2", alias="challenger")


def test_release_manifest_packs_each_pinned_version_once_with_digests(
    pinned: dict[str, Any],
) -> None:
    manifest, folder = pinned["manifest"], pinned["folder"]
    assert sorted(manifest["pinned"]["any_cancer"]) == ["2", "3"], "v1 is the champion's copy"
    assert "lower_gi" not in manifest["pinned"], "pinning the champion copies nothing"
    assert manifest["aliases"] == {
        "any_cancer": {"champion": "1", "challenger": "3"},
        "lower_gi": {"champion": "1"},
    }
    for entry in manifest["pinned"]["any_cancer"].values():
        assert entry["path"] == f"pinned/any_cancer/{entry['version']}"
        assert entry["mlflow_uri"] == f"models:/any_cancer/{entry['version']}"
        assert set(entry["sha256"]) >= {"predictor.json"} and (folder / entry["path"]).is_dir()
    assert "refused:" in pinned["refusal"] and "any_cancer/9" in pinned["refusal"]


def test_a_tampered_pinned_version_is_refused(pinned: dict, tmp_path: Path) -> None:
    copy = tmp_path / "release"
    shutil.copytree(pinned["folder"], copy)
    target = next(
        copy / "pinned" / "any_cancer" / "2" / f
        for f in MODEL_FILES.values()
        if (copy / "pinned" / "any_cancer" / "2" / f).exists()
    )
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_release(copy)


def test_a_release_written_before_pins_still_loads(pinned: dict, tmp_path: Path) -> None:
    copy = tmp_path / "release"
    shutil.copytree(pinned["folder"], copy, ignore=shutil.ignore_patterns("pinned"))
    manifest = json.loads((copy / RELEASE_FILE).read_text())
    old = {"released_at": manifest["released_at"], "models": manifest["models"]}
    for entry in old["models"].values():
        entry.pop("path")
    (copy / RELEASE_FILE).write_text(json.dumps(old))
    release = load_release(copy)
    assert sorted(release) == ["any_cancer", "lower_gi"]
    assert release.resolve("any_cancer@champion") is release["any_cancer"]
    assert release.resolve("any_cancer/2") is None
