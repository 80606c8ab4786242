"""The audit trail: every score is written, and committed, before its response leaves.

One row per scored patient: request id, time, endpoint, model name and version, run id, the patient
reference pseudonymised with a keyed HMAC (the raw reference is never stored or logged), canonical
inputs, warnings, probability, band, base and contributions, and a SHA-256 of the row's content so
that an integrity check can find a row altered after the fact. SQLite by default (WAL journal, so a
killed server loses no committed row); PostgreSQL by URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

METADATA = sa.MetaData()
AUDIT = sa.Table(
    "audit_log",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("item", sa.Integer, nullable=False),
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("patient_pseudonym", sa.String(64)),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("warnings", sa.Text, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("band", sa.String(8), nullable=False),
    sa.Column("base", sa.Float, nullable=False),
    sa.Column("contributions", sa.Text, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.UniqueConstraint("request_id", "item", name="uq_request_item"),
)


def pseudonymise(reference: str | None, key: str) -> str | None:
    """A keyed HMAC-SHA256 of a patient reference (stable per key; not reversible)."""
    if reference is None:
        return None
    return hmac.new(key.encode(), reference.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    item: int
    received_at: str
    endpoint: str
    model_name: str
    model_version: str
    run_id: str | None
    patient_pseudonym: str | None
    inputs: str  # JSON
    warnings: str  # JSON
    probability: float
    band: str
    base: float
    contributions: str  # JSON

    @classmethod
    def build(
        cls,
        *,
        request_id: str,
        item: int,
        endpoint: str,
        model_name: str,
        model_version: str,
        run_id: str | None,
        patient_pseudonym: str | None,
        inputs: Mapping[str, Any],
        warnings: Sequence[str],
        probability: float,
        band: str,
        base: float,
        contributions: Mapping[str, float],
    ) -> AuditRecord:
        return cls(
            request_id=request_id,
            item=item,
            received_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            endpoint=endpoint,
            model_name=model_name,
            model_version=model_version,
            run_id=run_id,
            patient_pseudonym=patient_pseudonym,
            inputs=json.dumps(inputs, sort_keys=True, default=str),
            warnings=json.dumps(list(warnings)),
            probability=probability,
            band=band,
            base=base,
            contributions=json.dumps(contributions, sort_keys=True),
        )

    def checksum(self, fields: Mapping[str, Any] | None = None) -> str:
        payload = json.dumps(
            asdict(self) if fields is None else fields, sort_keys=True, default=repr
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def row(self) -> dict[str, Any]:
        """The database row: the fields plus their checksum (serialised once)."""
        fields = asdict(self)
        return {**fields, "checksum": self.checksum(fields)}


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; crash-safe
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
    cursor.execute("PRAGMA busy_timeout=10000")  # several workers share the file
    cursor.close()


class AuditStore:
    """Append-only audit rows in a SQLAlchemy database."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._create_schema()

    def _create_schema(self, attempts: int = 20) -> None:
        """Create the tables unless they exist. Every worker opens the store as it starts, so on a
        new store several race: two can both find no table and both CREATE it, or SQLite answers
        "database is locked" to one (a read lock cannot wait to become a write lock). The loser
        retries, briefly, until the winner's tables are there: DDL is transactional in SQLite and
        PostgreSQL, so they are there whole or not at all. Found by the load drill: one worker
        died at start-up."""
        for attempt in range(attempts):
            try:
                METADATA.create_all(self.engine, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                if attempt == attempts - 1:
                    raise
                if self._schema_present():
                    return
                time.sleep(0.05 * (attempt + 1))  # at most ~10 s in all

    def _schema_present(self) -> bool:
        try:
            return set(METADATA.tables) <= set(sa.inspect(self.engine).get_table_names())
        except sa.exc.DBAPIError:
            return False

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Insert and commit the rows (one transaction); returns only once they are durable."""
        if not records:
            return
        rows = [record.row() for record in records]
        with self.engine.begin() as connection:
            connection.execute(AUDIT.insert(), rows)

    def count(self) -> int:
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(AUDIT)).scalar()
        return int(total or 0)

    def rows(self) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as connection:
            for row in connection.execute(sa.select(AUDIT).order_by(AUDIT.c.id)):
                yield dict(row._mapping)

    def integrity_problems(self) -> list[str]:
        """Database-level check (SQLite) plus a checksum re-computation of every row."""
        problems: list[str] = []
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                result = connection.exec_driver_sql("PRAGMA integrity_check").scalar()
            if result != "ok":
                problems.append(f"sqlite integrity_check: {result}")
        fields = [c.name for c in AUDIT.columns if c.name not in {"id", "checksum"}]
        for row in self.rows():
            record = AuditRecord(**{f: row[f] for f in fields})
            if record.checksum() != row["checksum"]:
                problems.append(f"row {row['id']} (request {row['request_id']}) was altered")
        return problems

    def export_parquet(self, path: Path) -> int:
        """Write the whole trail to a Parquet file; returns the number of rows."""
        frame = pd.DataFrame(list(self.rows()))
        if frame.empty:
            frame = pd.DataFrame(columns=[c.name for c in AUDIT.columns])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        return len(frame)

    def close(self) -> None:
        self.engine.dispose()
