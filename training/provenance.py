"""Provenance: which code and which data produced a run (logged with every run and manifest)."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path


def code_version() -> str:
    """Package version plus the git commit (`.dirty` when tracked files have changes), if known."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("cancer-triage")
    except PackageNotFoundError:
        package = "0+unknown"
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+g{commit}{'.dirty' if dirty else ''}"


def _git(*args: str) -> str:
    """Output of a git command run in this package's folder."""
    done = subprocess.run(
        ["git", *args],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=5,
    )
    return done.stdout.strip()


def files_sha256(paths: Iterable[Path]) -> str:
    """One SHA-256 over the bytes of the given files (a folder counts as its files, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        parts = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        for part in parts:
            digest.update(part.name.encode())
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
