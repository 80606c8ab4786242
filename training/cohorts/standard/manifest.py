"""What an imported cohort's manifest says: the source and its hash, the rules, and how many
records each rule excluded, step by step, so that nothing an importer drops is dropped silently."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from training.provenance import code_version

MANIFEST_FILE = "manifest.json"


@dataclass
class Exclusions:
    """Counts of excluded records by step and coded reason, in the order the rules ran. A rule
    that excluded nothing is still listed (with 0), so the manifest names every rule applied."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: str, reason: str, count: int, rule: str) -> None:
        for row in self.rows:
            if row["step"] == step and row["reason"] == reason:
                row["count"] += int(count)
                return
        self.rows.append({"step": step, "reason": reason, "count": int(count), "rule": rule})

    def as_list(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.rows]

    def total(self, step: str) -> int:
        return sum(row["count"] for row in self.rows if row["step"] == step)

    def count(self, step: str, reason: str) -> int:
        return sum(r["count"] for r in self.rows if r["step"] == step and r["reason"] == reason)


def mask_url(url: str) -> str:
    """A database URL fit for a manifest or a log: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(
    out: Path,
    *,
    kind: str,
    location: str,
    source_sha256: str,
    rules: dict[str, Any],
    exclusions: Exclusions,
    counts: dict[str, Any],
    time_zone: str,
) -> dict[str, Any]:
    """Write `out/manifest.json` (the cohort files' own SHA-256 included) and return it."""
    files = {path.name: file_sha256(path) for path in sorted(out.glob("*.parquet"))}
    manifest = {
        "source": {"kind": kind, "location": location, "sha256": source_sha256},
        "time_zone": time_zone,
        "rules": rules,
        "counts": counts,
        "exclusions": exclusions.as_list(),
        "files": files,
        "code_version": code_version(),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
