"""Which files a FHIR Bulk Data export holds, and their resources read line by line.

The files are those the Bulk `manifest.json` lists (its `output` urls, found by file name in the
folder), else every `*.ndjson` in the folder, each typed by its first resource. The Bulk Data spec
puts one resource type in a file: a line of another type is counted `other_resource_type` and
skipped, a line that is not a JSON object `invalid_json` (its file and line number kept in a
bounded sample), never a crash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from training.cohorts.standard import SourceError
from training.cohorts.standard.manifest import Exclusions

SAMPLE_LINES = 20  # invalid lines named in the manifest
LINE_RULES = {
    "invalid_json": "not a JSON object",
    "other_resource_type": "a resource of another type than its file's",
}


class LineReader:
    """Counts what every file's lines held: resources by type, lines skipped and why."""

    def __init__(self, exclusions: Exclusions) -> None:
        self.exclusions = exclusions
        for reason, rule in LINE_RULES.items():
            exclusions.add("lines", reason, 0, rule)
        self.read: Counter[str] = Counter()
        self.invalid: list[str] = []

    def resources(self, path: Path, kind: str) -> Iterator[dict[str, Any]]:
        """The file's resources of type `kind`, parsed line by line (blank lines skipped)."""
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if line.isspace():
                        continue
                    self._skip("invalid_json", "not a JSON object", f"{path.name}:{number}")
                    continue
                if not isinstance(resource, dict):
                    self._skip("invalid_json", "not a JSON object", f"{path.name}:{number}")
                elif resource.get("resourceType") != kind:
                    self._skip("other_resource_type", f"not a {kind} in a {kind} file", None)
                else:
                    self.read[kind] += 1
                    yield resource

    def _skip(self, reason: str, rule: str, where: str | None) -> None:
        self.exclusions.add("lines", reason, 1, rule)
        if where is not None and len(self.invalid) < SAMPLE_LINES:
            self.invalid.append(where)


def bulk_files(folder: Path) -> tuple[list[tuple[str, Path]], str | None]:
    """(resource type, file) for every output file, and the manifest's transactionTime."""
    if not folder.is_dir():
        raise SourceError(f"not_a_folder: {folder} is not a folder of FHIR Bulk Data files")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return _listed(folder, manifest)
    files = [(_first_type(path), path) for path in sorted(folder.glob("*.ndjson"))]
    if not files:
        raise SourceError(
            f"no_bulk_files: {folder} holds neither a Bulk Data manifest.json nor *.ndjson files"
        )
    return files, None


def _listed(folder: Path, manifest: Path) -> tuple[list[tuple[str, Path]], str | None]:
    try:
        data = orjson.loads(manifest.read_bytes())
        outputs = [(str(o["type"]), str(o["url"])) for o in data["output"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise SourceError(
            f"invalid_manifest: {manifest} is not a Bulk Data manifest "
            f"(an object whose output lists type and url): {error}"
        ) from None
    files = []
    for kind, url in outputs:
        path = folder / url.rstrip("/").rsplit("/", 1)[-1]
        if not path.is_file():
            raise SourceError(f"missing_file: {manifest} lists {url}, not found in {folder}")
        files.append((kind, path))
    when = data.get("transactionTime")
    return files, str(when) if when else None


def _first_type(path: Path) -> str:
    with path.open("rb") as handle:
        for line in handle:
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                return str(resource["resourceType"])
    return "unknown"


def resources_of(
    files: list[tuple[str, Path]], kind: str, lines: LineReader
) -> Iterator[dict[str, Any]]:
    """Every resource of type `kind` in the files of that type, in file order."""
    for file_kind, path in files:
        if file_kind == kind:
            yield from lines.resources(path, kind)
