"""No behaviour change, shown: a fixed pipeline (simulate, train, promote, release, replay, pyfunc,
HTTP API) gives exactly the outputs recorded in `tests/golden/pipeline.json`.

The reference was recorded before the layout of `training/` was reshaped; a change that alters any
cohort, metric, score file, report text or API response fails here, naming where. When a change is
*meant* to alter outputs, compare two runs with `python -m tests.golden.compare`, re-record with
`python -m tests.golden.snapshot --out DIR --record` and say why in the commit message.

The comparison is exact, so it holds only where the recording's numeric libraries and CPU features
are the same (`snapshot.environment`): elsewhere the last bits of a float may legitimately differ,
and the test is skipped, naming what differs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden.snapshot import GOLDEN, differences, environment

ROOT = Path(__file__).resolve().parents[1]


def test_the_pipeline_gives_the_recorded_outputs(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    here = environment()
    if expected["environment"] != here:
        pytest.skip(
            "recorded in another numeric environment: "
            + "; ".join(differences(expected["environment"], here))
        )
    out = tmp_path / "golden"
    done = subprocess.run(
        [sys.executable, "-m", "tests.golden.snapshot", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"the pipeline failed:\n{done.stderr[-4000:]}"
    actual = json.loads((out / "snapshot.json").read_text())
    found = differences(expected, actual)
    assert not found, f"{len(found)} outputs differ from the recording:\n" + "\n".join(found[:40])
