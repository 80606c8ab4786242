"""Shadow rows in the audit store: written with their served rows, bound to them by MAC, and
checked by `verify` (edited, deleted, or left pointing at a served row that is gone)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from serving.audit import AuditStore
from serving.audit_schema import AUDIT, CHAIN_HEAD, HEAD_ID, SHADOW
from serving.audit_shadow import ShadowRecord
from tests.serving.audit_support import HMAC_KEY, refused, scored, store_url

__all__ = ["store_url"]  # the fixture (SQLite, and PostgreSQL when one is given)


def shadow(version: str = "2", band: str = "amber", probability: float = 0.031) -> ShadowRecord:
    return ShadowRecord.build(
        model_name="lower_gi", model_version=version, run_id=f"run-{version}",
        inputs={"haemoglobin": 109.0}, warnings=["unit_converted"], probability=probability,
        band=band, base=-2.5, contributions={"haemoglobin": 0.1 + 1 / 3},
    )  # fmt: skip


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    """Six served rows: four with shadow rows (one with two shadows, one a refused shadow), one
    refused served row without any, one scored row without any; 6 shadow rows in all."""
    opened = AuditStore(store_url, HMAC_KEY)
    opened.commit(
        [scored("a", 0, shadows=[shadow()]), scored("a", 1, shadows=[shadow(band="red")])]
    )
    opened.commit([refused("b")])
    opened.commit([scored("c", shadows=[shadow(), shadow("3", "green", 0.004)])])
    refusal = ShadowRecord.build(model_name="lower_gi", model_version="2", run_id="run-2",
                                 reason_codes=["ineligible", "age_out_of_range"])  # fmt: skip
    opened.commit([scored("d", shadows=[refusal])])
    opened.commit([scored("e"), scored("f", shadows=[shadow(probability=0.2, band="red")])])
    yield opened
    opened.close()


def test_shadow_rows_are_written_with_their_served_rows_and_verify(store: AuditStore) -> None:
    trail = {row["seq"]: row for row in store.rows()}
    rows = list(store.shadow_rows())
    assert [(r["trail_seq"], r["model_version"]) for r in rows] == [
        (1, "2"), (2, "2"), (4, "2"), (4, "3"), (5, "2"), (7, "2")]  # fmt: skip
    assert all(r["shadow"] is True for r in rows) and rows[2]["request_id"] == "c"
    assert json.loads(trail[4]["request"])["shadows"] == ["lower_gi/2", "lower_gi/3"]
    assert "shadows" not in json.loads(trail[6]["request"]), "no shadow, nothing listed"
    assert rows[4]["outcome"] == "refused" and rows[4]["probability"] is None
    assert json.loads(rows[4]["reason_codes"]) == ["ineligible", "age_out_of_range"]
    assert rows[0]["contributions"] == json.dumps(
        {"haemoglobin": 0.1 + 1 / 3}, separators=(",", ":")
    )
    report = store.verify()
    assert report.ok and report.rows == 7 and report.shadows == 6, report.describe()


def _execute(store: AuditStore, statement: sa.Executable) -> None:
    with store.engine.begin() as connection:
        connection.execute(statement)


def test_an_edited_shadow_band_breaks_verification(store: AuditStore) -> None:
    _execute(store, sa.update(SHADOW).where(SHADOW.c.trail_seq == 2).values(band="green"))
    report = store.verify()
    assert not report.ok and report.problem == "shadow_changed" and report.broken_seq == 2
    assert "lower_gi/2" in report.detail and "chain broken at seq 2" in report.describe()


def test_a_deleted_shadow_row_breaks_verification(store: AuditStore) -> None:
    deleted = sa.delete(SHADOW).where(SHADOW.c.trail_seq == 4, SHADOW.c.model_version == "3")
    _execute(store, deleted)
    report = store.verify()
    assert not report.ok and report.problem == "shadow_missing" and report.broken_seq == 4
    assert "lists shadow lower_gi/3, whose row is missing" in report.detail


def test_a_shadow_row_moved_to_another_served_row_breaks_verification(store: AuditStore) -> None:
    moved = sa.update(SHADOW).where(SHADOW.c.trail_seq == 7).values(trail_seq=6)
    _execute(store, moved)
    report = store.verify()
    assert not report.ok and report.problem == "shadow_orphan" and report.broken_seq == 6


def test_a_shadow_row_whose_served_row_is_gone_breaks_verification(store: AuditStore) -> None:
    """Truncation: the newest served row removed and the head moved back to the row before it,
    which the chain alone cannot see; its shadow row, left behind, names a missing seq."""
    before = next(row for row in store.rows() if row["seq"] == 6)
    _execute(store, sa.delete(AUDIT).where(AUDIT.c.seq == 7))
    _execute(store, sa.update(CHAIN_HEAD).where(CHAIN_HEAD.c.id == HEAD_ID)
             .values(seq=6, mac=before["mac"]))  # fmt: skip
    report = store.verify()
    assert not report.ok and report.problem == "shadow_orphan" and report.broken_seq == 7
    assert "names seq 7, which is not in the trail" in report.detail
    _execute(store, sa.delete(SHADOW).where(SHADOW.c.trail_seq == 7))
    assert store.verify().ok, "with the shadow row gone too, only an anchored head tells"


def test_a_chain_break_before_a_shadow_problem_is_reported_first(store: AuditStore) -> None:
    _execute(store, sa.update(AUDIT).where(AUDIT.c.seq == 3).values(band="green"))
    _execute(store, sa.delete(SHADOW).where(SHADOW.c.trail_seq == 5))
    report = store.verify()
    assert report.problem == "changed" and report.broken_seq == 3


def test_a_shadow_row_needs_a_score_or_a_reason() -> None:
    with pytest.raises(ValueError, match="reason codes"):
        ShadowRecord.build(model_name="m", model_version="1", run_id=None)
    with pytest.raises(ValueError, match="needs probability"):
        ShadowRecord.build(model_name="m", model_version="1", run_id=None, probability=0.1)
