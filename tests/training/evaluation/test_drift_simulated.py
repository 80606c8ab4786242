"""Acceptance: a replay of the simulated referral cohort flags only the simulator's injected
changes (training/cohorts/simulator: world.py, extracts.py `inject_artefacts`), and finds the
albumin assay change at lab_c. Standing local practice (lab_c measures plasma viscosity instead of
ESR) is a standing difference between labs, not drift."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from models.predictor import TriagePredictor
from tests.training.pinning import pinned
from training.cohorts.simulator.world import (
    ALBUMIN_ASSAY_CHANGE,
    ALBUMIN_ASSAY_LAB,
    ALT_ASSAY_CHANGE,
    ALT_ASSAY_LAB,
    GDL_LAB,
    GDL_YEARS,
    PV_LAB,
)
from training.evaluation import drift
from training.fit.train import TrainResult
from training.replay.options import ReplayOptions
from training.replay.run import replay_models

# The injected changes: which features move, at which lab, in which years. The albumin assay
# moves what is computed from reported albumin too (globulin, the A/G ratio, adjusted calcium).
ALBUMIN_FAMILY = ("albumin", "globulin", "ag_ratio", "calcium_adjusted")
INJECTED = [
    (ALBUMIN_FAMILY, ALBUMIN_ASSAY_LAB, range(ALBUMIN_ASSAY_CHANGE.year, 2100)),
    (("alt",), ALT_ASSAY_LAB, range(ALT_ASSAY_CHANGE.year, 2100)),
    (("haemoglobin",), GDL_LAB, range(GDL_YEARS[0], GDL_YEARS[1] + 1)),
]


def explained(feature: str, lab: str, period: str) -> bool:
    """Whether a flag is one of the injected changes: at its lab (or at all labs, which the
    change moves too) in the years it applies, or over the whole replay (period `all`)."""
    return any(
        feature in features
        and lab in (at, drift.ALL)
        and (period == drift.ALL or (period.isdigit() and int(period) in years))
        for features, at, years in INJECTED
    )


@dataclass(frozen=True)
class Replayed:
    table: pd.DataFrame  # the drift table
    counts: pd.DataFrame  # the bin counts it came from
    predictor: TriagePredictor


@pytest.fixture(scope="module")
def replayed(
    any_cancer: TrainResult, cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Replayed:
    """The trained model saved and loaded (the per-lab reference goes through predictor.json),
    then the whole simulated cohort replayed through it."""
    tmp = tmp_path_factory.mktemp("drift_replay")
    model = pinned(any_cancer, tmp / "predictor", version="1")
    options = ReplayOptions(cohorts["referrals"], tmp / "out", n_boot=20, num_threads=1)
    result = replay_models([model], options)
    outcome = result.models[0]
    return Replayed(outcome.drift, outcome.summary.drift_counts, model.predictor)


def test_every_drift_flag_is_an_injected_change(
    replayed: Replayed,
) -> None:
    table = replayed.table
    rows = drift.flagged(table)
    unexplained = rows[
        [not explained(*r) for r in zip(rows["feature"], rows["lab"], rows["period"], strict=True)]
    ]
    assert unexplained.empty, f"flags no injected change explains:\n{unexplained.to_string()}"
    # Recall: the albumin assay change at lab_c is found in every year after it.
    albumin = table[(table["feature"] == "albumin") & (table["lab"] == ALBUMIN_ASSAY_LAB)]
    albumin = albumin.set_index("period")
    for year in ("2017", "2018", "2019"):
        assert albumin.loc[year, "psi_flag"] == "major", f"{ALBUMIN_ASSAY_LAB} {year}: 6 g/L lower"
        assert albumin.loc[year, "reference"] == "own lab"
    lines = drift.console_summary(table)
    assert any(line.startswith(f"albumin at {ALBUMIN_ASSAY_LAB}: PSI major in ") for line in lines)


def test_plasma_viscosity_instead_of_esr_is_a_standing_difference(
    replayed: Replayed,
) -> None:
    table, reference = replayed.table, replayed.predictor.reference
    esr = table[(table["feature"] == "esr") & (table["lab"] == PV_LAB)]
    assert (esr["missing_rate"] == 1).all() and not esr["flagged"].any(), "never measured there"
    standing = drift.standing_differences(reference).set_index(["feature", "lab"])
    assert str(standing.loc[("esr", PV_LAB), "what"]).startswith(
        "not measured here (missing 100% vs"
    )
    assert ("plasma_viscosity", PV_LAB) in standing.index
    # Against the pooled reference (a model saved before per-lab ones) the same counts flag it.
    pooled = drift.drift_table(
        replayed.counts, {k: v for k, v in reference.items() if k != "by_lab"}
    )
    esr = pooled[(pooled["feature"] == "esr") & (pooled["lab"] == PV_LAB)]
    assert esr["missingness_flag"].all() and set(esr["reference"]) == {"pooled"}
