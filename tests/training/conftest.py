"""Small simulated cohorts and the models trained on them, shared by the training tests (once
per session: fitting is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.spec import load_spec
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, TrainResult, train_model

N_REFERRALS = 24_000
N_POPULATION = 600_000
N_BOOT = 20


@pytest.fixture(scope="session")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohorts")
    run_simulation(cohort="referrals", n=N_REFERRALS, seed=5, out=root / "referrals")
    run_simulation(cohort="myeloma", n=N_POPULATION, seed=5, out=root / "myeloma")
    return {"referrals": root / "referrals", "myeloma": root / "myeloma"}


@pytest.fixture(scope="session")
def any_cancer(cohorts: dict[str, Path]) -> TrainResult:
    return train_model(load_spec("any_cancer"), TrainOptions(cohorts["referrals"], n_boot=N_BOOT))


@pytest.fixture(scope="session")
def myeloma(cohorts: dict[str, Path]) -> TrainResult:
    return train_model(load_spec("myeloma"), TrainOptions(cohorts["myeloma"], n_boot=N_BOOT))
