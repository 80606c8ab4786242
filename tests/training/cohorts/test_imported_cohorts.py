"""An imported cohort is a cohort like any other: the simulated referral cohort exported as an
OMOP CDM instance and as FHIR Bulk NDJSON, imported back, trains the same model as the native
long cohort (the same rows in each period, the same calibrated predictions, thresholds and
evaluation) and replays to the same files on
Spark as locally. The importers' own tests (test_omop.py, test_fhir_bulk.py) check the rules and
that replay scores equal the native cohort's; this checks the other readers of a cohort folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.small_specs import small_cohort_spec
from tests.training.pinning import pinned
from tests.training.replay.test_spark_parity import N_BOOT, _assert_same_outputs, _replay_both
from training.cohorts.standard.fhir_bulk_export import write_fhir_bulk
from training.cohorts.standard.fhir_bulk_import import import_fhir_bulk
from training.cohorts.standard.omop_export import write_omop
from training.cohorts.standard.omop_import import import_omop
from training.fit.train import TrainOptions, TrainResult, train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def native(cohorts: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = cohorts["referrals"]
    return (
        pd.read_parquet(folder / "referrals_index.parquet"),
        pd.read_parquet(folder / "referrals_results.parquet"),
    )


@pytest.fixture(scope="module")
def from_omop(
    native: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("omop_round_trip")
    write_omop(*native, root / "omop", table_format="csv")
    import_omop(root / "omop", root / "cohort")
    return root / "cohort"


@pytest.fixture(scope="module")
def from_fhir(
    native: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("fhir_round_trip")
    write_fhir_bulk(*native, root / "bulk")
    import_fhir_bulk(root / "bulk", root / "cohort")
    return root / "cohort"


def _train(folder: Path) -> TrainResult:
    options = TrainOptions(folder, source="long", n_boot=N_BOOT, num_threads=2)
    return train_model(small_cohort_spec("lower_gi"), options)


def test_training_on_imported_cohorts_gives_the_native_model(
    cohorts: dict[str, Path], from_omop: Path, from_fhir: Path
) -> None:
    folders = {"native": cohorts["referrals"], "omop": from_omop, "fhir": from_fhir}
    trained = {name: _train(folder) for name, folder in folders.items()}
    reference = trained["native"]
    for name in ("omop", "fhir"):
        result = trained[name]
        for period in ("train", "calibrate", "evaluate"):
            assert len(result.periods[period]) == len(reference.periods[period]), (name, period)
        assert result.predictor.thresholds == reference.predictor.thresholds, name
        a = result.predictions.sort_values("referral_id", ignore_index=True)
        b = reference.predictions.sort_values("referral_id", ignore_index=True)
        np.testing.assert_array_equal(a["probability"], b["probability"], err_msg=name)
        assert result.evaluation["auc"] == reference.evaluation["auc"], name


def test_spark_replays_an_imported_cohort_to_the_local_engines_files(
    any_cancer: TrainResult, from_omop: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("pyspark")
    models = [pinned(any_cancer, tmp_path_factory.mktemp("v7"), "7")]
    results = _replay_both(models, tmp_path_factory.mktemp("imported_out"), from_omop)
    names = _assert_same_outputs(results)
    assert "scores.parquet" in names and "metrics.json" in names
