"""The audit trail's keyed hash chain: how a row is serialised, MACed and verified.

mac_n = HMAC-SHA256(chain_key, mac_{n-1} || "\\n" || canonical JSON of row n, `seq` included),
mac_0 = 64 zeros. The chain key is derived from the server's HMAC key with its own label
(`audit-chain-v1`), so it is never the pseudonymisation key itself and a future scheme can use
another label. Without the key nobody can compute a valid MAC, so a row edited (red -> green), a
row inserted or a row deleted from the middle breaks the chain at that row, whatever unkeyed
checksum the editor recomputes.

What a chain cannot catch on its own: removing the newest rows (truncation) together with moving
the head back, since every remaining link still verifies. `triage audit verify` prints the head's
`seq` and MAC so they can be anchored elsewhere (a ticket, a log shipped off the machine, a
signed daily note); a later head that does not extend an anchored one exposes the truncation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

GENESIS_MAC = "0" * 64
CHAIN_LABEL = b"audit-chain-v1"
# Every column of a trail row except the two MACs: what the chain protects.
CHAINED_FIELDS = (
    "seq", "request_id", "item", "item_request_id", "received_at", "endpoint", "outcome",
    "reason_codes", "model_name", "model_version", "run_id", "patient_pseudonym", "request",
    "inputs", "warnings", "probability", "band", "base", "contributions", "response",
)  # fmt: skip

Problem = Literal[
    "gap", "relinked", "changed", "head_mismatch", "shadow_changed", "shadow_missing",
    "shadow_orphan",
]  # fmt: skip


def chain_key(hmac_key: str) -> bytes:
    """The chain's key: HMAC(server HMAC key, "audit-chain-v1") (domain separation)."""
    return hmac.new(hmac_key.encode(), CHAIN_LABEL, hashlib.sha256).digest()


def canonical_row(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC covers: its chained fields as sorted, compact, ASCII JSON. Floats
    print as their shortest round-trip repr, which SQLite REAL and PostgreSQL double precision
    give back unchanged."""
    fields = {name: row[name] for name in CHAINED_FIELDS}
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def row_mac(key: bytes, prev_mac: str, row: Mapping[str, Any]) -> str:
    """mac_n from mac_{n-1} and row n (hex)."""
    message = prev_mac.encode() + b"\n" + canonical_row(row)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of walking the chain; `broken_seq`/`problem`/`detail` name the FIRST broken
    link. `head_seq`/`head_mac`: the newest verified row, to anchor elsewhere."""

    rows: int
    head_seq: int
    head_mac: str
    keyed: bool = True  # False: links and order checked, MACs not recomputed (no key given)
    broken_seq: int | None = None
    problem: Problem | None = None
    detail: str = ""
    shadows: int = 0  # shadow rows checked against their served rows (serving/audit_shadow.py)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        if self.ok:
            checked = "MACs verified" if self.keyed else "links only: MACs not verified (no key)"
            head = f"head seq {self.head_seq} mac {self.head_mac}"
            shadows = f"{self.shadows:,} shadow rows, " if self.shadows else ""
            return f"chain ok: {self.rows:,} rows, {shadows}{head} ({checked})"
        return f"chain broken at seq {self.broken_seq} ({self.problem}): {self.detail}"


def verify_rows(
    rows: Iterable[Mapping[str, Any]], key: bytes | None, head: tuple[int, str] | None
) -> VerifyReport:
    """Recompute the chain over rows in `seq` order and stop at the first broken link.

    - gap: a `seq` is missing (a row was deleted; `broken_seq` is the first missing one);
    - relinked: a row's `prev_mac` is not the previous row's MAC (a row before it was deleted or
      inserted and the numbers closed up, or rows were reordered);
    - changed: the row's MAC does not match its content (edited, or forged without the key);
    - head_mismatch: the chain-head record does not name the last row (rows appended outside
      the store, or the newest rows removed but the head left alone).
    With `key=None` only the stored links are followed (who lacks the key can still check order).
    """
    count, last_seq, last_mac = 0, 0, GENESIS_MAC
    for row in rows:
        seq = int(row["seq"])
        if seq != last_seq + 1:
            missing = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}..{seq - 1}"
            detail = f"seq {missing} missing (the next row present is seq {seq})"
            return _broken(count, last_seq, last_mac, key, last_seq + 1, "gap", detail)
        if row["prev_mac"] != last_mac:
            detail = (
                f"its prev_mac is not the MAC of seq {last_seq}: a row was deleted, inserted or "
                "moved before it"
            )
            return _broken(count, last_seq, last_mac, key, seq, "relinked", detail)
        if key is not None and not hmac.compare_digest(row_mac(key, last_mac, row), row["mac"]):
            detail = (
                f"request {row['request_id']} item {row['item']}: its content does not match "
                "its MAC (edited, or written without the chain key)"
            )
            return _broken(count, last_seq, last_mac, key, seq, "changed", detail)
        count, last_seq, last_mac = count + 1, seq, str(row["mac"])
    if head is not None and head != (last_seq, last_mac):
        detail = f"the head names seq {head[0]} but the last row is seq {last_seq}"
        return _broken(count, last_seq, last_mac, key, head[0], "head_mismatch", detail)
    return VerifyReport(count, last_seq, last_mac, keyed=key is not None)


def _broken(
    count: int, seq: int, mac: str, key: bytes | None, at: int, problem: Problem, detail: str
) -> VerifyReport:
    return VerifyReport(
        count, seq, mac, keyed=key is not None, broken_seq=at, problem=problem, detail=detail
    )
