"""A local `bentoml serve` process: started on loopback in a session of its own, waited for until
it answers, and ended by its process group, so only what it started is ever ended. Used by the
main job (`make run`), the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.config import serve_command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_ok(
    url: str,
    process: subprocess.Popen[bytes],
    started: float,
    timeout: float,
    interval: float = 0.1,
) -> float:
    """Poll `url` until it answers 200; the seconds since `started` (a `time.monotonic()`).

    Raises RuntimeError if `process` exits first and TimeoutError after `timeout` seconds."""
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready in {timeout} s")


@dataclass
class Server:
    """A `bentoml serve` process this module started (and only ends itself or its own group)."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log: Path | None = None  # where the server's output goes (None: discarded)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90, probe: str = "/readyz") -> float:
        """Start the server and wait until `probe` answers 200; returns the seconds it took."""
        started = time.monotonic()
        output = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            serve_command("127.0.0.1", self.port, self.env),
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not isinstance(output, int):
            output.close()  # the child holds its own copy of the descriptor
        return wait_until_ok(f"{self.url}{probe}", self.process, started, timeout)

    def kill_hard(self) -> None:
        """SIGKILL the server and its workers (its process group, which this server started in
        a session of its own): a crash, not a shutdown."""
        if self.process is None:
            return
        # BentoML's workers run in process groups of their own: found before the kill (after
        # it they are orphans, adopted by init) and killed too, or they outlive the server.
        workers = descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_hard()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux: /proc's children lists; empty elsewhere)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the task ended meanwhile, or no /proc
                continue
            found += children
            pending += children
    return found
