"""Reliability drills against a real server on loopback: sustained load, and kill -9 under load.

`load`: N concurrent clients for S seconds, a mix of valid and invalid requests; reports errors on
valid requests, p99 latency, worker memory growth (after warm-up) and audit rows vs 200 responses.
`crash`: the same load, the server killed with SIGKILL part-way, restarted on the same audit store;
reports the store's integrity check and whether every request whose client got a 200 has its row.
Every loop is bounded in count and time; all traffic stays on 127.0.0.1; only the processes
started here are ended. Used by `benchmarks/bench_reliability.py`, `bench_serve.py` and the slow
tests: a dev tool (it needs `psutil`, from the `dev` extra), outside the runtime packages.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from serving.audit import AuditStore
from serving.config import ServingConfig
from serving.examples import EXAMPLE_PATIENT
from serving.server import Server

INVALID_SHARE = 0.2
MAX_REQUESTS = 200_000  # a hard bound on any one drill


def worker_rss_mb(server: Server) -> dict[int, float]:
    """Resident memory (MB) of each of the server's BentoML worker processes, by PID."""
    if server.process is None or server.process.poll() is not None:
        return {}
    out = {}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                out[child.pid] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return out


def http_request(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 keep-alive request, encoded once (JSON body if given)."""
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}"]
    lines += [
        f"{k}: {v}" for k, v in {"Content-Type": "application/json", **(headers or {})}.items()
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("response without Content-Length")


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client on one loopback socket, for latency figures.

    httpx spends a few tenths of a millisecond of Python per request; this client sends bytes
    encoded once and reads one Content-Length-framed response, so a latency figure is the
    server's (plus loopback), not the client library's.
    """

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one request/response exchange."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = _content_length(head)
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return int(head.split(b" ", 2)[1]), rest[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


async def saturate(port: int, request: bytes, clients: int, seconds: float) -> tuple[int, int]:
    """`clients` keep-alive connections sending `request` back to back for `seconds`.

    Returns (responses, non-200 responses). The client is a few lines of asyncio on raw sockets
    so that it takes little of the CPU it shares with the server.
    """
    done = errors = 0
    deadline = time.monotonic() + seconds

    async def client(previous: asyncio.Event | None, started: asyncio.Event) -> None:
        nonlocal done, errors
        if previous is not None:
            await previous.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline and done < MAX_REQUESTS:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                started.set()
                done += 1
                errors += head.split(b" ", 2)[1] != b"200"
        finally:
            started.set()
            writer.close()

    # Clients join one after another (each once the previous one has its first answer), as
    # independent callers would, not as one burst that a single worker's accept loop takes whole.
    events = [asyncio.Event() for _ in range(clients)]
    await asyncio.gather(*(client(events[i - 1] if i else None, events[i]) for i in range(clients)))
    return done, errors


def _invalid(i: int) -> dict[str, Any]:
    request = copy.deepcopy(EXAMPLE_PATIENT)
    kind = i % 4
    if kind == 0:
        request["analytes"]["haemoglobin"] = {"value": 9.8, "unit": "g/L"}  # out of limits
    elif kind == 1:
        request["analytes"]["haemoglobin"]["unit"] = "furlongs"  # unknown unit
    elif kind == 2:
        request["age"] = 11  # ineligible
    else:
        request["colour"] = "red"  # not in the schema
    return request


@dataclass
class LoadResult:
    seconds: float
    sent: int = 0
    valid_ok: int = 0
    valid_errors: int = 0
    invalid_4xx: int = 0
    invalid_other: int = 0
    transport_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    ok_request_ids: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, 99)) if self.latencies else 0

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, 50)) if self.latencies else 0


async def run_load(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    kill_after: float | None = None,
    kill: Any = None,
) -> LoadResult:
    """`clients` concurrent loops for `seconds`; optionally call `kill()` after `kill_after` s."""
    result = LoadResult(seconds)
    deadline = time.monotonic() + seconds
    counter = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.monotonic() < deadline and result.sent < MAX_REQUESTS:
            counter += 1
            valid = (counter % 10) >= INVALID_SHARE * 10
            request = copy.deepcopy(EXAMPLE_PATIENT) if valid else _invalid(counter)
            request_id = uuid.uuid4().hex
            request["request_id"] = request_id
            started = time.perf_counter()
            result.sent += 1
            try:
                response = await client.post(f"{url}/v1/score", json=request, headers=headers)
            except httpx.HTTPError:
                result.transport_errors += 1
                await asyncio.sleep(0.05)
                continue
            elapsed = time.perf_counter() - started
            if valid:
                if response.status_code == 200:
                    result.valid_ok += 1
                    result.latencies.append(elapsed)
                    result.ok_request_ids.append(request_id)
                else:
                    result.valid_errors += 1
            elif 400 <= response.status_code < 500:
                result.invalid_4xx += 1
            else:
                result.invalid_other += 1

    async def killer() -> None:
        if kill_after is not None and kill is not None:
            await asyncio.sleep(kill_after)
            await asyncio.to_thread(kill)

    # httpx's keep-alive expiry (5 s) stays below the server's (serving.config.KEEP_ALIVE_SECONDS),
    # as any client's should: the client closes an idle connection before the server can.
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=5.0
    )
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)), killer())
    return result


def audit_store(env: dict[str, str]) -> AuditStore:
    """The server's audit store, opened with its key (so the chain's MACs are checked too)."""
    config = ServingConfig.from_env(env)
    return AuditStore(config.audit_url, config.hmac_key.get_secret_value())


def scored_rows(store: AuditStore) -> int:
    """Audit rows of scored patients (refusals have rows of their own)."""
    return sum(row["outcome"] == "scored" for row in store.rows())


def load_drill(
    env: dict[str, str],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    log: Path | None = None,
) -> dict[str, Any]:
    """Sustained mixed load; memory growth measured per worker after a warm-up of a third of the
    time (the same load: allocator pools and caches fill), so what is left to grow is a leak.

    (BentoML's own request timeout kept every request's context for 30 s, ~25 MB per worker under
    this load, which showed here as a step of that size; `serving.middleware.RequestDeadline`
    replaces it.)"""
    server = Server(env, log=log)
    try:
        ready = server.start()
        store = audit_store(env)
        warm = asyncio.run(run_load(server.url, headers, clients, max(5.0, seconds / 3)))
        before_rows = scored_rows(store)
        rss_before = worker_rss_mb(server)
        result = asyncio.run(run_load(server.url, headers, clients, seconds))
        rss_after = worker_rss_mb(server)
        rows = scored_rows(store) - before_rows
    finally:
        server.stop()
    # Per worker (same PID before and after); a worker that restarted would show as missing.
    growth = max(
        (rss_after[pid] / rss_before[pid] - 1 for pid in rss_before if pid in rss_after),
        default=0.0,
    )
    return {
        "ready_seconds": round(ready, 2),
        "warm_up_requests": warm.sent,
        "requests": result.sent,
        "requests_per_second": round(result.sent / seconds, 1),
        "valid_ok": result.valid_ok,
        "valid_errors": result.valid_errors,
        "invalid_4xx": result.invalid_4xx,
        "invalid_other": result.invalid_other,
        "transport_errors": result.transport_errors,
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "worker_rss_mb_before": [round(rss_before[pid]) for pid in sorted(rss_before)],
        "worker_rss_mb_after": [round(rss_after.get(pid, 0)) for pid in sorted(rss_before)],
        "workers_restarted": set(rss_before) != set(rss_after),
        "max_memory_growth": round(growth, 4),
        "audit_rows": rows,
        "audit_rows_equal_200s": rows == result.valid_ok,
    }


def crash_drill(
    env: dict[str, str],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    log: Path | None = None,
) -> dict[str, Any]:
    """kill -9 the server part-way through load; restart; check the audit store."""
    server = Server(env, log=log)
    try:
        server.start()
        result = asyncio.run(
            run_load(
                server.url, headers, clients, seconds, kill_after=seconds / 2, kill=server.kill_hard
            )
        )
        restarted = Server(env, port=server.port, log=log)
        restarted.start()
        restarted.stop()
    finally:
        server.stop()
    store = audit_store(env)
    logged = {row["request_id"] for row in store.rows()}
    missing = [r for r in result.ok_request_ids if r not in logged]
    return {
        "requests": result.sent,
        "responses_200": result.valid_ok,
        "transport_errors_after_kill": result.transport_errors,
        "integrity_problems": store.integrity_problems(),
        "ok_requests_missing_from_audit": len(missing),
        "audit_rows": len(logged),
    }


def drill_env(home: Path, api_key: str) -> dict[str, str]:
    """Environment for a drill server: its own work folder and API key."""
    return {**os.environ, "TRIAGE_HOME": str(home), "TRIAGE_API_KEYS": api_key}
