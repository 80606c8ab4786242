"""A user's own cohort, laid out the way the outside world lays it out: own column names (a
patient id called `pid`, `gender` coded F/M), US units (Hb in g/dL, creatinine in mg/dL), index
dates known only to the year and an outcome column with another name. From a spec alone, it
trains, validates, replays and compares, with honest splits and metrics within noise of the same
cohort in the project's own layout."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from models.analytes import CATALOGUE
from models.scoring import score_frame
from models.spec import load_spec, parse_spec
from models.units import from_canonical
from training.cli import app
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.runs import log_training
from training.registry.store import Tracking
from training.replay.options import ReplayOptions
from training.replay.run import replay

runner = CliRunner()
N_REFERRALS = 24_000
N_BOOT = 20
RENAMES = {"patient_id": "pid", "age": "age_years", "cancer": "cancer_12m", "pathway": "route"}
COLUMN_MAP = {
    "pid": {"code": "patient_id"},
    "age_years": {"code": "age"},
    "gender": {"code": "sex", "values": {"F": "female", "M": "male"}},
    "referral_year": {"code": "index_date"},
    "cancer_12m": {"code": "outcome"},
    "route": {"code": "pathway"},
    "hb_g_dl": {"code": "haemoglobin", "unit": "g/dL"},
    "creat_mg_dl": {"code": "creatinine", "unit": "mg/dL"},
}


# A derived feature of the spec's own (the CRP/albumin ratio, a known inflammation marker).
CRP_ALBUMIN = {
    "name": "crp_albumin_ratio",
    "title": "CRP/albumin ratio",
    "ratio": ["crp", "albumin"],
}


def foreign_layout(native: pd.DataFrame) -> pd.DataFrame:
    """The simulator's wide cohort in a stranger's layout (same people, same values)."""
    hb = CATALOGUE["haemoglobin"]
    hb_g_l = np.where(native["haemoglobin_unit"].astype(object) == "g/dL",
                      native["haemoglobin"] * 10, native["haemoglobin"])  # fmt: skip
    creatinine = CATALOGUE["creatinine"]
    dropped = [
        *("haemoglobin", "haemoglobin_unit", "creatinine", "sex", "index_date", "true_risk"),
        *("sample_date", "diagnosis_date", *native.filter(like="artefact_").columns),
        *("true_risk_reachable", "low_threshold", *native.filter(like="condition_").columns),
    ]
    frame = native.drop(columns=dropped).rename(columns=RENAMES)
    return frame.assign(
        gender=native["sex"].astype(object).map({"female": "F", "male": "M"}),
        referral_year=native["index_date"].dt.year.astype(str),
        hb_g_dl=[from_canonical(hb, v, "g/dL") for v in hb_g_l],
        creat_mg_dl=[from_canonical(creatinine, v, "mg/dL") for v in native["creatinine"]],
    )


def foreign_spec_data() -> dict:
    data = load_spec("any_cancer").model_dump(mode="json", exclude_defaults=True)
    data.update(
        name="my_referrals", title="My referral cohort", column_map=copy.deepcopy(COLUMN_MAP)
    )
    data["features"]["derived"] = [*data["features"]["derived"], CRP_ALBUMIN]
    return data


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    run_simulation(cohort="referrals", n=N_REFERRALS, seed=11, out=root / "native")
    native = pd.read_parquet(root / "native" / "referrals_wide.parquet")
    foreign_layout(native).to_csv(root / "my_cohort.csv", index=False)
    (root / "my_spec.yaml").write_text(yaml.safe_dump(foreign_spec_data(), sort_keys=False))
    return {
        "native": root / "native",
        "foreign": root / "my_cohort.csv",
        "spec": root / "my_spec.yaml",
    }


@pytest.fixture(scope="module")
def trained(cohorts: dict[str, Path]) -> dict[str, TrainResult]:
    specs = {"native": load_spec("any_cancer"), "foreign": load_spec(cohorts["spec"])}
    return {
        name: train_model(spec, TrainOptions(cohorts[name], n_boot=N_BOOT))
        for name, spec in specs.items()
    }


def test_the_foreign_layout_keeps_every_row_the_native_one_keeps(trained) -> None:
    native, foreign = trained["native"].provenance, trained["foreign"].provenance
    assert foreign["n_input"] == native["n_input"], "the same people are read"
    assert foreign["exclusions"] == native["exclusions"], (
        "g/dL and mg/dL are converted, F/M are read as sexes: the same rows are excluded, for "
        f"the same reasons ({foreign['exclusions']} vs {native['exclusions']})"
    )


def test_year_only_dates_are_reported_and_leave_the_early_stopping_share_at_15_percent(
    trained,
) -> None:
    result = trained["foreign"]
    cohort = result.provenance["cohort"]
    assert cohort["date_precision"] == "year", "year-only index dates are recognised as such"
    assert cohort["simulated"] is False, "a user's CSV is not described as simulated data"
    assert any("only to the year" in w for w in cohort["warnings"]), cohort["warnings"]
    train_ids = set(result.periods["train"]["patient_id"])
    stop_ids = set(result.periods["stop"]["patient_id"])
    share = len(stop_ids) / (len(train_ids) + len(stop_ids))
    assert 0.13 <= share <= 0.17, f"early stopping holds ~15% of training patients, not {share:.1%}"


def test_patients_never_cross_periods(trained) -> None:
    periods = trained["foreign"].periods
    names = list(periods)
    for i, first in enumerate(names):
        for later in names[i + 1 :]:
            shared = set(periods[first]["patient_id"]) & set(periods[later]["patient_id"])
            assert not shared, f"{len(shared)} patients are in both {first} and {later}"


def test_metrics_are_within_noise_of_the_native_layout(trained) -> None:
    native, foreign = trained["native"].evaluation, trained["foreign"].evaluation
    assert foreign["n"] == native["n"] and foreign["events"] == native["events"], (
        "year-only dates assign the same evaluation rows (the periods are whole years)"
    )
    gap = abs(foreign["auc"]["estimate"] - native["auc"]["estimate"])
    half_width = (native["auc"]["high"] - native["auc"]["low"]) / 2
    assert gap < half_width, (
        f"AUC {foreign['auc']['estimate']:.3f} (foreign) vs {native['auc']['estimate']:.3f} "
        f"(native) differs by more than the CI half-width {half_width:.3f}"
    )
    for name in ("native", "foreign"):
        base = trained[name].baseline_evaluation["auc"]["estimate"]
        assert base > 0.6, f"the baseline ({name}) is fitted on every training row: AUC {base}"


def test_validate_train_compare_and_replay_work_from_the_spec_alone(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    work = ["--workdir", str(tmp_path / "var")]
    spec, csv = str(cohorts["spec"]), str(cohorts["foreign"])
    checked = runner.invoke(app, ["validate", csv, "--spec", spec])
    assert checked.exit_code == 0, checked.output
    assert "not recognised" not in checked.output, "every column is mapped or known"

    trained = runner.invoke(
        app, ["train", "--spec", spec, "--cohort", csv, "--n-boot", str(N_BOOT), *work]
    )
    assert trained.exit_code == 0, trained.output
    assert "registered version 1" in trained.output
    assert "index dates are known only to the year" in trained.output, "coarse dates are said"
    report = (tmp_path / "var" / "reports" / "my_referrals-1.html").read_text()
    assert "crp_albumin_ratio" in report, "the spec's own derived feature is in the model card"
    assert "Simulated data" not in report and "my_cohort.csv" in report, "the card names the file"

    compared = runner.invoke(app, ["compare", "--model", "my_referrals", "--n-boot", "20", *work])
    assert compared.exit_code == 0, compared.output

    out = tmp_path / "replay"
    replayed = runner.invoke(app, [
        "replay", "--model", "my_referrals@challenger", "--cohort", csv, "--out", str(out),
        "--period", "evaluate", "--n-boot", str(N_BOOT), *work,
    ])  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    scores = pd.read_parquet(next(out.glob("scores*.parquet")))
    years = pd.to_datetime(scores["index_date"]).dt.year
    assert years.between(2017, 2019).all(), "--period evaluate replays the evaluation years only"
    assert scores["patient_id"].isin(pd.read_csv(csv)["pid"]).all(), "pid is the patient id"
    assert (scores["status"] == "scored").mean() > 0.9, "the mapped rows are scored"


def test_a_spec_that_maps_a_column_to_an_unknown_target_is_refused() -> None:
    data = foreign_spec_data() | {"column_map": {"pid": {"code": "patient_number"}}}
    with pytest.raises(ValueError, match="unknown target 'patient_number'"):
        parse_spec(data)


@pytest.mark.slow
def test_spark_replays_the_foreign_layout_as_the_local_engine_does(
    trained, cohorts: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("pyspark")
    tracking = Tracking(tmp_path / "var")
    version = log_training(trained["foreign"], tracking).version
    ref = [f"my_referrals/{version}"]
    common = {"n_boot": N_BOOT, "period": "evaluate"}
    local = replay(tracking, ref, ReplayOptions(cohorts["foreign"], tmp_path / "local", **common))
    spark = replay(tracking, ref, ReplayOptions(
        cohorts["foreign"], tmp_path / "spark", engine="spark", spark_master="local[2]", **common
    ))  # fmt: skip
    frames = [
        pd.read_parquet(r.out / "scores.parquet").sort_values(["patient_id", "referral_id"])
        for r in (local, spark)
    ]
    assert len(frames[0]) > 1000 and (frames[0]["status"] == "scored").mean() > 0.9
    pd.testing.assert_frame_equal(
        frames[0].drop(columns=["warnings", "reasons"]).reset_index(drop=True),
        frames[1].drop(columns=["warnings", "reasons"]).reset_index(drop=True),
        obj="Spark vs local scores of a cohort in its own layout",
    )


def test_the_pyfunc_takes_rows_in_the_cohorts_own_columns_units_and_codes(
    trained, cohorts: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow

    result = trained["foreign"]
    log_training(result, Tracking(tmp_path / "var"))
    model = mlflow.pyfunc.load_model("models:/my_referrals@challenger")
    names = model.metadata.get_input_schema().input_names()
    assert {"gender", "hb_g_dl", "creat_mg_dl", "age_years", "route"} <= set(names), names
    rows = pd.read_csv(cohorts["foreign"]).head(200)
    out = model.predict(rows)
    scored = score_frame(result.predictor, rows)
    assert (out["status"] == "scored").mean() > 0.9, "rows in the user's layout are scored"
    assert np.array_equal(out["probability"].to_numpy(), scored.probability, equal_nan=True), (
        "the pyfunc maps the user's columns exactly as replay's frame scorer does"
    )
