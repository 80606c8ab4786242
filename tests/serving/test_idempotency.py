"""Idempotency keys: each kind of claim, the claim completed with the audit rows in one
transaction, stale claims, concurrent duplicates from two processes, and group commit that
isolates a bad request (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from serving.audit import AuditStore, CommitConflictError
from serving.audit_schema import IDEMPOTENCY
from serving.audit_writer import GroupWriter
from tests.serving.audit_support import HMAC_KEY, refused, scored, store_url

__all__ = ["store_url"]  # the fixture, imported for use here
BODY = b'{"request_id":"k1","probability":0.25}'


def test_each_kind_of_claim(store_url: str) -> None:
    store = AuditStore(store_url, HMAC_KEY)
    assert store.claim("k1", "fp-a").kind == "new", "first use of a key"
    assert store.claim("k1", "fp-a").kind == "in_flight", "same request still being answered"
    assert store.claim("k1", "fp-b").kind == "mismatch", "another request under the same key"
    store.commit([scored("k1")], key="k1", status=200, media_type="application/json", body=BODY)
    replay = store.claim("k1", "fp-a")
    assert (replay.kind, replay.status, replay.media_type, replay.body) == (
        "replay", 200, "application/json", BODY,
    ), "the stored response, byte for byte"  # fmt: skip
    assert store.claim("k1", "fp-b").kind == "mismatch", "a done key with another body"
    assert store.count() == 1, "a replay writes no second row"


def test_a_refusal_is_stored_and_replayed_too(store_url: str) -> None:
    store = AuditStore(store_url, HMAC_KEY)
    assert store.claim("k2", "fp").kind == "new"
    body = b'{"error":{"code":"unknown_model"}}'
    store.commit([refused("k2")], key="k2", status=404, body=body)
    assert (store.claim("k2", "fp").status, store.claim("k2", "fp").body) == (404, body)
    (row,) = store.lookup("k2")
    assert (row["outcome"], row["probability"], row["model_name"]) == ("refused", None, None)
    assert row["reason_codes"] == '["unknown_model"]' and store.verify().ok


def test_abandon_frees_an_in_flight_key_only(store_url: str) -> None:
    store = AuditStore(store_url, HMAC_KEY)
    assert store.claim("k3", "fp").kind == "new"
    store.abandon("k3")
    assert store.claim("k3", "fp-other").kind == "new", "an abandoned key is free again"
    store.commit([], key="k3", status=422, body=b"{}")  # answered without a row (schema error)
    store.abandon("k3")
    assert store.claim("k3", "fp-other").kind == "replay", "a done key stays done"


def test_the_claim_completes_in_the_same_transaction_as_the_rows(store_url: str) -> None:
    """A commit that fails (its row id is taken) leaves the claim in flight and writes nothing;
    a commit whose claim was abandoned is refused and writes nothing either."""
    store = AuditStore(store_url, HMAC_KEY)
    store.commit([scored("taken")])
    assert store.claim("k4", "fp").kind == "new"
    with pytest.raises(CommitConflictError, match="already audited"):
        store.commit([scored("taken")], key="k4", body=BODY)
    assert store.claim("k4", "fp").kind == "in_flight" and store.count() == 1
    store.abandon("k4")
    with pytest.raises(CommitConflictError, match="not in flight"):
        store.commit([scored("k4")], key="k4", body=BODY)
    assert store.count() == 1 and store.verify().ok, "no row, and the chain unbroken"


def test_a_stale_claim_is_taken_over_and_answered_once(store_url: str) -> None:
    store = AuditStore(store_url, HMAC_KEY, stale_seconds=0.3)
    assert store.claim("k5", "fp").kind == "new"
    assert store.claim("k5", "fp").kind == "in_flight", "not yet stale"
    time.sleep(0.4)
    assert store.claim("k5", "fp-b").kind == "mismatch", "a stale claim keeps its fingerprint"
    taken = store.claim("k5", "fp")
    assert taken.kind == "new" and taken.taken_over, "a crashed worker's claim is taken over"
    store.commit([scored("k5")], key="k5", body=BODY)  # the taker answers first
    with pytest.raises(CommitConflictError):  # the first worker, late, cannot answer again
        store.commit([scored("k5", item=1)], key="k5", body=b"late")
    assert store.count() == 1 and store.claim("k5", "fp").body == BODY


def _claim_keys(url: str, keys: list[str], barrier: Any, results: Any) -> None:
    store = AuditStore(url, HMAC_KEY)
    barrier.wait(timeout=60)
    for key in keys:
        results.put((key, store.claim(key, "fp").kind))
    store.close()


def test_concurrent_duplicates_from_two_processes_give_exactly_one_new(store_url: str) -> None:
    AuditStore(store_url, HMAC_KEY).close()  # the schema first: this test races claims only
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    keys = [f"dup-{n}" for n in range(40)]
    processes = [
        context.Process(target=_claim_keys, args=(store_url, keys, barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    claims = [results.get(timeout=120) for _ in range(2 * len(keys))]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    for key in keys:
        kinds = sorted(kind for k, kind in claims if k == key)
        assert kinds == ["in_flight", "new"], f"{key}: exactly one claimant owns it, {kinds}"


def test_concurrent_commits_and_async_commits_share_transactions(store_url: str) -> None:
    store = AuditStore(store_url, HMAC_KEY)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.commit([scored(f"t{n}")]), range(80)))

    async def many() -> None:
        await asyncio.gather(*(store.commit_async([scored(f"a{n}")]) for n in range(80)))

    asyncio.run(many())
    report = store.verify()
    assert report.ok and report.rows == store.count() == 160, report
    with store.engine.connect() as connection:
        claims = connection.execute(sa.select(sa.func.count()).select_from(IDEMPOTENCY)).scalar()
    assert claims == 0, "requests without a client key never claim"


def test_one_bad_request_in_a_group_fails_alone(tmp_path: Any) -> None:
    """The writer is held on SQLite's write lock while ten requests queue, one of them with a
    taken id; the group fails, is retried one request at a time, and only the bad one fails."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(url, HMAC_KEY, group_commit=True)  # SQLite's default writes in the caller
    store.commit([scored("taken")])
    blocker = sa.create_engine(url).raw_connection()
    blocker.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]

    def submit(request_id: str) -> Any:
        return store._writer.submit(store._job([scored(request_id)], None, 200, "x", b""))

    futures = [submit("first")]
    time.sleep(0.2)  # the writer is now waiting on the lock with "first"
    futures += [submit("taken" if n == 5 else f"g{n}") for n in range(10)]
    blocker.rollback()
    errors = [future.exception(timeout=30) for future in futures]
    assert [n for n, e in enumerate(errors) if e is not None] == [6], errors
    assert isinstance(errors[6], CommitConflictError)
    assert store.count() == 11 and store.verify().ok


def test_the_group_writer_batches_what_queues_while_it_writes() -> None:
    groups: list[list[int]] = []
    gate = threading.Event()

    def write(group: Any) -> None:
        gate.wait(10)
        groups.append(list(group))

    writer: GroupWriter[int] = GroupWriter(write)
    futures = [writer.submit(0)]
    time.sleep(0.1)
    futures += [writer.submit(n) for n in range(1, 6)]
    gate.set()
    for future in futures:
        future.result(timeout=10)
    writer.close()
    assert groups == [[0], [1, 2, 3, 4, 5]], "what queued during a write goes in one group"
