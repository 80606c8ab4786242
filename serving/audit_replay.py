"""Re-scoring the audit trail: each scored row's canonical request, scored again by the same
released predictor version, must give the stored probability, band, base and contributions
exactly (same booster, same inputs: bit-identical floats, which JSON and the database keep).
Shadow rows are re-scored the same way, by their own version, from their served row's request."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.predictor import Score, TriagePredictor
    from serving.release import Served


@dataclass(frozen=True)
class ReplayMismatch:
    """One output that the re-scoring did not reproduce."""

    seq: int
    request_id: str
    item: int
    output: str  # probability | band | base | contributions | eligible
    stored: Any
    rescored: Any
    shadow: str | None = None  # "NAME/VERSION" for a shadow row's output


@dataclass(frozen=True)
class ReplayReport:
    """Rows re-scored, rows not re-scored (by reason) and every mismatch found."""

    checked: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    mismatches: list[ReplayMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def __add__(self, other: ReplayReport) -> ReplayReport:
        return ReplayReport(
            self.checked + other.checked,
            self.skipped + other.skipped,
            self.mismatches + other.mismatches,
        )


def predictors_by_version(served: Mapping[str, Served]) -> dict[tuple[str, str], TriagePredictor]:
    """(model name, version) -> predictor, from a loaded release (`serving.release`): every
    released version of a `Release` (pinned ones too: shadows, pinned requests), else the
    champions given."""
    versions = getattr(served, "versions", {s.name: {s.version: s} for s in served.values()})
    return {(s.name, s.version): s.predictor for f in versions.values() for s in f.values()}


def replay_rows(
    rows: Iterable[Mapping[str, Any]],
    predictors: Mapping[tuple[str, str], TriagePredictor],
    *,
    shadow: bool = False,
) -> ReplayReport:
    """Re-score every scored row whose model version is available; refusals and rows of other
    versions are counted as skipped (a refusal has no score to compare). `shadow`: the rows are
    shadow rows (`AuditStore.shadow_rows`, each with its served row's request), each re-scored
    by its own version; skips are counted as "shadow ..." and mismatches name the version."""
    checked, skipped, mismatches = 0, Counter[str](), list[ReplayMismatch]()
    prefix = "shadow " if shadow else ""
    for row in rows:
        if row["outcome"] != "scored":
            skipped[f"{prefix}refused"] += 1
            continue
        predictor = predictors.get((row["model_name"], row["model_version"]))
        if predictor is None:
            skipped[f"{prefix}{row['model_name']} v{row['model_version']} not loaded"] += 1
            continue
        request = json.loads(row["request"])
        score = predictor.score(request["record"], pathway=request["pathway"])
        where = (int(row["trail_seq" if shadow else "seq"]), row["request_id"], row["item"])
        ref = f"{row['model_name']}/{row['model_version']}" if shadow else None
        mismatches.extend(_compare(row, score, where, shadow=ref))
        checked += 1
    return ReplayReport(checked, skipped, mismatches)


def _compare(
    row: Mapping[str, Any], score: Score, where: tuple[int, str, int], shadow: str | None = None
) -> list[ReplayMismatch]:
    """The outputs that differ between a stored row and its re-scoring (exact comparison)."""
    if not score.eligible:
        return [ReplayMismatch(*where, "eligible", True, False, shadow)]
    pairs = {
        "probability": (row["probability"], score.probability),
        "band": (row["band"], score.band),
        "base": (row["base"], score.base),
        "contributions": (json.loads(row["contributions"]), score.contributions),
    }
    return [
        ReplayMismatch(*where, output, stored, rescored, shadow)
        for output, (stored, rescored) in pairs.items()
        if stored != rescored
    ]
