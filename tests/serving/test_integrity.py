"""Model integrity: tampered artifacts refuse to start; no release keeps /readyz failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from models.predictor import MODEL_FILES, ArtifactError
from serving.release import BUNDLE_NAME, load_release
from serving.server import Server, free_port
from tests.serving.conftest import LOG_DIR, Released


def _release_folder() -> Path:
    import bentoml

    return Path(bentoml.models.get(f"{BUNDLE_NAME}:latest").path)


def _tampered_store(tmp_path: Path, file: str) -> Path:
    """A copy of the test BentoML store with one byte of one released file changed (`model`:
    whichever model file lower_gi's family serves, booster.txt or spline.json)."""
    store = tmp_path / "bentoml"
    shutil.copytree(os.environ["BENTOML_HOME"], store)
    folder = store / _release_folder().relative_to(os.environ["BENTOML_HOME"])
    if file == "model":
        (file,) = [f for f in MODEL_FILES.values() if (folder / "lower_gi" / f).exists()]
    target = folder / "lower_gi" / file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize("file", ["model", "predictor.json"])
def test_a_tampered_artifact_is_refused(released: Released, tmp_path: Path, file: str) -> None:
    folder = _tampered_store(tmp_path, file)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_release(folder)


def test_serve_refuses_to_start_on_a_tampered_release(released: Released, tmp_path: Path) -> None:
    _tampered_store(tmp_path, "model")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "TRIAGE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "serve", "--port", str(free_port()),
         "--workdir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refusing to serve" in done.stdout and "checksum mismatch" in done.stdout


def test_no_release_keeps_readyz_failing_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty"), "TRIAGE_HOME": str(tmp_path)}
    server = Server(env, log=LOG_DIR / "no-release-server.log")
    try:
        server.start(probe="/livez")  # the server is up without a release ...
        assert httpx.get(f"{server.url}/readyz").status_code == 503, "... but never ready"
        models = httpx.get(f"{server.url}/v1/models")
        assert models.status_code == 503
        assert "no champion models released" in models.json()["error"]["message"]
    finally:
        server.stop()
