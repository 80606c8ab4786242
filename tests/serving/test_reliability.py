"""Reliability drills on a real server (slow tier): mixed load, and kill -9 under load."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.drills import crash_drill, drill_env, load_drill
from tests.serving.conftest import LOG_DIR, Released

KEY = "drill-key-for-tests"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def server_lines(log: Path, lines: int = 40) -> str:
    """The last lines of a drill server's output, access-log lines left out."""
    said = [
        line for line in log.read_text(errors="replace").splitlines() if "] 127.0.0.1:" not in line
    ]
    return "\n".join(said[-lines:])


@pytest.mark.slow
def test_mixed_load_loses_nothing(released: Released, tmp_path: Path) -> None:
    log = LOG_DIR / "drill-load.log"
    figures = load_drill(drill_env(tmp_path, KEY), HEADERS, clients=16, seconds=15, log=log)
    print(f"load drill: {figures}")
    said = f"{figures}\nthe server's last lines:\n{server_lines(log)}"  # pytest -q shortens a dict
    assert figures["valid_errors"] == 0 and figures["transport_errors"] == 0, said
    assert figures["invalid_other"] == 0, "every invalid request got a 4xx, never a 5xx"
    assert figures["audit_rows_equal_200s"], said
    assert not figures["workers_restarted"], said
    assert figures["max_memory_growth"] < 0.10, figures


@pytest.mark.slow
def test_kill_9_under_load_keeps_every_acknowledged_row(released: Released, tmp_path: Path) -> None:
    log = LOG_DIR / "drill-crash.log"
    figures = crash_drill(drill_env(tmp_path, KEY), HEADERS, clients=16, seconds=8, log=log)
    assert figures["responses_200"] > 0, figures
    assert figures["integrity_problems"] == [], figures
    assert figures["ok_requests_missing_from_audit"] == 0, "a client's 200 always has its row"
    assert not processes_of(tmp_path), "no worker of the killed or restarted server outlives it"


def processes_of(home: Path) -> list[int]:
    """PIDs of live processes started with this work folder as their TRIAGE_HOME (Linux)."""
    marker = f"TRIAGE_HOME={home}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found
