"""The audit trail: every scored or refused patient is written, and committed, before its
response leaves; the trail is a keyed hash chain, and it holds what a retry must be answered with.

One row per scored or refused patient (a batch item is one row): request and item ids (and the
client's own per-item id), time, endpoint, outcome and reason codes, the model's name, version and
run, the patient reference pseudonymised with a keyed HMAC (the raw reference is never stored or
logged), the whole canonical request needed to re-score it (`canonical_request`), the canonical
inputs, warnings, probability, band, base and contributions (none for a refusal), and the JSON
body sent for the item. A row may carry the scores of shadow (silent-run) versions for the same
record, written in the same transaction (`serving.audit_shadow`). Tables: `serving.audit_schema`;
the chain: `serving.audit_chain`; client keys: `serving.idempotency`; group commit:
`serving.audit_writer`.

SQLite by default (WAL journal, `synchronous=NORMAL`: a killed server loses no committed row;
a power cut may lose the last commits); PostgreSQL by URL for several servers. Appends are
serialised across threads, processes and servers by the store itself: `BEGIN IMMEDIATE` on
SQLite, a row lock on the one-row chain head on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serving.audit_chain import GENESIS_MAC, VerifyReport, chain_key, row_mac, verify_rows
from serving.audit_schema import AUDIT, CHAIN_HEAD, HEAD_ID, METADATA, SHADOW
from serving.audit_shadow import ShadowCheck, ShadowRecord, read_shadow_rows, shadow_mac
from serving.audit_shadow import canonical_json as _json
from serving.audit_writer import GroupWriter
from serving.idempotency import (
    STALE_SECONDS,
    Claim,
    CommitConflictError,
    abandon_key,
    claim_key,
    complete_key,
    insert_ignoring_duplicates,
)

__all__ = [
    "AUDIT", "AuditRecord", "AuditStore", "Claim", "CommitConflictError", "ShadowRecord",
    "VerifyReport", "canonical_request", "pseudonymise",
]  # fmt: skip

Outcome = Literal["scored", "refused"]
_COLUMNS = tuple(column.name for column in AUDIT.columns)
_SHADOW_COLUMNS = tuple(column.name for column in SHADOW.columns)


def pseudonymise(reference: str | None, key: str) -> str | None:
    """A keyed HMAC-SHA256 of a patient reference (stable per key; not reversible)."""
    if reference is None:
        return None
    return hmac.new(key.encode(), reference.encode(), hashlib.sha256).hexdigest()


def canonical_request(
    record: Mapping[str, Any],
    *,
    pathway: str | None,
    values: Mapping[str, float] | None = None,
    patient_pseudonym: str | None = None,
    model: str | None = None,
    as_of: str | None = None,
    **context: Any,
) -> dict[str, Any]:
    """The audited request: enough to re-score it exactly, and no patient identifier.

    `record` is what was passed to `TriagePredictor.score` (`age`, `sex`, `analytes` as sent with
    their units) and `pathway` the pathway passed with it: `audit_replay` scores them again.
    `values` are the canonical values, `model` the model asked for (name, NAME/VERSION...),
    `as_of` the reference date applied, `context` anything else the route used (sample date,
    FHIR Observation ids). A `patient_reference` in the record is dropped: only its pseudonym
    is kept.
    """
    kept = {k: v for k, v in record.items() if k != "patient_reference"}
    return {
        **context,
        "record": kept,
        "pathway": pathway,
        "model": model,
        "as_of": as_of,
        "canonical": dict(values or {}),
        "patient": patient_pseudonym,
    }


def _body_text(body: str | bytes | Mapping[str, Any]) -> str:
    if isinstance(body, bytes):
        return body.decode()
    return body if isinstance(body, str) else _json(body)


@dataclass(frozen=True)
class AuditRecord:
    """One trail row before the store numbers and MACs it (JSON columns already serialised)."""

    request_id: str
    item: int
    item_request_id: str | None
    received_at: str
    endpoint: str
    outcome: Outcome
    reason_codes: str  # JSON list
    model_name: str | None
    model_version: str | None
    run_id: str | None
    patient_pseudonym: str | None
    request: str  # JSON: canonical_request(...)
    inputs: str  # JSON
    warnings: str  # JSON list
    probability: float | None
    band: str | None
    base: float | None
    contributions: str | None  # JSON
    response: str  # JSON body sent for this item
    shadows: tuple[ShadowRecord, ...] = ()  # not a trail column: rows of `audit_shadow`

    @classmethod
    def build(
        cls,
        *,
        request_id: str,
        endpoint: str,
        outcome: Outcome,
        request: Mapping[str, Any],
        response: str | bytes | Mapping[str, Any],
        item: int = 0,
        item_request_id: str | None = None,
        reason_codes: Sequence[str] = (),
        model_name: str | None = None,
        model_version: str | None = None,
        run_id: str | None = None,
        patient_pseudonym: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        warnings: Sequence[str] = (),
        probability: float | None = None,
        band: str | None = None,
        base: float | None = None,
        contributions: Mapping[str, float] | None = None,
        received_at: str | None = None,
        shadows: Sequence[ShadowRecord] = (),
    ) -> AuditRecord:
        """A scored row needs probability, band, base and contributions; a refused one has none
        of them and at least one reason code. `reason_codes` are the refusal codes; the stored
        list adds the warning codes after them. `shadows`: the shadow versions' rows for this
        record; the audited request lists them (`"shadows": ["NAME/VERSION", ...]`), so the chain
        itself records which shadow rows must exist."""
        scored = (probability, band, base, contributions)
        if outcome == "scored" and any(v is None for v in scored):
            raise ValueError("a scored row needs probability, band, base and contributions")
        if outcome == "refused" and (any(v is not None for v in scored) or not reason_codes):
            raise ValueError("a refused row has reason codes and no score")
        return cls(
            request_id=request_id,
            item=item,
            item_request_id=item_request_id,
            received_at=received_at or datetime.now(UTC).isoformat(timespec="microseconds"),
            endpoint=endpoint,
            outcome=outcome,
            reason_codes=_json(list(dict.fromkeys([*reason_codes, *warnings]))),
            model_name=model_name,
            model_version=model_version,
            run_id=run_id,
            patient_pseudonym=patient_pseudonym,
            request=_json({**request, "shadows": [s.ref for s in shadows]} if shadows else request),
            inputs=_json(dict(inputs or {})),
            warnings=_json(list(warnings)),
            probability=None if probability is None else float(probability),
            band=band,
            base=None if base is None else float(base),
            contributions=None if contributions is None else _json(dict(contributions)),
            response=_body_text(response),
            shadows=tuple(shadows),
        )


@dataclass(frozen=True)
class CommitJob:
    """One request's rows and, for a claimed key, the response that completes the claim."""

    records: Sequence[AuditRecord]
    key: str | None
    status: int
    media_type: str
    body: bytes


def _sqlite_connect(dbapi_connection: Any, _: Any) -> None:
    # The driver's own transaction handling would BEGIN DEFERRED behind SQLAlchemy's back; off,
    # so that `_sqlite_begin` below chooses the kind of BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; crash-safe
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
    cursor.execute("PRAGMA busy_timeout=10000")  # several workers share the file
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so two appenders never both read the same chain
    # head (with DEFERRED the second would fail at its first write with "database is locked").
    writing = connection.get_execution_options().get("triage_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


class AuditStore:
    """The hash-chained audit trail and the idempotency keys, in one SQLAlchemy database.

    `hmac_key` (the server's, `ServingConfig.hmac_key`) is needed to append and to verify MACs;
    a store opened without it reads, counts, exports and checks the links only.
    """

    def __init__(
        self,
        url: str,
        hmac_key: str | None = None,
        *,
        stale_seconds: float = STALE_SECONDS,
        group_commit: bool | None = None,
    ) -> None:
        self.url = url
        # Group commit pays where a transaction waits on a network (PostgreSQL: round trips and
        # a WAL flush, during which the worker scores other requests). A local SQLite commit takes
        # ~0.2 ms of CPU, less than handing it to the writer thread and back (~0.3 ms: measured,
        # bench_serve fell from ~940 to ~600 requests/s), so SQLite writes in the caller's thread.
        self.group_commit = not url.startswith("sqlite") if group_commit is None else group_commit
        self.stale_seconds = stale_seconds
        self._chain_key = None if hmac_key is None else chain_key(hmac_key)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}
            )
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._create_schema()
        self._writer: GroupWriter[CommitJob] = GroupWriter(self._write_group)

    # --- schema ---------------------------------------------------------------------------------

    def _create_schema(self, attempts: int = 20) -> None:
        """Create the tables and the chain head unless they exist. Every worker opens the store
        as it starts, so on a new store several race: two can both find no table and both CREATE
        it, or SQLite answers "database is locked" to one. The loser retries, briefly, until the
        winner's tables are there: DDL is transactional in SQLite and PostgreSQL, so they are
        there whole or not at all. Found by the load drill: one worker died at start-up."""
        for attempt in range(attempts):
            try:
                METADATA.create_all(self.engine, checkfirst=True)
                with self._writing() as connection:
                    head = {"id": HEAD_ID, "seq": 0, "mac": GENESIS_MAC}
                    connection.execute(insert_ignoring_duplicates(connection, CHAIN_HEAD), head)
                return
            except sa.exc.DBAPIError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))  # at most ~10 s in all

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction: SQLite's BEGIN IMMEDIATE (see `_sqlite_begin`)."""
        with self.engine.connect() as connection:
            connection.execution_options(triage_write=True)
            with connection.begin():
                yield connection

    # --- idempotency ----------------------------------------------------------------------------

    def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim a client key for a request with this fingerprint (`serving.idempotency`)."""
        while True:
            with self._writing() as connection:
                claim = claim_key(
                    connection, key, fingerprint, now=time.time(), stale_seconds=self.stale_seconds
                )
            if claim is not None:
                return claim

    async def claim_async(self, key: str, fingerprint: str) -> Claim:
        """`claim` off the event loop (a PostgreSQL round trip must not stall other requests)."""
        return await asyncio.to_thread(self.claim, key, fingerprint)

    def abandon(self, key: str) -> None:
        """Drop an in-flight claim: the request failed before it could be answered."""
        with self._writing() as connection:
            abandon_key(connection, key)

    # --- appending ------------------------------------------------------------------------------

    def commit(
        self,
        records: Sequence[AuditRecord],
        *,
        key: str | None = None,
        status: int = 200,
        media_type: str = "application/json",
        body: bytes = b"",
    ) -> None:
        """Append the rows to the chain and, with `key`, complete its claim with this response,
        in one transaction (shared with other requests by group commit); returns once durable.
        `CommitConflictError`: the key is not in flight, or a (request_id, item) exists."""
        queued = self._start(records, key, status, media_type, body)
        if queued is not None:
            queued.result()

    async def commit_async(
        self,
        records: Sequence[AuditRecord],
        *,
        key: str | None = None,
        status: int = 200,
        media_type: str = "application/json",
        body: bytes = b"",
    ) -> None:
        """`commit` for async routes: the event loop serves other requests meanwhile (which is
        what lets their rows join the same transaction). Without group commit (SQLite), the write
        runs here, as brief as the hand-off it saves."""
        queued = self._start(records, key, status, media_type, body)
        if queued is not None:
            await asyncio.wrap_future(queued)

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Append rows with no idempotency key (`commit(records)`)."""
        self.commit(records)

    def _job(
        self, records: Sequence[AuditRecord], key: str | None, status: int, media: str, body: bytes
    ) -> CommitJob:
        if self._chain_key is None:
            raise RuntimeError("this AuditStore was opened without the HMAC key: it cannot append")
        return CommitJob(list(records), key, status, media, body)

    def _start(
        self, records: Sequence[AuditRecord], key: str | None, status: int, media: str, body: bytes
    ) -> Future[None] | None:
        """Write the job now (no group commit: None once durable), or queue it for the writer
        (its future resolves once durable)."""
        job = self._job(records, key, status, media, body)
        if not self.group_commit:
            self._write_group([job])
            return None
        return self._writer.submit(job)

    def _write_group(self, jobs: Sequence[CommitJob]) -> None:
        """One transaction: lock the head, number and MAC every job's rows, insert them, move the
        head, complete the claims.

        The three chain statements go straight to the driver's cursor with SQL written once
        (`_chain_sql`): through SQLAlchemy Core they cost ~4x as much CPU, and this is the
        request path (the audit write was ~23% of a worker's CPU)."""
        assert self._chain_key is not None
        select_head, insert_rows, update_head, insert_shadows = self._chain_sql
        with self._writing() as connection:
            cursor = connection.connection.cursor()
            cursor.execute(select_head)  # PostgreSQL: FOR UPDATE, the chain lock
            head = cursor.fetchone()
            assert head is not None, "the chain head row is made with the schema"
            seq, mac = head
            rows, shadows = [], []
            for job in jobs:
                for record in job.records:
                    seq += 1
                    row = {**record.__dict__, "seq": seq, "prev_mac": mac}
                    mac = row["mac"] = row_mac(self._chain_key, mac, row)
                    rows.append(tuple(row[name] for name in _COLUMNS))
                    for shadow in record.shadows:
                        values = shadow.row(seq)
                        values["mac"] = shadow_mac(self._chain_key, mac, values)
                        shadows.append(tuple(values[name] for name in _SHADOW_COLUMNS))
            if rows:
                try:
                    cursor.executemany(insert_rows, rows)
                except self.engine.dialect.loaded_dbapi.IntegrityError as error:
                    message = f"a (request_id, item) is already audited: {error}"
                    raise CommitConflictError(message) from None
                if shadows:
                    cursor.executemany(insert_shadows, shadows)
                cursor.execute(update_head, (seq, mac))
            for job in jobs:
                if job.key is not None:
                    complete_key(
                        connection, job.key, status=job.status, media_type=job.media_type,
                        body=job.body,
                    )  # fmt: skip

    @property
    def _chain_sql(self) -> tuple[str, str, str, str]:
        """SELECT the head (locking it on PostgreSQL), INSERT rows, UPDATE the head, INSERT
        shadow rows."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        lock = " FOR UPDATE" if self.engine.dialect.name == "postgresql" else ""
        where = f"WHERE id = {HEAD_ID}"
        return (
            f"SELECT seq, mac FROM {CHAIN_HEAD.name} {where}{lock}",
            f"INSERT INTO {AUDIT.name} ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_COLUMNS))})",
            f"UPDATE {CHAIN_HEAD.name} SET seq = {mark}, mac = {mark} {where}",
            f"INSERT INTO {SHADOW.name} ({', '.join(_SHADOW_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_SHADOW_COLUMNS))})",
        )

    def close(self) -> None:
        """Finish queued writes, then release the connections."""
        self._writer.close()
        self.engine.dispose()

    # --- reading --------------------------------------------------------------------------------

    def count(self) -> int:
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(AUDIT)).scalar()
        return int(total or 0)

    def rows(self, *, batch: int = 5_000) -> Iterator[dict[str, Any]]:
        """Every row in chain order, read `batch` rows at a time (constant memory)."""
        after = 0
        while True:
            with self.engine.connect() as connection:
                page = connection.execute(
                    sa.select(AUDIT).where(AUDIT.c.seq > after).order_by(AUDIT.c.seq).limit(batch)
                ).all()
            yield from (dict(row._mapping) for row in page)
            if len(page) < batch:
                return
            after = page[-1].seq

    def shadow_rows(self, *, batch: int = 5_000) -> Iterator[dict[str, Any]]:
        """Every shadow row with its served row's `request_id`, `item` and `request`."""
        return read_shadow_rows(self.engine, self.head()[0], batch=batch)

    def lookup(self, request_id: str) -> list[dict[str, Any]]:
        """The rows of one request, by item (a result page, or a replayed answer)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(AUDIT).where(AUDIT.c.request_id == request_id).order_by(AUDIT.c.item)
            )
            return [dict(row._mapping) for row in found]

    def find(self, request_id: str, item: int = 0) -> dict[str, Any] | None:
        """One request item's row, or None (a result page)."""
        return next((row for row in self.lookup(request_id) if row["item"] == item), None)

    def head(self) -> tuple[int, str]:
        """The chain head: the newest `seq` and its MAC."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(CHAIN_HEAD.c.seq, CHAIN_HEAD.c.mac).where(CHAIN_HEAD.c.id == HEAD_ID)
            ).one()
        return int(row.seq), str(row.mac)

    def verify(self) -> VerifyReport:
        """Walk the chain and report its first broken link (MACs recomputed given the key).

        The head and the rows are read in one snapshot (one read transaction: SQLite WAL, and
        PostgreSQL REPEATABLE READ), so appends meanwhile neither hide nor fake a break."""
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                head = connection.execute(
                    sa.select(CHAIN_HEAD.c.seq, CHAIN_HEAD.c.mac).where(CHAIN_HEAD.c.id == HEAD_ID)
                ).one()
                rows = connection.execution_options(yield_per=5_000).execute(
                    sa.select(AUDIT).order_by(AUDIT.c.seq)
                )
                shadows = connection.execution_options(yield_per=5_000).execute(
                    sa.select(SHADOW).order_by(
                        SHADOW.c.trail_seq, SHADOW.c.model_name, SHADOW.c.model_version
                    )
                )
                check = ShadowCheck((dict(row._mapping) for row in shadows), self._chain_key)
                mapped = check.follow(dict(row._mapping) for row in rows)
                report = verify_rows(mapped, self._chain_key, (int(head.seq), str(head.mac)))
                found = check.finish() if report.ok else check.finding
        if found is not None and (report.broken_seq is None or found.seq < report.broken_seq):
            return replace(report, broken_seq=found.seq, problem=found.problem,
                           detail=found.detail)  # fmt: skip
        return replace(report, shadows=check.rows)

    def integrity_problems(self) -> list[str]:
        """The database's own check (SQLite) and the chain's first broken link, as text."""
        problems: list[str] = []
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                result = connection.exec_driver_sql("PRAGMA integrity_check").scalar()
            if result != "ok":
                problems.append(f"sqlite integrity_check: {result}")
        report = self.verify()
        if not report.ok:
            problems.append(report.describe())
        return problems

    def export_parquet(self, path: Path) -> int:
        """Write the whole trail to a Parquet file; returns the number of rows."""
        frame = pd.DataFrame(list(self.rows()))
        if frame.empty:
            frame = pd.DataFrame(columns=[c.name for c in AUDIT.columns])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        return len(frame)
