"""Test-wide isolation: BentoML's store and the work folder point at a temporary folder.

BentoML reads BENTOML_HOME when it is first imported, so it is set here, before any test module
imports it. Nothing a test does touches the developer's own `var/` or `~/bentoml`.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SCRATCH = tempfile.mkdtemp(prefix="triage-tests-")
LOG_DIR = Path(_SCRATCH) / "logs"
LOG_DIR.mkdir()
os.environ["TRIAGE_TEST_LOG_DIR"] = str(LOG_DIR)
os.environ["BENTOML_HOME"] = os.path.join(_SCRATCH, "bentoml")
os.environ["TRIAGE_HOME"] = os.path.join(_SCRATCH, "var")
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
# No usage telemetry leaves the machine during tests (BentoML and MLflow report by default).
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
# A developer's shared MLflow server is never written to by the tests (each names its own store).
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(_name, None)
for name in ("TRIAGE_API_KEYS", "TRIAGE_API_KEY_HASHES", "TRIAGE_AUDIT_URL", "TRIAGE_HMAC_KEY"):
    os.environ.pop(name, None)

# Secrets and identifiers the tests use: none may ever appear in a log of the run.
SECRETS = (
    "server-test-key-7f3a9c",
    "s3cret-key-1",
    "other-key-2",
    "drill-key-for-tests",
    "test-hmac-key-not-a-secret",
    "server-test-hmac-91b2e4",
    "NHS-943-476-5919",
    "example-patient-0001",
)


# HTTP client libraries log what the *tests* send (fuzzed URLs can carry any string found in the
# code, e.g. an example patient reference); they are not the system under test, so not scanned.
CLIENT_LOGGERS = ("urllib3", "httpx", "httpcore", "requests")


def _not_client(record: logging.LogRecord) -> bool:
    return not record.name.startswith(CLIENT_LOGGERS)


def pytest_configure(config: pytest.Config) -> None:
    """Every log record of the run, at DEBUG, into a file the final scan reads."""
    handler = logging.FileHandler(LOG_DIR / "pytest.log")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_not_client)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(min(logging.getLogger().level or logging.DEBUG, logging.DEBUG))


def leaked_secrets(folder: Path, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """`file:line: secret` for every secret found in any log file under `folder` (its first
    line), so that a CI failure says where to look before the scratch folder is gone."""
    found = []
    for path in sorted(folder.rglob("*.log")):
        text = path.read_text(errors="replace")
        for secret in secrets:
            if secret in text:
                line = text.count("\n", 0, text.index(secret)) + 1
                found.append(f"{path.name}:{line}: {secret}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a key, HMAC key or patient reference reached any log."""
    leaks = leaked_secrets(LOG_DIR)
    files = len(list(LOG_DIR.rglob("*.log")))
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    if leaks:
        print("\nSECRETS FOUND IN LOGS:\n  " + "\n  ".join(leaks))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print(f"\nlog scan: no API key, HMAC key or patient reference in {files} log files")
