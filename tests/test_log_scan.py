"""The end-of-run log scan finds a planted secret (so a clean scan means something)."""

from pathlib import Path

from tests.conftest import SECRETS, leaked_secrets


def test_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    (tmp_path / "clean.log").write_text("INFO scored request 1 (pseudonym 3f2a...)\n")
    assert leaked_secrets(tmp_path) == []
    leaky = f"INFO started\nDEBUG headers: authorization=Bearer {SECRETS[0]}\n"
    (tmp_path / "leaky.log").write_text(leaky)
    assert leaked_secrets(tmp_path) == [f"leaky.log:2: {SECRETS[0]}"], "the file and its line"
