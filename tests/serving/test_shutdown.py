"""Server lifecycle on real `bentoml serve` processes: `triage serve` stops gracefully on SIGTERM
under load and leaves no process behind, and two servers on one work folder keep their own
metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.audit import AuditStore
from serving.config import ServingConfig
from serving.examples import EXAMPLE_PATIENT
from serving.server import (
    SERVERS_DIR,
    ProcessId,
    Server,
    family,
    free_port,
    is_running,
    signal_all,
    wait_until_ok,
)
from tests.serving.conftest import LOG_DIR, Released

SERVE = [sys.executable, "-m", "training.cli", "serve"]
HMAC = "test-hmac-key-not-a-secret"


class Load:
    """Clients posting scores back to back, each on its own keep-alive connection, recording
    (status or transport error, response request_id)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.done = url, threading.Event()
        self.outcomes: list[tuple[int | str, str | None]] = []
        self.threads = [threading.Thread(target=self._drive) for _ in range(clients)]

    def _drive(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.done.is_set():
                try:
                    response = client.post(f"{self.url}/v1/score", json=EXAMPLE_PATIENT)
                except httpx.TransportError as error:  # refused or closed while stopping
                    self.outcomes.append((type(error).__name__, None))
                    time.sleep(0.02)
                    continue
                ok = response.status_code == 200
                self.outcomes.append(
                    (response.status_code, response.json()["request_id"] if ok else None)
                )

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _end(cli: subprocess.Popen[bytes], server: set[ProcessId]) -> None:
    """Cleanup after a failed test: kill the CLI and what it started, found before the signal
    (orphans of a CLI that did not stop them), by identity, never by name."""
    signal_all(server | family(cli.pid), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        cli.kill()
    cli.wait()


def test_sigterm_under_load_drains_audits_and_leaves_no_process(
    released: Released, tmp_path: Path
) -> None:
    work, port = tmp_path / "var", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TRIAGE_HMAC_KEY": HMAC}  # BENTOML_HOME: the store `released` filled
    with (LOG_DIR / "shutdown-cli.log").open("ab") as log:
        cli = subprocess.Popen(
            [*SERVE, "--workdir", str(work), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server: set[ProcessId] = set()
    try:
        wait_until_ok(f"{url}/readyz", cli, time.monotonic(), timeout=180)
        server |= family(cli.pid)  # the bentoml arbiter and its workers, before the signal
        assert len(server) >= 2, f"an arbiter and at least one worker: {server}"
        with Load(url, clients=4) as load:
            time.sleep(2)
            signalled_after = len(load.outcomes)
            cli.send_signal(signal.SIGTERM)
            code = cli.wait(timeout=90)
        with pytest.raises(httpx.ConnectError):  # refused: nothing listens any more
            httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT)
    finally:
        _end(cli, server)
    assert code == 0, "a graceful stop exits 0"
    assert [p for p in server if is_running(p)] == [], "no process of the server remains"
    statuses = [status for status, _ in load.outcomes]
    assert signalled_after > 0 and statuses.count(200) >= signalled_after, "load was served"
    answered = {status for status in statuses if isinstance(status, int)}
    assert answered == {200}, f"no 5xx (nor any error status) while stopping: {answered}"
    acknowledged = {request_id for _, request_id in load.outcomes if request_id is not None}
    audit_url = ServingConfig.from_env({**env, "TRIAGE_HOME": str(work)}).audit_url
    audited = {row["request_id"] for row in AuditStore(audit_url).rows()}
    assert acknowledged - audited == set(), "every acknowledged score has its audit row"
    assert list((work / SERVERS_DIR).glob("*")) == [], "the server's own BentoML home removed"


def _scores_counted(url: str) -> float:
    """The sum of `triage_scores_total` over its labels in a server's /metrics."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("triage_scores_total{")
    )


def _score(url: str, times: int) -> None:
    for _ in range(times):
        response = httpx.post(f"{url}/v1/score", json=EXAMPLE_PATIENT, timeout=30)
        assert response.status_code == 200, response.text


def test_two_servers_on_one_work_folder_keep_their_own_metrics(
    released: Released, tmp_path: Path
) -> None:
    env = {**os.environ, "TRIAGE_HOME": str(tmp_path / "var"), "TRIAGE_HMAC_KEY": HMAC}
    first = Server(env, log=LOG_DIR / "metrics-first-server.log")
    second = Server(env, log=LOG_DIR / "metrics-second-server.log")
    try:
        first.start(timeout=180)
        _score(first.url, 3)
        assert _scores_counted(first.url) == 3, "the first server counts its own scores"
        second.start(timeout=180)  # BentoML wipes its Prometheus folder on start
        _score(second.url, 5)
        assert _scores_counted(first.url) == 3, "the second's start kept the first's metrics"
        assert _scores_counted(second.url) == 5, "and the second counts only its own"
        homes = {first.home, second.home}
        assert len(homes) == 2 and all(h is not None and h.is_dir() for h in homes)
    finally:
        second.stop()
        first.stop()
    assert list((tmp_path / "var" / SERVERS_DIR).glob("*")) == [], "each home removed on stop"
