"""The audit store's tables (schema 2: a hash-chained trail covering refusals, and idempotency).

| table | holds |
|---|---|
| `audit_trail` | one row per scored or refused patient (batch item), in chain order `seq` |
| `audit_chain_head` | one row (`id` 1): the newest `seq` and its MAC; appenders lock it |
| `idempotency_keys` | one row per client key: fingerprint, state, the stored response |
| `audit_shadow` | one row per (served trail row, shadow version): a silent-run score, MACed |

Schema 1 (`audit_log`, unchained, scored rows only) had different table names on purpose: a work
folder or database that holds it keeps it untouched (nothing here reads, alters or drops it), and
the new tables start an empty chain beside it. Export it with SQL if it is still needed.
`audit_shadow` was added within schema 2: `create_all` adds it to a store that lacks it.
"""

from __future__ import annotations

import sqlalchemy as sa

METADATA = sa.MetaData()

AUDIT = sa.Table(
    "audit_trail",
    METADATA,
    # Assigned by the appender under the chain lock (head + 1), so contiguous: a gap is a deletion.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("item", sa.Integer, nullable=False),  # 0 for a single request; the batch index
    sa.Column("item_request_id", sa.String(64)),  # the client's own id for a batch item
    sa.Column("received_at", sa.String(32), nullable=False),  # UTC, ISO 8601 with microseconds
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(8), nullable=False),  # scored | refused
    sa.Column("reason_codes", sa.Text, nullable=False),  # JSON list: refusal and warning codes
    sa.Column("model_name", sa.String(64)),  # none when the model asked for is unknown
    sa.Column("model_version", sa.String(16)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("patient_pseudonym", sa.String(64)),
    sa.Column("request", sa.Text, nullable=False),  # JSON: the canonical request (see audit.py)
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: canonical analyte values
    sa.Column("warnings", sa.Text, nullable=False),  # JSON list of warning codes
    sa.Column("probability", sa.Float),
    sa.Column("band", sa.String(8)),
    sa.Column("base", sa.Float),
    sa.Column("contributions", sa.Text),  # JSON: feature -> calibrated log-odds
    sa.Column("response", sa.Text, nullable=False),  # JSON: the body sent for this item
    sa.Column("prev_mac", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.UniqueConstraint("request_id", "item", name="uq_trail_request_item"),
)

CHAIN_HEAD = sa.Table(
    "audit_chain_head",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
)

IDEMPOTENCY = sa.Table(
    "idempotency_keys",
    METADATA,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # in_flight | done
    sa.Column("status", sa.Integer),
    sa.Column("media_type", sa.String(64)),
    sa.Column("body", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),  # UNIX seconds of the (latest) claim
)

# A shadow (silent-run) version's score of a served row's record: written in the transaction
# that writes its trail row; its MAC binds it to that row's MAC (serving/audit_shadow.py).
SHADOW = sa.Table(
    "audit_shadow",
    METADATA,
    sa.Column("trail_seq", sa.BigInteger, primary_key=True, autoincrement=False),  # audit_trail.seq
    sa.Column("model_name", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(16), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("shadow", sa.Boolean, nullable=False),  # always True: the shadow flag
    sa.Column("outcome", sa.String(8), nullable=False),  # scored | refused
    sa.Column("reason_codes", sa.Text, nullable=False),  # JSON list: refusal, then warning codes
    sa.Column("warnings", sa.Text, nullable=False),  # JSON list of warning codes
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: canonical values as it read them
    sa.Column("probability", sa.Float),
    sa.Column("band", sa.String(8)),
    sa.Column("base", sa.Float),
    sa.Column("contributions", sa.Text),  # JSON: feature -> calibrated log-odds
    sa.Column("mac", sa.String(64), nullable=False),
)

HEAD_ID = 1
