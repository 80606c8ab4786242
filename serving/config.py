"""Serving configuration: read once, at the edge, from the environment.

| variable | meaning | default |
|---|---|---|
| `TRIAGE_API_KEYS` | comma-separated API keys; hashed on load, the raw keys are not kept | none |
| `TRIAGE_API_KEY_HASHES` | comma-separated SHA-256 hex digests of API keys | none |
| `TRIAGE_HMAC_KEY` | key for pseudonymising patient references | random, kept in (1) |
| `TRIAGE_AUDIT_URL` | SQLAlchemy URL of the audit store | SQLite file in (2) |
| `TRIAGE_MAX_BATCH` | most patients in one batch request | 100 |
| `TRIAGE_MAX_BODY_BYTES` | largest request body accepted, in bytes | (3) |
| `TRIAGE_RATE_LIMIT` | requests per minute per API key (0: no limit) | 0 |
| `TRIAGE_AUTH_FAILURE_LIMIT` | failed authentications a minute per client address (0: none) | 10 |
| `TRIAGE_KEEP_ALIVE_SECONDS` | how long an idle keep-alive connection is kept open | 75 |
| `TRIAGE_SHADOW` | comma-separated shadow versions, `NAME@ALIAS` or `NAME/VERSION` (4) | none |
| `TRIAGE_HOME` | work folder | `var` |

(1) `{TRIAGE_HOME}/serving/hmac.key`; (2) `{TRIAGE_HOME}/serving/audit.db`; (3) sized from the
batch limit, so that a full batch of full-panel patients, pretty-printed, always fits:
`TRIAGE_MAX_BATCH` x 8,000 + 65,536 bytes (865,536 for 100; see `default_body_limit`);
(4) each scores, silently, the records NAME's champion answers (serving/shadow.py); it must be in
the release (`triage release --pin REF`), else the server is not ready and says so.

Once a client address has failed authentication `TRIAGE_AUTH_FAILURE_LIMIT` times in a minute, its
requests get 429 before any key is compared, a right key included (else guessing would still learn
which key is right). Addresses are the TCP peer's: behind a proxy, run uvicorn with
`--forwarded-allow-ips` so that the client's address, not the proxy's, is counted. Both limits are
kept per worker.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HMAC_KEY_FILE = Path("serving") / "hmac.key"  # under the work folder

# Longer than the idle timeout of the usual clients and gateways (httpx 5 s, nginx upstream
# keepalive 60 s, AWS ALB 60 s), so the client always closes an idle connection first. Were the
# server first (uvicorn's default is 5 s, the same as httpx), a request sent just as the server's
# timer fires finds the connection closed, and a POST cannot safely be retried.
KEEP_ALIVE_SECONDS = 75


def serve_command(host: str, port: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The `bentoml serve` command line for the triage service (`triage serve`, drills, benches)."""
    env = os.environ if env is None else env
    keep_alive = int(env.get("TRIAGE_KEEP_ALIVE_SECONDS", KEEP_ALIVE_SECONDS))
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:Triage",
        "--host",
        host,
        "--port",
        str(port),
        "--timeout-keep-alive",
        str(keep_alive),
    ]


# One patient with all 41 catalogue analytes (values like 1234.567, the longest accepted unit, a
# 64-character reference and request id), pretty-printed with `json.dumps(indent=2)` inside a batch
# `{"patients": [...]}`: 3,941 bytes each (5,479 with indent=4, 2,317 compact). The factor covers
# wider indents and CRLF line ends; the headroom covers a FHIR Bundle of a few hundred Observations.
PATIENT_JSON_BYTES = 4_000
BODY_SAFETY_FACTOR = 2
BODY_HEADROOM_BYTES = 65_536


def default_body_limit(max_batch: int) -> int:
    """The default body limit in bytes: a full batch of full-panel patients, pretty-printed."""
    return max_batch * PATIENT_JSON_BYTES * BODY_SAFETY_FACTOR + BODY_HEADROOM_BYTES


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what is stored and compared)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ServingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_hashes: tuple[str, ...] = ()
    hmac_key: SecretStr
    audit_url: str
    max_batch: int = Field(default=100, ge=1, le=10_000)
    max_body_bytes: int = Field(ge=1024)  # default: `default_body_limit(max_batch)`
    rate_limit_per_minute: int = Field(default=0, ge=0)
    auth_failures_per_minute: int = Field(default=10, ge=0)
    shadows: tuple[str, ...] = ()  # TRIAGE_SHADOW refs, resolved against the release

    @model_validator(mode="before")
    @classmethod
    def _body_limit_from_batch(cls, data: Any) -> Any:
        """An absent body limit follows the batch limit (see `default_body_limit`)."""
        if isinstance(data, dict) and data.get("max_body_bytes") is None:
            batch = int(data.get("max_batch", cls.model_fields["max_batch"].default))
            data = {**data, "max_body_bytes": default_body_limit(batch)}
        return data

    @property
    def auth_required(self) -> bool:
        return bool(self.api_key_hashes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingConfig:
        """The configuration from environment variables (see the module docstring)."""
        env = os.environ if env is None else env
        home = Path(env.get("TRIAGE_HOME", "var"))
        hashes = [h.strip().lower() for h in env.get("TRIAGE_API_KEY_HASHES", "").split(",")]
        hashes += [hash_key(k.strip()) for k in env.get("TRIAGE_API_KEYS", "").split(",")]
        body_limit = env.get("TRIAGE_MAX_BODY_BYTES")
        shadow = env.get("TRIAGE_SHADOW", "")
        return cls(
            api_key_hashes=tuple(sorted({h for h in hashes if h and h != hash_key("")})),
            hmac_key=SecretStr(env.get("TRIAGE_HMAC_KEY") or local_hmac_key(home)),
            audit_url=audit_url(env),
            max_batch=int(env.get("TRIAGE_MAX_BATCH", 100)),
            max_body_bytes=int(body_limit) if body_limit else None,
            rate_limit_per_minute=int(env.get("TRIAGE_RATE_LIMIT", 0)),
            auth_failures_per_minute=int(env.get("TRIAGE_AUTH_FAILURE_LIMIT", 10)),
            shadows=tuple(dict.fromkeys(r.strip() for r in shadow.split(",") if r.strip())),
        )


def audit_url(env: Mapping[str, str]) -> str:
    """`TRIAGE_AUDIT_URL`, else the SQLite file in the work folder (`TRIAGE_HOME`)."""
    home = Path(env.get("TRIAGE_HOME", "var"))
    return env.get("TRIAGE_AUDIT_URL") or f"sqlite:///{(home / 'serving' / 'audit.db').resolve()}"


def existing_hmac_key(env: Mapping[str, str]) -> str | None:
    """The server's pseudonymisation key as a reader of its audit trail finds it
    (`TRIAGE_HMAC_KEY`, else the work folder's key file), never making one: a new key would
    pseudonymise nothing the server wrote."""
    if env.get("TRIAGE_HMAC_KEY"):
        return env["TRIAGE_HMAC_KEY"]
    path = Path(env.get("TRIAGE_HOME", "var")) / HMAC_KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def local_hmac_key(home: Path) -> str:
    """A random pseudonymisation key kept (mode 0600) in the work folder, made on first use.

    Keeping it stable keeps one patient's pseudonym stable across restarts on this machine;
    production sets TRIAGE_HMAC_KEY from a secret store instead.
    """
    path = home / HMAC_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    staged = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    try:
        os.link(staged, path)  # atomic: the first worker's key wins, never a half-written one
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        staged.unlink()
    return key
