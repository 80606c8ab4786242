"""The audit trail's keyed hash chain catches a deleted, edited, inserted or moved row (rows
tampered with by hand, in SQL, on SQLite and PostgreSQL) and names the first broken link."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from serving.audit import AuditStore
from serving.audit_chain import CHAINED_FIELDS, GENESIS_MAC
from serving.audit_schema import AUDIT, CHAIN_HEAD
from tests.serving.audit_support import HMAC_KEY, refused, scored, store_url
from training.cli import app

__all__ = ["store_url"]  # the fixture, imported for use here


def _store(url: str, rows: int = 5) -> AuditStore:
    """A store holding `rows` rows (seq 1..rows; seq 3 is a refusal)."""
    store = AuditStore(url, HMAC_KEY)
    for n in range(1, rows + 1):
        store.commit([refused(f"r{n}") if n == 3 else scored(f"r{n}")])
    report = store.verify()
    assert report.ok and report.rows == rows, f"an untouched chain verifies: {report}"
    return store


def _row(store: AuditStore, seq: int) -> dict[str, object]:
    with store.engine.connect() as connection:
        return dict(connection.execute(sa.select(AUDIT).where(AUDIT.c.seq == seq)).one()._mapping)


def _sql(store: AuditStore, *statements: sa.Executable) -> None:
    with store.engine.begin() as connection:
        for statement in statements:
            connection.execute(statement)


def test_the_first_mac_is_the_documented_hmac(tmp_path: Path) -> None:
    """mac_1 = HMAC-SHA256(HMAC-SHA256(key, "audit-chain-v1"), 64 zeros || "\\n" || row JSON),
    computed here from the stored row without the chain module."""
    store = _store(f"sqlite:///{tmp_path / 'audit.db'}", rows=1)
    row = _row(store, 1)
    key = hmac.new(HMAC_KEY.encode(), b"audit-chain-v1", hashlib.sha256).digest()
    fields = {name: row[name] for name in CHAINED_FIELDS}
    assert set(fields) == {c.name for c in AUDIT.columns} - {"prev_mac", "mac"}, "all but MACs"
    message = b"0" * 64 + b"\n" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert row["prev_mac"] == GENESIS_MAC
    assert row["mac"] == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert store.head() == (1, row["mac"]), "the head names the newest row and its MAC"


def test_a_deleted_row_is_a_gap(store_url: str) -> None:
    store = _store(store_url)
    _sql(store, sa.delete(AUDIT).where(AUDIT.c.seq == 3))
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("gap", 3), report
    assert report.rows == 2 and report.head_seq == 2, "the rows before the break verify"


def test_a_deleted_row_with_the_numbers_closed_up_breaks_the_next_link(store_url: str) -> None:
    store = _store(store_url)
    _sql(
        store,
        sa.delete(AUDIT).where(AUDIT.c.seq == 3),
        sa.update(AUDIT).where(AUDIT.c.seq > 3).values(seq=1 - AUDIT.c.seq),  # via negatives:
        sa.update(AUDIT).where(AUDIT.c.seq < 0).values(seq=-AUDIT.c.seq),  # no transient clash
        sa.update(CHAIN_HEAD).values(seq=4),
    )
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("relinked", 3), report


def test_red_to_green_with_a_recomputed_unkeyed_checksum_is_caught(store_url: str) -> None:
    """The editor recomputes every MAC they can without the key: SHA-256 of the row, and even an
    HMAC under a guessed key. The MAC no longer matches, and the verification says where."""
    store = _store(store_url)
    row = {**_row(store, 2), "band": "green", "probability": 0.01}
    payload = json.dumps({n: row[n] for n in CHAINED_FIELDS}, sort_keys=True).encode()
    for forged in (
        hashlib.sha256(payload).hexdigest(),
        hmac.new(b"guess", f"{row['prev_mac']}\n".encode() + payload, "sha256").hexdigest(),
    ):
        _sql(
            store,
            sa.update(AUDIT)
            .where(AUDIT.c.seq == 2)
            .values(band="green", probability=0.01, mac=forged),
        )
        report = store.verify()
        assert (report.problem, report.broken_seq) == ("changed", 2), report
        assert "request r2" in report.detail


def test_an_edit_keeping_the_mac_is_caught(store_url: str) -> None:
    store = _store(store_url)
    _sql(store, sa.update(AUDIT).where(AUDIT.c.seq == 4).values(band="green"))
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("changed", 4), report


def test_an_inserted_row_is_caught(store_url: str) -> None:
    """A forged row slotted in at seq 3 (later rows renumbered up), linked to seq 2's MAC."""
    store = _store(store_url)
    forged = {**_row(store, 3), "request_id": "forged", "mac": "f" * 64}
    forged["prev_mac"] = _row(store, 2)["mac"]
    _sql(
        store,
        sa.update(AUDIT).where(AUDIT.c.seq >= 3).values(seq=AUDIT.c.seq + 100),
        sa.update(AUDIT).where(AUDIT.c.seq >= 103).values(seq=AUDIT.c.seq - 99),
        sa.insert(AUDIT).values(**{**forged, "seq": 3}),
        sa.update(CHAIN_HEAD).values(seq=6),
    )
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("changed", 3), report


def test_an_appended_row_outside_the_store_is_caught(store_url: str) -> None:
    store = _store(store_url)
    last = _row(store, 5)
    _sql(store, sa.insert(AUDIT).values(**{**last, "seq": 6, "request_id": "x",
                                            "prev_mac": last["mac"], "mac": "0" * 64}))  # fmt: skip
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("changed", 6), report


def test_swapped_rows_are_caught(store_url: str) -> None:
    store = _store(store_url)
    _sql(
        store,
        sa.update(AUDIT).where(AUDIT.c.seq == 2).values(seq=-2),
        sa.update(AUDIT).where(AUDIT.c.seq == 4).values(seq=2),
        sa.update(AUDIT).where(AUDIT.c.seq == -2).values(seq=4),
    )
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("relinked", 2), report


def test_truncation_is_caught_by_the_head_unless_the_head_is_rewound_too(store_url: str) -> None:
    """What a chain alone cannot catch: drop the newest rows AND move the head back. The
    verification passes; only a head anchored elsewhere (printed by `triage audit verify`)
    shows it, which is why it is printed."""
    store = _store(store_url)
    anchored = store.head()
    _sql(store, sa.delete(AUDIT).where(AUDIT.c.seq == 5))
    report = store.verify()
    assert (report.problem, report.broken_seq) == ("head_mismatch", 5), report
    fourth = _row(store, 4)
    _sql(store, sa.update(CHAIN_HEAD).values(seq=4, mac=fourth["mac"]))
    report = store.verify()
    assert report.ok and (report.head_seq, report.head_mac) != anchored, "undetectable alone"


def test_a_store_without_the_key_checks_links_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = _store(url)
    _sql(store, sa.update(AUDIT).where(AUDIT.c.seq == 4).values(band="green"))
    keyless = AuditStore(url)
    assert keyless.verify().ok and not keyless.verify().keyed, "an edit needs the key to see"
    _sql(store, sa.delete(AUDIT).where(AUDIT.c.seq == 2))
    assert keyless.verify().problem == "gap", "a deletion does not"
    with pytest.raises(RuntimeError, match="without the HMAC key"):
        keyless.commit([scored("new")])


def test_triage_audit_verify_prints_the_head_or_the_first_broken_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_HMAC_KEY", HMAC_KEY)
    monkeypatch.delenv("TRIAGE_AUDIT_URL", raising=False)
    store = _store(f"sqlite:///{(tmp_path / 'serving' / 'audit.db').resolve()}")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--workdir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert store.head()[1] in ok.output.replace("\n", ""), "the head MAC is printed to anchor"
    _sql(store, sa.update(AUDIT).where(AUDIT.c.seq == 2).values(band="green"))
    broken = runner.invoke(app, ["audit", "verify", "--workdir", str(tmp_path)])
    assert broken.exit_code == 1 and "seq 2 (changed)" in broken.output, broken.output
    out = tmp_path / "out.parquet"
    export = runner.invoke(app, ["audit", "export", "--workdir", str(tmp_path), "--out", str(out)])
    assert export.exit_code == 1 and "seq 2 (changed)" in export.output, "export verifies"
    assert out.exists(), "and still writes the evidence"
