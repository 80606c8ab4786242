"""A local `bentoml serve` process: started on loopback, waited for until it answers, and stopped
gracefully, leaving no process behind. Used by `triage serve` (`run_foreground`), the main job
(`make run`), the tests and the benchmarks (`Server`).

How BentoML 1.4 stops (read in its sources, checked by tests/serving/test_shutdown.py): SIGTERM,
SIGINT or SIGQUIT to the `bentoml serve` process (a circus arbiter) makes it quit
(circus/sighandler.py `handle_term` -> `quit`); it sends each worker SIGTERM (the watcher's
`stop_signal`) and waits for it for BentoML's `graceful_timeout` of 86,400 s
(bentoml/serving.py `create_watcher`); a worker is uvicorn, which on SIGTERM stops accepting,
closes idle keep-alive connections, lets in-flight requests finish and runs the app's shutdown
(uvicorn/server.py `handle_exit`, `shutdown`). The arbiter closes the listening socket only after
every worker has ended, then exits. Workers run in sessions of their own (circus/process.py calls
`os.setsid`): ending the arbiter's group does not reach them, and once the arbiter is gone they are
orphans nobody can find. So every stop here first collects the server's descendants, sends the
arbiter SIGTERM, waits a grace period, and only then SIGKILLs whatever of them is left.

Each server also gets a BentoML home of its own: BentoML keeps the Prometheus multiprocess files
in `{BENTOML_HOME}/prometheus_multiproc_dir` (bentoml/_internal/configuration/containers.py) and
wipes that folder on start (bentoml/serving.py `ensure_prometheus_dir`), so a second server on the
same home would delete the first's metrics. The own home links to the shared store's models.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from serving.config import serve_command

METRICS_DIR = "prometheus_multiproc_dir"  # BentoML's folder under its home, wiped on start
SERVERS_DIR = Path("serving") / "servers"  # per-server BentoML homes, under the work folder
GRACE_SECONDS = 30.0
FORCED_EXIT = 128 + signal.SIGKILL  # the shell's code for a process ended by SIGKILL


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


# --- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessId:
    """A pid with its start time (clock ticks after boot): a pid reused by an unrelated process
    after ours ended has another start time, so it is never taken for ours and never signalled."""

    pid: int
    started: int


def identify(pid: int) -> ProcessId | None:
    """The running process `pid` (None if gone, a zombie, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # ended, waiting to be reaped: nothing left to stop
        return None
    return ProcessId(pid, int(fields[19]))  # field 22 of proc(5): starttime


def is_running(process: ProcessId) -> bool:
    return identify(process.pid) == process


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


def family(pid: int) -> set[ProcessId]:
    """The running descendants of `pid`, each identified (see `ProcessId`)."""
    return {found for child in descendants(pid) if (found := identify(child)) is not None}


def signal_all(processes: set[ProcessId], signum: int) -> None:
    """Send `signum` to each process still running as itself."""
    for process in processes:
        if is_running(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)


def wait_all(
    process: subprocess.Popen[bytes],
    known: set[ProcessId],
    deadline: float,
    abort: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until `process` and every process in `known` has ended (True), or `deadline` (a
    `time.monotonic()`) passes or `abort()` says so (False). While `process` runs, its new
    descendants join `known` (updated in place), so none is lost when it exits."""
    while True:
        if process.poll() is None:
            known |= family(process.pid)
        elif not any(is_running(p) for p in known):
            return True
        if time.monotonic() >= deadline or abort():
            return False
        time.sleep(0.05)


def stop_server(
    process: subprocess.Popen[bytes],
    grace: float = GRACE_SECONDS,
    known: set[ProcessId] | None = None,
    abort: Callable[[], bool] = lambda: False,
) -> bool:
    """Stop a `bentoml serve` process gracefully and leave nothing of it running.

    SIGTERM to the arbiter (which drains and stops its workers, see the module docstring); after
    `grace` seconds (or when `abort()` turns true), SIGKILL to it and to every descendant seen.
    Descendants are collected before the signal: once the arbiter is gone they are orphans.
    True when everything ended within the grace period."""
    known = known if known is not None else set()
    if process.poll() is None:
        known |= family(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    else:  # the arbiter is gone already: its leftover workers get the signal themselves
        signal_all(known, signal.SIGTERM)
    if wait_all(process, known, time.monotonic() + grace, abort):
        return True
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    signal_all(known, signal.SIGKILL)
    process.wait()
    return False


# --- a BentoML home per server ------------------------------------------------------------------


def server_env(env: Mapping[str, str], key: str) -> tuple[dict[str, str], Path]:
    """`env` with `BENTOML_HOME` set to a home of this server's own, and that home.

    The home, `{TRIAGE_HOME}/serving/servers/{key}` (`key` starts with the pid of the process
    that owns the server), links every entry of the shared BentoML home (the model store) except
    the Prometheus multiprocess folder, which BentoML then creates and wipes there, for this
    server only. Homes of owners no longer running are removed first."""
    shared = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").resolve()
    servers = (Path(env.get("TRIAGE_HOME", "var")) / SERVERS_DIR).resolve()
    remove_stale_homes(servers)
    home = servers / key
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (shared / "models").mkdir(parents=True, exist_ok=True)  # the link must point at a folder
    for entry in shared.iterdir():
        if entry.name != METRICS_DIR:
            (home / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return {**env, "BENTOML_HOME": str(home)}, home


def remove_stale_homes(servers: Path) -> None:
    """Remove per-server homes whose owner (the pid their name starts with) has ended."""
    for home in servers.glob("*"):
        owner = home.name.split("-")[0]
        if owner.isdigit() and identify(int(owner)) is None:
            shutil.rmtree(home, ignore_errors=True)


# --- the foreground server of `triage serve` ----------------------------------------------------


@dataclass
class StopRequests:
    """The stop signals (SIGTERM, SIGINT) received: the first stops gracefully, a second
    (an impatient Ctrl-C twice) ends the server at once."""

    count: int = 0

    def receive(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


def _terminate_with_parent() -> None:
    """In the server process before it runs (Linux): SIGTERM it when its parent dies, so a
    SIGKILLed `triage serve` still stops its server gracefully instead of orphaning it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_foreground(
    command: list[str], env: Mapping[str, str], *, grace: float = GRACE_SECONDS
) -> int:
    """Run a server until it exits or this process gets SIGTERM/SIGINT, then stop it gracefully.

    On a stop signal the server stops taking connections and finishes its in-flight requests
    (see the module docstring); what is still running after `grace` seconds is killed. Returns 0
    after a graceful stop, 137 when it had to kill, else the server's own exit code."""
    requests = StopRequests()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, requests.receive) for signum in stop_signals}
    run_env, home = server_env(env, str(os.getpid()))
    known: set[ProcessId] = set()
    try:
        process = subprocess.Popen(
            command,
            env=run_env,
            start_new_session=True,  # a terminal's Ctrl-C reaches this process only, not twice
            preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
        )
        while process.poll() is None and not requests.count:
            known = {p for p in known if is_running(p)} | family(process.pid)
            time.sleep(0.1)
        if requests.count:
            graceful = stop_server(process, grace, known, abort=lambda: requests.count > 1)
            return 0 if graceful else FORCED_EXIT
        code = process.returncode  # it ended by itself: its workers must not outlive it
        stop_server(process, grace, {p for p in known if is_running(p)})
        return code if code >= 0 else 128 - code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not any(is_running(p) for p in known):
            shutil.rmtree(home, ignore_errors=True)


# --- a server for tests, benchmarks and the main job --------------------------------------------


@dataclass
class Server:
    """A `bentoml serve` process this module started (and only ever ends what it started)."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log: Path | None = None  # where the server's output goes (None: discarded)
    process: subprocess.Popen[bytes] | None = None
    home: Path | None = None  # this server's own BentoML home (see `server_env`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90, probe: str = "/readyz") -> float:
        """Start the server and wait until `probe` answers 200; returns the seconds it took."""
        started = time.monotonic()
        env, self.home = server_env(self.env, f"{os.getpid()}-{self.port}")
        output = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            serve_command("127.0.0.1", self.port, env),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not isinstance(output, int):
            output.close()  # the child holds its own copy of the descriptor
        return wait_until_ok(f"{self.url}{probe}", self.process, started, timeout)

    def kill_hard(self) -> None:
        """SIGKILL the server and its workers: a crash, not a shutdown (its home is kept, as a
        crashed server's would be)."""
        if self.process is None:
            return
        workers = family(self.process.pid)  # before the kill: after it they are orphans
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        signal_all(workers, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, grace: float = GRACE_SECONDS) -> bool:
        """Stop gracefully (in-flight requests finish), killing what is left after `grace`
        seconds; True when nothing had to be killed."""
        if self.process is None:
            return True
        graceful = stop_server(self.process, grace)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        return graceful
