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

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import sqlalchemy as sa

from serving.audit_chain import chain_key, row_mac

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
INPUT_PREFIX = "in__"
FEW_VALUES = ("endpoint", "outcome", "band", "sex", "pathway")  # kept as categoricals
REQUEST_SCHEMA = pa.schema([
    ("record", pa.struct([("age", pa.float64()), ("sex", pa.string())])),
    ("pathway", pa.string()),
    ("as_of", pa.string()),
])  # fmt: skip
CODES_SCHEMA = pa.schema([("r", pa.list_(pa.string())), ("w", pa.list_(pa.string()))])
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


def parse_json(texts: Sequence[str], schema: pa.Schema) -> pa.Table:
    """One JSON object per text, read in C++ (pyarrow) with only `schema`'s fields kept: a
    million audited requests parse in seconds where `json.loads` per row takes tens of seconds
    and holds every analyte of every record as Python objects. The trail's JSON is written
    compact (`serving.audit`), so no text holds a raw newline."""
    if not texts:
        return schema.empty_table()
    data = "\n".join(texts).encode()
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(io.BytesIO(data), parse_options=options)


def _code_lists(seq: np.ndarray, refusals: Sequence[str], warnings: Sequence[str]) -> pd.DataFrame:
    """The long frame of codes: one row per (seq, kind, code); `refusal` codes are a refused
    row's reason codes (warnings included, as stored), `warning` the warning codes."""
    lines = [f'{{"r":{r},"w":{w}}}' for r, w in zip(refusals, warnings, strict=True)]
    table = parse_json(lines, CODES_SCHEMA)
    parts = []
    for kind, column in (("refusal", "r"), ("warning", "w")):
        values = table.column(column).combine_chunks()
        parents = pc.list_parent_indices(values).to_numpy()
        parts.append(pd.DataFrame({
            "seq": seq[parents], "kind": kind,
            "code": pc.list_flatten(values).to_numpy(zero_copy_only=False),
        }))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _week(local: pd.Series) -> pd.Series:
    """The Monday starting each local day's ISO week, as `YYYY-MM-DD` text."""
    monday = local.dt.normalize() - pd.to_timedelta(local.dt.weekday, unit="D")
    return monday.dt.strftime("%Y-%m-%d")


def _columns(rows: Sequence[sa.Row[Any]], names: Sequence[str]) -> dict[str, Sequence[Any]]:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    return dict(zip(names, columns, strict=True))


def _inputs(texts: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    schema = pa.schema([(name, pa.float64()) for name in names])
    frame = parse_json(texts, schema).to_pandas()
    return frame.loc[:, frame.notna().any()].add_prefix(INPUT_PREFIX)


def served_frame(
    rows: Sequence[sa.Row[Any]], time_zone: str, input_names: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One page of served trail rows, flattened (see the module docstring), and its codes."""
    raw = _columns(rows, SERVED_COLUMNS)
    requests = parse_json(raw["request"], REQUEST_SCHEMA)
    record = requests.column("record").combine_chunks()
    received = pd.to_datetime(pd.Series(raw["received_at"], dtype=object), utc=True,
                              format="ISO8601")  # fmt: skip
    local = received.dt.tz_convert(time_zone).dt.tz_localize(None)
    as_of = pd.to_datetime(requests.column("as_of").to_pandas(), errors="coerce", format="ISO8601")
    seq = np.asarray(raw["seq"], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "seq": seq,
            "received_at": received,
            "week": _week(local),
            "index_date": as_of.fillna(local.dt.normalize()).astype("datetime64[ns]"),
            "endpoint": pd.Series(raw["endpoint"], dtype=object),
            "outcome": pd.Series(raw["outcome"], dtype=object),
            "model_version": pd.Series(raw["model_version"], dtype=object),
            "patient_pseudonym": pd.Series(raw["patient_pseudonym"], dtype=object),
            "age": pc.struct_field(record, "age").to_numpy(zero_copy_only=False),
            "sex": pc.struct_field(record, "sex").to_numpy(zero_copy_only=False),
            "pathway": requests.column("pathway").to_numpy(),
            "probability": pd.Series(raw["probability"], dtype=np.float64),
            "band": pd.Series(raw["band"], dtype=object),
        }
    )
    inputs = _inputs(raw["inputs"], input_names)
    codes = _code_lists(seq, raw["reason_codes"], raw["warnings"])
    refused = np.isin(codes["seq"].to_numpy(), seq[frame["outcome"].to_numpy() == "refused"])
    codes = codes.loc[(codes["kind"] == "warning") | refused].reset_index(drop=True)
    return pd.concat([frame, inputs], axis=1), codes


def shadow_frame(rows: Sequence[sa.Row[Any]], input_names: Sequence[str]) -> pd.DataFrame:
    """One page of shadow rows, flattened (the served row's fields are joined on later)."""
    raw = _columns(rows, SHADOW_COLUMNS)
    frame = pd.DataFrame(
        {
            "seq": np.asarray(raw["trail_seq"], dtype=np.int64),
            "model_version": pd.Series(raw["model_version"], dtype=object),
            "outcome": pd.Series(raw["outcome"], dtype=object),
            "probability": pd.Series(raw["probability"], dtype=np.float64),
            "band": pd.Series(raw["band"], dtype=object),
        }
    )
    return pd.concat([frame, _inputs(raw["inputs"], input_names)], axis=1)


def key_problem(url: str, hmac_key: str) -> str | None:
    """Why `hmac_key` cannot be the key the server audited with (its pseudonyms would match
    none of the trail's), or None: the newest trail row's MAC, which the server computed with a
    key derived from its own (`serving.audit_chain`), verifies (or the trail is empty)."""
    engine = sa.create_engine(url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine, only=lambda name, _: name == "audit_trail")
        if "audit_trail" not in tables.tables:
            return None
        trail = tables.tables["audit_trail"]
        with engine.connect() as connection:
            newest = connection.execute(
                sa.select(trail).order_by(trail.c.seq.desc()).limit(1)
            ).first()
    finally:
        engine.dispose()
    if newest is None:
        return None
    row = dict(newest._mapping)
    if row_mac(chain_key(hmac_key), row["prev_mac"], row) == row["mac"]:
        return None
    return (
        "the HMAC key given does not verify the audit trail's newest row, so it is not the key "
        "the server pseudonymised patients with: no outcome would link. Give the server's key "
        "(TRIAGE_HMAC_KEY, or the work folder's serving/hmac.key); if it is the server's, the "
        "row was altered: run `triage audit verify`"
    )


@dataclass(frozen=True)
class AuditFrames:
    """One model's audited rows in a window: served (champion or pinned), their codes (long:
    seq, kind, code) and shadow rows."""

    served: pd.DataFrame
    codes: pd.DataFrame
    shadow: pd.DataFrame


def read_audit(
    url: str, model: str, window: Window, input_names: Sequence[str], page_rows: int = PAGE_ROWS
) -> AuditFrames:
    """Read `model`'s served rows received in `window`, and the shadow rows attached to them
    (`input_names`: the inputs to read from each row's `inputs`)."""
    engine = sa.create_engine(url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine, only=lambda name, _: name in {"audit_trail", "audit_shadow"})
        empty, no_codes = served_frame([], window.time_zone, input_names)
        if "audit_trail" not in tables.tables:
            return AuditFrames(empty, no_codes, shadow_frame([], input_names))
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
        pages = [served_frame(p, window.time_zone, input_names)
                 for p in _pages(engine, statement, page_rows)]  # fmt: skip
        served = pd.concat([p[0] for p in pages], ignore_index=True) if pages else empty
        codes = pd.concat([p[1] for p in pages], ignore_index=True) if pages else no_codes
        for column in FEW_VALUES:  # after the concat: pages' categories differ
            served[column] = served[column].astype("category")
        shadow = shadow_frame([], input_names)
        if "audit_shadow" in tables.tables and len(served):
            table = tables.tables["audit_shadow"]
            low, high = int(served["seq"].min()), int(served["seq"].max())
            statement = (
                sa.select(*(table.c[c] for c in SHADOW_COLUMNS))
                .where(table.c.model_name == model, table.c.trail_seq.between(low, high))
                .order_by(table.c.trail_seq, table.c.model_version)
            )
            parts = [shadow_frame(p, input_names) for p in _pages(engine, statement, page_rows)]
            if parts:
                shadow = pd.concat(parts, ignore_index=True)
                inherited = served[["seq", *INHERITED]]
                shadow = shadow.merge(inherited, on="seq", how="inner", validate="many_to_one")
        return AuditFrames(served, codes, shadow)
    finally:
        engine.dispose()
