"""Shadow rows: what a silent-run (shadow) version scored for a served request, and how they are
bound to the hash chain.

A shadow row is not a link of the chain (the chain's order and contiguity stay the served rows'):
each is MACed with the chain key over its served row's MAC and its own fields,

    mac = HMAC-SHA256(chain_key, trail_mac || "\\n" || canonical JSON of the row except `mac`),

so editing a shadow row (a band, a probability) or moving it to another served row breaks its
MAC, and, because the served row's audited request lists the shadows scored for it
(`request["shadows"]`, "NAME/VERSION"), deleting one is detected too. `ShadowCheck` checks all
three while `AuditStore.verify` walks the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.audit_schema import AUDIT, SHADOW

SHADOW_FIELDS = (
    "trail_seq", "model_name", "model_version", "run_id", "shadow", "outcome", "reason_codes",
    "warnings", "inputs", "probability", "band", "base", "contributions",
)  # fmt: skip
SHADOW_ERROR = "shadow_error"  # the reason code of a shadow that raised instead of answering

ShadowProblem = Literal["shadow_changed", "shadow_missing", "shadow_orphan"]


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: how the audit store serialises its JSON columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class ShadowRecord:
    """One shadow row before the store gives it its served row's `seq` and a MAC (JSON columns
    already serialised, as in `AuditRecord`)."""

    model_name: str
    model_version: str
    run_id: str | None
    outcome: Literal["scored", "refused"]
    reason_codes: str  # JSON list: refusal codes, then warning codes
    warnings: str  # JSON list
    inputs: str  # JSON
    probability: float | None
    band: str | None
    base: float | None
    contributions: str | None  # JSON

    @property
    def ref(self) -> str:
        """`NAME/VERSION`: how the served row's request lists it."""
        return f"{self.model_name}/{self.model_version}"

    @classmethod
    def build(
        cls,
        *,
        model_name: str,
        model_version: str,
        run_id: str | None,
        reason_codes: Sequence[str] = (),
        warnings: Sequence[str] = (),
        inputs: Mapping[str, float] | None = None,
        probability: float | None = None,
        band: str | None = None,
        base: float | None = None,
        contributions: Mapping[str, float] | None = None,
    ) -> ShadowRecord:
        """Scored when it has a probability (then band, base and contributions too), else refused
        with at least one reason code."""
        scored = (probability, band, base, contributions)
        if probability is not None and any(v is None for v in scored):
            raise ValueError("a scored shadow row needs probability, band, base and contributions")
        if probability is None and (any(v is not None for v in scored) or not reason_codes):
            raise ValueError("a refused shadow row has reason codes and no score")
        return cls(
            model_name=model_name,
            model_version=model_version,
            run_id=run_id,
            outcome="refused" if probability is None else "scored",
            reason_codes=canonical_json(list(dict.fromkeys([*reason_codes, *warnings]))),
            warnings=canonical_json(list(warnings)),
            inputs=canonical_json(dict(inputs or {})),
            probability=None if probability is None else float(probability),
            band=band,
            base=None if base is None else float(base),
            contributions=None if contributions is None else canonical_json(dict(contributions)),
        )

    def row(self, trail_seq: int) -> dict[str, Any]:
        """Its columns (without `mac`) once its served row is numbered."""
        return {**self.__dict__, "trail_seq": trail_seq, "shadow": True}


def shadow_mac(key: bytes, trail_mac: str, row: Mapping[str, Any]) -> str:
    """The MAC of a shadow row (hex): its fields, bound to its served row's MAC. `shadow` is
    read as a bool (SQLite gives 1 back)."""
    fields = {name: row[name] for name in SHADOW_FIELDS} | {"shadow": bool(row["shadow"])}
    canonical = json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()
    return hmac.new(key, trail_mac.encode() + b"\n" + canonical, hashlib.sha256).hexdigest()


def listed_shadows(request: str) -> list[str]:
    """The shadows a served row's audited request lists ("NAME/VERSION"); parsed only when the
    request names any (most rows have none)."""
    if '"shadows"' not in request:
        return []
    return list(json.loads(request).get("shadows") or [])


def read_shadow_rows(
    engine: Engine, last_seq: int, *, batch: int = 5_000
) -> Iterator[dict[str, Any]]:
    """Every shadow row in `trail_seq` order with its served row's `request_id`, `item` and
    `request` (what the shadow scored), read `batch` served rows at a time (constant memory)."""
    joined = sa.select(SHADOW, AUDIT.c.request_id, AUDIT.c.item, AUDIT.c.request).join(
        AUDIT, AUDIT.c.seq == SHADOW.c.trail_seq
    )
    order = (SHADOW.c.trail_seq, SHADOW.c.model_name, SHADOW.c.model_version)
    after = 0
    while after < last_seq:
        with engine.connect() as connection:
            page = connection.execute(
                joined.where(
                    SHADOW.c.trail_seq > after, SHADOW.c.trail_seq <= after + batch
                ).order_by(*order)
            ).all()
        yield from (dict(row._mapping) for row in page)
        after += batch


@dataclass(frozen=True)
class ShadowFinding:
    seq: int  # the served row's seq (or the seq a stray shadow row names)
    problem: ShadowProblem
    detail: str


class ShadowCheck:
    """Checks shadow rows (ordered by `trail_seq`) against the trail rows passed through
    `follow` (ordered by `seq`): each shadow row's MAC against its served row, that it has a
    served row which lists it, and that every shadow a served row lists has its row. Keeps only
    the first finding. With `key=None` MACs are not recomputed (links and lists still are)."""

    def __init__(self, shadows: Iterable[Mapping[str, Any]], key: bytes | None) -> None:
        self._shadows = iter(shadows)
        self._next: Mapping[str, Any] | None = next(self._shadows, None)
        self._key = key
        self.rows = 0
        self.finding: ShadowFinding | None = None

    def follow(self, trail: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """The trail rows, unchanged, each checked with its shadow rows on the way."""
        for row in trail:
            self._check(row)
            yield row

    def finish(self) -> ShadowFinding | None:
        """After the last trail row: shadow rows left over name served rows that do not exist."""
        if self._next is not None:
            self._found(int(self._next["trail_seq"]), "shadow_orphan",
                        f"shadow {self._ref(self._next)} names seq {self._next['trail_seq']}, "
                        "which is not in the trail (rows removed from its end?)")  # fmt: skip
        return self.finding

    def _check(self, row: Mapping[str, Any]) -> None:
        seq = int(row["seq"])
        while self._next is not None and int(self._next["trail_seq"]) < seq:
            self._found(int(self._next["trail_seq"]), "shadow_orphan",
                        f"shadow {self._ref(self._next)} names seq {self._next['trail_seq']}, "
                        "which is not in the trail")  # fmt: skip
            self._advance()
        found: dict[str, Mapping[str, Any]] = {}
        while self._next is not None and int(self._next["trail_seq"]) == seq:
            found[self._ref(self._next)] = self._next
            self._advance()
        listed = listed_shadows(str(row["request"]))
        for ref, shadow in found.items():
            if ref not in listed:
                self._found(seq, "shadow_orphan", f"shadow {ref} is not listed by its served row")
            elif self._key is not None and not hmac.compare_digest(
                shadow_mac(self._key, str(row["mac"]), shadow), str(shadow["mac"])
            ):
                detail = (
                    f"shadow {ref}: its content does not match its MAC (edited, moved, or "
                    "written without the chain key)"
                )
                self._found(seq, "shadow_changed", detail)
        for ref in listed:
            if ref not in found:
                self._found(seq, "shadow_missing", f"request {row['request_id']} item "
                            f"{row['item']} lists shadow {ref}, whose row is missing")  # fmt: skip

    def _advance(self) -> None:
        self.rows += 1
        self._next = next(self._shadows, None)

    def _found(self, seq: int, problem: ShadowProblem, detail: str) -> None:
        if self.finding is None:
            self.finding = ShadowFinding(seq, problem, detail)

    @staticmethod
    def _ref(row: Mapping[str, Any]) -> str:
        return f"{row['model_name']}/{row['model_version']}"
