"""Idempotent requests (IETF draft-ietf-httpapi-idempotency-key-header): claims on client keys.

A request that carries a client key (its `request_id`, or an `Idempotency-Key` header) first
claims the key with a fingerprint of its canonical request (computed by the service):

| kind | when | the service answers |
|---|---|---|
| `new` | first use of the key, or a stale in-flight claim taken over | scores, then commits |
| `replay` | done, same fingerprint | the stored status, media type and body |
| `mismatch` | done or in flight with another fingerprint | 422 |
| `in_flight` | same fingerprint, still being answered | 409 |

The claim row is written in its own short transaction, so a second worker or server sees it at
once (the primary key makes exactly one claimant `new`, on SQLite and PostgreSQL alike). The
answer completes it in the same transaction as the request's audit rows (`AuditStore.commit`), so
a key is `done` exactly when its rows are in the trail. A request that fails before it can be
answered `abandon`s its claim so a retry can proceed.

A stale claim: a worker that crashed mid-request leaves its key `in_flight`; after
`stale_seconds` (default 60 s, twice the service's 30 s request timeout, so no live request
still holds it) the next request with the same fingerprint takes it over (`new`,
`taken_over=True`). Should the first worker nonetheless finish, whichever commits second finds
the claim no longer in flight and gets `CommitConflictError` (its transaction, audit rows included,
rolls back), so a key is never answered twice in the trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving.audit_schema import IDEMPOTENCY

ClaimKind = Literal["new", "replay", "mismatch", "in_flight"]
STALE_SECONDS = 60.0


class CommitConflictError(RuntimeError):
    """A commit that cannot be applied as asked: its key's claim is no longer in flight, or its
    (request_id, item) is already in the trail. Nothing of that request was written."""


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key; a `replay` carries the stored response."""

    kind: ClaimKind
    status: int | None = None
    media_type: str | None = None
    body: bytes | None = None
    taken_over: bool = False


def insert_ignoring_duplicates(connection: Connection, table: sa.Table) -> sa.Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect (SQLite or PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def claim_key(
    connection: Connection, key: str, fingerprint: str, *, now: float, stale_seconds: float
) -> Claim | None:
    """Claim `key` inside a write transaction; None when the row vanished between the insert and
    the read (abandoned meanwhile): the caller tries again."""
    fresh = {"key": key, "fingerprint": fingerprint, "state": "in_flight", "created_at": now}
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT DO NOTHING.
    statement = insert_ignoring_duplicates(connection, IDEMPOTENCY).returning(IDEMPOTENCY.c.key)
    if connection.execute(statement, fresh).first() is not None:
        return Claim("new")
    table = IDEMPOTENCY.c
    row = connection.execute(
        sa.select(table.fingerprint, table.state, table.status, table.media_type, table.body,
                  table.created_at).where(table.key == key).with_for_update()
    ).one_or_none()  # fmt: skip
    if row is None:
        return None
    if row.fingerprint != fingerprint:
        return Claim("mismatch")
    if row.state == "done":
        return Claim("replay", status=row.status, media_type=row.media_type, body=row.body)
    if now - row.created_at >= stale_seconds:
        taken = connection.execute(
            sa.update(IDEMPOTENCY)
            .where(table.key == key, table.state == "in_flight", table.created_at == row.created_at)
            .values(created_at=now)
        )
        if taken.rowcount == 1:
            return Claim("new", taken_over=True)
    return Claim("in_flight")


def abandon_key(connection: Connection, key: str) -> None:
    """Remove an in-flight claim (a done one stays: its answer was sent)."""
    table = IDEMPOTENCY.c
    connection.execute(sa.delete(IDEMPOTENCY).where(table.key == key, table.state == "in_flight"))


def complete_key(
    connection: Connection, key: str, *, status: int, media_type: str, body: bytes
) -> None:
    """Mark the key's in-flight claim done with its response, in the caller's transaction;
    `CommitConflictError` when the claim is not in flight (abandoned, or answered by another)."""
    table = IDEMPOTENCY.c
    done = connection.execute(
        sa.update(IDEMPOTENCY)
        .where(table.key == key, table.state == "in_flight")
        .values(state="done", status=status, media_type=media_type, body=body)
    )
    if done.rowcount != 1:
        raise CommitConflictError(
            f"idempotency key {key!r} is not in flight (answered or abandoned)"
        )
