"""The replay report describes its cohort as the model card describes a training cohort, and names
the outcome in its own tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from training.cohorts.reader import made_by_simulator as simulated_cohort
from training.replay.outputs import _in_words, cohort_summary


def test_simulator_folder_is_simulated_and_a_user_file_is_not(tmp_path: Path) -> None:
    simulator = tmp_path / "cohorts"
    simulator.mkdir()
    (simulator / "referrals_wide.parquet").write_bytes(b"")
    (simulator / "manifest.json").write_text(json.dumps({"seed": 7, "parameters": {}}))
    assert simulated_cohort(simulator) and simulated_cohort(simulator / "referrals_wide.parquet")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "bloods.csv").write_text("pid\n1\n")
    assert not simulated_cohort(user / "bloods.csv"), "no manifest: a user's file"
    (user / "manifest.json").write_text(json.dumps({"replay": {}}))
    assert not simulated_cohort(user / "bloods.csv"), "another tool's manifest is not its"
    summary = cohort_summary({"path": str(user / "bloods.csv"), "sha256": "ab" * 32, "rows": 1})
    assert summary == {"name": "bloods.csv", "sha256": "ab" * 32, "rows": 1, "simulated": False}


def test_replay_tables_name_the_outcome() -> None:
    what_if = pd.DataFrame({"period": ["2019"], "cancers": [3], "cancers green": [1]})
    renamed = _in_words(what_if, "deaths from cancer")
    assert list(renamed.columns) == ["period", "deaths from cancer", "deaths from cancer green"]
    assert _in_words(what_if, "cancers") is what_if, "cancer models keep their tables"
