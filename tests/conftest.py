"""Test-wide isolation: BentoML's store and the work folder point at a temporary folder.

BentoML reads BENTOML_HOME when it is first imported, so it is set here, before any test module
imports it. Nothing a test does touches the developer's own `var/` or `~/bentoml`.
"""

import os
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="triage-tests-")
os.environ["BENTOML_HOME"] = os.path.join(_SCRATCH, "bentoml")
os.environ["TRIAGE_HOME"] = os.path.join(_SCRATCH, "var")
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
for name in ("TRIAGE_API_KEYS", "TRIAGE_API_KEY_HASHES", "TRIAGE_AUDIT_URL", "TRIAGE_HMAC_KEY"):
    os.environ.pop(name, None)
