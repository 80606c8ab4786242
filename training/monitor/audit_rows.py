"""The audit trail as frames for monitoring: one model's served rows (scores and refusals) and its
shadow scores, read in pages (SQLite or PostgreSQL, through SQLAlchemy) and flattened.

Each served row gives: its `seq`, when it was received (UTC) and the week and local day of that,
the endpoint, outcome (scored | refused), refusal and warning codes, the version that answered,
the patient's pseudonym, the record's age and sex, the pathway, the **index date** (the
request's own reference date, `as_of`, when it gave one, e.g. a FHIR `asOf` replaying history;
else the day it was received, in the spec's time zone), the probability and band, and one column
per canonical input the model read (`inputs`). Shadow rows carry the served row's `seq`, the
shadow version and its own outcome, codes, inputs, probability and band; they inherit the
served row's time, index date, patient and subgroups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa

PAGE_ROWS = 100_000
SERVED_COLUMNS = (
    "seq",
    "received_at",
    "endpoint",
    "outcome",
    "reason_codes",
    "warnings",
    "model_version",
    "patient_pseudonym",
    "request",
    "inputs",
    "probability",
    "band",
)
SHADOW_COLUMNS = (
    "trail_seq",
    "model_version",
    "outcome",
    "reason_codes",
    "warnings",
    "inputs",
    "probability",
    "band",
)
INHERITED = ("received_at", "week", "index_date", "patient_pseudonym", "age", "sex", "pathway")


@dataclass(frozen=True)
class Window:
    """The days monitored, in the spec's time zone (either end open), as UTC bounds."""

    start: date | None
    end: date | None
    time_zone: str

    def utc_bounds(self) -> tuple[str | None, str | None]:
        """ISO text bounds on `received_at` (stored as UTC ISO 8601, so text order is time
        order): from the start day's local midnight to the day after the end's."""
        zone = ZoneInfo(self.time_zone)

        def utc(day: date) -> str:
            local = datetime.combine(day, time(), tzinfo=zone)
            return local.astimezone(ZoneInfo("UTC")).isoformat(timespec="microseconds")

        return (
            None if self.start is None else utc(self.start),
            None if self.end is None else utc(self.end + timedelta(days=1)),
        )

    def describe(self) -> str:
        start = "the first audited request" if self.start is None else str(self.start)
        end = "the last" if self.end is None else str(self.end)
        return f"{start} to {end} ({self.time_zone})"


def _pages(
    engine: sa.Engine, statement: sa.Select[Any], page_rows: int = PAGE_ROWS
) -> Iterator[list[sa.Row[Any]]]:
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=page_rows).execute(statement)
        for page in result.partitions():
            yield list(page)


def _codes(texts: Sequence[str]) -> list[list[str]]:
    return [orjson.loads(t) if t else [] for t in texts]


def _input_columns(texts: Sequence[str]) -> pd.DataFrame:
    """One float column per canonical input, NaN where a row did not have it."""
    frame = pd.DataFrame.from_records([orjson.loads(t) if t else {} for t in texts])
    return frame.apply(pd.to_numeric, errors="coerce").astype(np.float64)


def _week(local: pd.Series) -> pd.Series:
    """The Monday starting each local day's ISO week, as `YYYY-MM-DD` text."""
    monday = local.dt.normalize() - pd.to_timedelta(local.dt.weekday, unit="D")
    return monday.dt.strftime("%Y-%m-%d")


def served_frame(rows: Sequence[sa.Row[Any]], time_zone: str) -> pd.DataFrame:
    """One page of served trail rows, flattened (see the module docstring)."""
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [[] for _ in SERVED_COLUMNS]
    )
    raw = dict(zip(SERVED_COLUMNS, columns, strict=True))
    requests = [orjson.loads(t) for t in raw["request"]]
    records = [r.get("record") or {} for r in requests]
    received = pd.to_datetime(
        pd.Series(raw["received_at"], dtype=object), utc=True, format="ISO8601"
    )
    local = received.dt.tz_convert(time_zone).dt.tz_localize(None)
    as_of = pd.to_datetime(
        pd.Series([r.get("as_of") for r in requests], dtype=object),
        errors="coerce",
        format="ISO8601",
    )
    frame = pd.DataFrame(
        {
            "seq": np.asarray(raw["seq"], dtype=np.int64),
            "received_at": received,
            "week": _week(local),
            "index_date": as_of.fillna(local.dt.normalize()).astype("datetime64[ns]"),
            "endpoint": pd.Series(raw["endpoint"], dtype=object),
            "outcome": pd.Series(raw["outcome"], dtype=object),
            "codes": _codes(raw["reason_codes"]),
            "warnings": _codes(raw["warnings"]),
            "model_version": pd.Series(raw["model_version"], dtype=object),
            "patient_pseudonym": pd.Series(raw["patient_pseudonym"], dtype=object),
            "age": pd.to_numeric(pd.Series([r.get("age") for r in records]), errors="coerce"),
            "sex": pd.Series([r.get("sex") for r in records], dtype=object),
            "pathway": pd.Series([r.get("pathway") for r in requests], dtype=object),
            "probability": pd.Series(raw["probability"], dtype=np.float64),
            "band": pd.Series(raw["band"], dtype=object),
        }
    )
    return pd.concat([frame, _input_columns(raw["inputs"]).add_prefix("in__")], axis=1)


def shadow_frame(rows: Sequence[sa.Row[Any]]) -> pd.DataFrame:
    """One page of shadow rows, flattened (the served row's fields are joined on later)."""
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [[] for _ in SHADOW_COLUMNS]
    )
    raw = dict(zip(SHADOW_COLUMNS, columns, strict=True))
    frame = pd.DataFrame(
        {
            "seq": np.asarray(raw["trail_seq"], dtype=np.int64),
            "model_version": pd.Series(raw["model_version"], dtype=object),
            "outcome": pd.Series(raw["outcome"], dtype=object),
            "codes": _codes(raw["reason_codes"]),
            "warnings": _codes(raw["warnings"]),
            "probability": pd.Series(raw["probability"], dtype=np.float64),
            "band": pd.Series(raw["band"], dtype=object),
        }
    )
    return pd.concat([frame, _input_columns(raw["inputs"]).add_prefix("in__")], axis=1)


@dataclass(frozen=True)
class AuditFrames:
    """One model's audited rows in a window: served (champion or pinned) and shadow."""

    served: pd.DataFrame
    shadow: pd.DataFrame


def read_audit(url: str, model: str, window: Window, page_rows: int = PAGE_ROWS) -> AuditFrames:
    """Read `model`'s served rows received in `window`, and the shadow rows attached to them."""
    engine = sa.create_engine(url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine, only=lambda name, _: name in {"audit_trail", "audit_shadow"})
        if "audit_trail" not in tables.tables:
            return AuditFrames(served_frame([], window.time_zone), shadow_frame([]))
        trail = tables.tables["audit_trail"]
        start, end = window.utc_bounds()
        where = [trail.c.model_name == model]
        if start is not None:
            where.append(trail.c.received_at >= start)
        if end is not None:
            where.append(trail.c.received_at < end)
        statement = (
            sa.select(*(trail.c[c] for c in SERVED_COLUMNS)).where(*where).order_by(trail.c.seq)
        )
        pages = [served_frame(p, window.time_zone) for p in _pages(engine, statement, page_rows)]
        served = (
            pd.concat(pages, ignore_index=True) if pages else served_frame([], window.time_zone)
        )
        shadow = shadow_frame([])
        if "audit_shadow" in tables.tables and len(served):
            table = tables.tables["audit_shadow"]
            low, high = int(served["seq"].min()), int(served["seq"].max())
            statement = (
                sa.select(*(table.c[c] for c in SHADOW_COLUMNS))
                .where(table.c.model_name == model, table.c.trail_seq.between(low, high))
                .order_by(table.c.trail_seq, table.c.model_version)
            )
            parts = [shadow_frame(p) for p in _pages(engine, statement, page_rows)]
            if parts:
                shadow = pd.concat(parts, ignore_index=True)
                inherited = served[["seq", *INHERITED]]
                shadow = shadow.merge(inherited, on="seq", how="inner", validate="many_to_one")
        return AuditFrames(served, shadow)
    finally:
        engine.dispose()
