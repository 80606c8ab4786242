"""Cohort replay end to end: two registered versions in a temporary MLflow, a small simulated
referral cohort (wide and long), and the acceptance checks of the replay issue."""

from __future__ import annotations

import filecmp
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from models.analytes import Catalogue
from training.cli import app
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, train_model
from training.registry.runs import log_training
from training.registry.store import CHALLENGER, Tracking, load_predictor
from training.replay.options import ReplayOptions
from training.replay.outputs import ReplayResult
from training.replay.run import replay

N_REFERRALS = 24_000
N_BOOT = 20
API_ROWS = 300
SUBSET_ROWS = 6_000  # rows of the cohort used where a test replays several times
runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    run_simulation(cohort="referrals", n=N_REFERRALS, seed=5, out=out)
    return out


@pytest.fixture(scope="module")
def tracking(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    """Version 1 and version 2 (challenger) of any_cancer, trained with different seeds."""
    from models.spec import ModelSpec, load_spec

    tracking = Tracking(tmp_path_factory.mktemp("var"))
    # A 95% rule-out target: at 24,000 referrals the calibration period's ~170 cancers cannot
    # show 99% sensitivity with 95% confidence (no green band), and these tests need one.
    data = load_spec("any_cancer").model_dump(mode="json")
    data["triage"]["rule_out_sensitivity"] = 0.95
    spec = ModelSpec.model_validate(data)
    for seed in (None, 99):
        # One thread: OpenMP on a shared, busy machine can be many times slower than one core.
        options = TrainOptions(cohort, n_boot=N_BOOT, seed=seed, num_threads=1)
        result = train_model(spec, options)
        log_training(result, tracking)
    return tracking


@pytest.fixture(scope="module")
def replayed(
    tracking: Tracking, cohort: Path, tmp_path_factory: pytest.TempPathFactory
) -> ReplayResult:
    out = tmp_path_factory.mktemp("replay")
    return replay(tracking, ["any_cancer/1"], ReplayOptions(cohort, out, n_boot=N_BOOT))


@pytest.fixture(scope="module")
def scores(replayed: ReplayResult) -> pd.DataFrame:
    return pd.read_parquet(replayed.out / "scores.parquet")


def api_record(row: pd.Series, catalogue: Catalogue) -> dict[str, Any]:
    """The HTTP API's record for one wide row: every analyte with its unit (the row's
    `{code}_unit` when it has one, e.g. haemoglobin in g/dL, else the canonical unit)."""
    analytes = {}
    for code in catalogue.codes:
        if code in row and pd.notna(row[code]):
            unit = row.get(f"{code}_unit")
            unit = catalogue[code].unit if unit is None or pd.isna(unit) else str(unit)
            analytes[code] = {"value": float(row[code]), "unit": unit}
    return {"age": row["age"], "sex": row["sex"], "analytes": analytes}


def test_replay_scores_equal_the_api_path_exactly(
    tracking: Tracking, cohort: Path, scores: pd.DataFrame, tmp_path: Path
) -> None:
    predictor, _ = load_predictor(tracking.client, "any_cancer", "1", tmp_path)
    wide = pd.read_parquet(cohort / "referrals_wide.parquet")
    assert len(scores) == len(wide), "one score row per cohort row, in the cohort's order"
    gdl = np.flatnonzero((wide["haemoglobin_unit"] == "g/dL").to_numpy())[:100]
    chosen = np.unique(np.r_[np.arange(API_ROWS), gdl])
    assert len(gdl) >= 50, "the sample includes haemoglobin reported in g/dL"
    api = [
        predictor.score(api_record(wide.iloc[i], predictor.catalogue),
                        pathway=str(wide.iloc[i]["pathway"]), explain=False)
        for i in chosen
    ]  # fmt: skip
    rows = scores.iloc[chosen]
    eligible = np.array([s.eligible for s in api])
    assert (rows["status"].to_numpy() == np.where(eligible, "scored", "ineligible")).all(), (
        "the replay refuses exactly the records the API refuses"
    )
    p_api = np.array([s.probability for s in api if s.eligible], dtype=np.float64)
    p_replay = rows.loc[eligible, "probability"].to_numpy(np.float64)
    assert np.array_equal(p_api, p_replay), "replay probabilities equal the API's exactly"
    assert [s.band for s in api if s.eligible] == rows.loc[eligible, "band"].tolist(), "bands"
    for score, (_, row) in zip(api, rows.iterrows(), strict=True):
        warnings = {i.code for i in score.issues if i.severity == "warning"}
        errors = {f"{i.code}:{i.field}" for i in score.issues if i.severity == "error"}
        assert warnings == set(row["warnings"]), "the same warning codes as the API"
        assert errors == set(row["reasons"]), "the same coded reasons as the API"


def test_ineligible_rows_are_kept_with_their_reasons(
    replayed: ReplayResult, scores: pd.DataFrame, cohort: Path
) -> None:
    wide = pd.read_parquet(cohort / "referrals_wide.parquet")
    ineligible = scores[scores["status"] == "ineligible"]
    assert len(ineligible) > 0, "the simulated cohort has rows without a required panel"
    assert ineligible["reasons"].map(len).gt(0).all(), "every ineligible row says why"
    assert ineligible["probability"].isna().all() and ineligible["band"].isna().all(), (
        "ineligible rows are never scored"
    )
    wrong_unit = wide["artefact_wrong_unit"].to_numpy()
    hb_reasons = scores.loc[wrong_unit, "reasons"].map(list)
    assert hb_reasons.map(lambda r: "out_of_limits:haemoglobin" in r).all(), (
        "Hb in g/dL labelled g/L is refused as implausible, with the field named"
    )
    codes = pd.Series([r.split(":")[0] for reasons in ineligible["reasons"] for r in set(reasons)])
    by_code = (
        pd.DataFrame({"row": np.repeat(ineligible.index, ineligible["reasons"].map(len)),
                      "code": codes}).drop_duplicates()["code"].value_counts().to_dict()
    )  # fmt: skip
    summary = replayed.manifest["models"][0]["exclusions"]
    assert summary == by_code, "the exclusion summary counts the rows by reason code"
    assert replayed.manifest["models"][0]["counts"]["ineligible"] == len(ineligible)


def test_two_runs_give_byte_identical_score_files(
    tracking: Tracking, cohort: Path, tmp_path: Path
) -> None:
    wide = pd.read_parquet(cohort / "referrals_wide.parquet")
    part = tmp_path / "part.parquet"
    wide.iloc[:SUBSET_ROWS].to_parquet(part, index=False)
    options = ReplayOptions(part, tmp_path / "a", explain=True, n_boot=N_BOOT, chunk_rows=2_500)
    first = replay(tracking, ["any_cancer@challenger"], options)
    second = replay(tracking, ["any_cancer/2"], replace(options, out=tmp_path / "b"))
    a, b = (tmp_path / d / "scores.parquet" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes(), "replaying twice gives byte-identical score files"
    assert first.manifest["models"][0]["pinned"] == second.manifest["models"][0]["pinned"] | {
        "requested": "any_cancer@challenger"
    }, "the alias and the version number pin the same model, booster hash and catalogue"
    frame = pd.read_parquet(a)
    scored = frame[frame["status"] == "scored"]
    contributions = scored.filter(like="contrib__")
    assert contributions.shape[1] == 40, "one contribution column per model feature"
    logit = np.log(scored["probability"] / (1 - scored["probability"]))
    error = np.max(np.abs(scored["base"] + contributions.sum(axis=1) - logit))
    assert error < 1e-9, "base + contributions == calibrated log-odds"
    assert "timings_seconds" in first.manifest, "timings go to the manifest, not the Parquet"


def test_results_after_the_index_date_never_change_a_score(
    tracking: Tracking, cohort: Path, scores: pd.DataFrame, tmp_path: Path
) -> None:
    index = pd.read_parquet(cohort / "referrals_index.parquet").iloc[:SUBSET_ROWS]
    results = pd.read_parquet(cohort / "referrals_results.parquet")
    results = results[results["patient_id"].isin(index["patient_id"])]

    def long_cohort(folder: str, days: list[int]) -> Path:
        """The long extract plus alarming results (Hb 70 g/L, CRP 250 mg/L, albumin 22 g/L)
        `days` after each index date (0: on the index date itself)."""
        extra = [
            pd.DataFrame({"patient_id": index["patient_id"],
                          "sample_time": index["index_date"] + pd.Timedelta(days=d),
                          "code": code, "value": value, "unit": unit, "lab": index["lab"]})
            for d in days
            for code, value, unit in (("haemoglobin", 70.0, "g/L"), ("crp", 250.0, "mg/L"),
                                      ("albumin", 22.0, "g/L"))
        ]  # fmt: skip
        combined = pd.concat(
            [results.astype({"code": str, "unit": str, "lab": str}), *extra], ignore_index=True
        )
        out = tmp_path / folder
        out.mkdir()
        combined.to_parquet(out / "referrals_results.parquet", index=False)
        index.to_parquet(out / "referrals_index.parquet", index=False)
        return out

    def replay_long(path: Path) -> pd.DataFrame:
        replay(tracking, ["any_cancer/1"], ReplayOptions(path, path / "out", n_boot=N_BOOT))
        return pd.read_parquet(path / "out" / "scores.parquet")

    plain = replay_long(long_cohort("plain", []))
    later = replay_long(long_cohort("later", [0, 1, 30]))
    pd.testing.assert_frame_equal(plain, later, obj="results on or after the index date")
    assert np.array_equal(
        plain["probability"].to_numpy(),
        scores["probability"].iloc[:SUBSET_ROWS].to_numpy(),
        equal_nan=True,
    ), "as of the index date, the long extract gives the wide table's scores"
    earlier = replay_long(long_cohort("earlier", [-1]))
    moved = (earlier["probability"] != plain["probability"]) & plain["probability"].notna()
    assert moved.mean() > 0.5, "the same results the day before the index date do change scores"


def test_drift_finds_the_albumin_assay_change_at_lab_c(replayed: ReplayResult) -> None:
    table = pd.read_parquet(replayed.out / "drift.parquet")
    albumin = table[(table["feature"] == "albumin") & (table["period"] != "all")]
    albumin = albumin.set_index(["lab", "period"])
    for year in ("2017", "2018", "2019"):
        assert albumin.loc[("lab_c", year), "psi_flag"] == "major", f"lab_c {year}: 6 g/L lower"
    for year in map(str, range(2011, 2017)):
        assert not albumin.loc[("lab_c", year), "flagged"], f"lab_c {year}: before the change"
    for lab in ("lab_a", "lab_b"):
        assert not albumin.loc[lab, "flagged"].any(), f"{lab}: albumin never changed"
    # lab_b's ALT analyser change (2018) is found there and then, and nowhere else.
    alt = table[(table["feature"] == "alt") & (table["lab"] == "lab_b")].set_index("period")
    for year in ("2018", "2019"):
        assert alt.loc[year, "psi_flag"] != "", f"lab_b {year}: ALT reads 25% higher"
    assert alt.loc["2017", "psi_flag"] == "", "lab_b 2017: before the ALT change"
    # Otherwise no value distribution drifts at lab_a or lab_b over the evaluation years.
    # (Earlier years may: NG12 changed the referral mix in 2015-16, and the reference is the
    # calibration year 2016. Missingness may too: the reference holds only patients not seen in
    # training, a different testing mix from the whole cohort's.)
    later = table[
        table["lab"].isin(["lab_a", "lab_b"]) & table["period"].isin(["2017", "2018", "2019"])
    ]
    expected = (later["feature"] == "alt") & (later["lab"] == "lab_b") & (later["period"] != "2017")
    unexpected = later[(later["psi_flag"] != "") & ~expected]
    assert unexpected.empty, f"no other PSI flag at lab_a or lab_b: {unexpected.to_string()}"
    manifest = replayed.manifest["models"][0]["drift"]
    assert any(
        r["feature"] == "albumin" and r["lab"] == "lab_c" and r["psi_flag"] == "major"
        for r in manifest["rows"]
    ), "the manifest lists the albumin flag"
    html = (replayed.out / "report.html").read_text()
    assert "Drift flags" in html and "albumin" in html, "the report shows the drift tables"


def test_with_outcomes_the_report_metrics_and_green_cancers_by_site(
    replayed: ReplayResult,
) -> None:
    out = replayed.out
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file(), "written"
    metrics = json.loads((out / "metrics.json").read_text())
    model = metrics["models"][0]
    assert 0.5 < model["evaluation"]["auc"]["estimate"] <= 1, "the training evaluation, reused"
    periods = [row["period"] for row in model["what_would_have_happened"]]
    assert periods == [*map(str, range(2011, 2020)), "total"], "by year, then in total"
    total = model["what_would_have_happened"][-1]
    assert total["green (ruled out)"] > 0 and total["red (expedited)"] > 0, total
    by_site = model["green_cancers_by_site"]
    assert by_site and sum(r["cancers banded green"] for r in by_site) == total["cancers green"]
    assert all(isinstance(r["cancer_site"], str) and r["cancer_site"] for r in by_site), by_site
    cancers = pd.read_parquet(out / "green_cancers.parquet")
    assert len(cancers) == total["cancers green"] and cancers["cancer_site"].notna().all()
    html = (out / "report.html").read_text()
    assert "Cancers that would have been banded green" in html, "the what-if tables are shown"
    assert html.count("data:image/png;base64") >= 4, "the training report's plots are there"


def test_side_by_side_from_the_command_line(
    tracking: Tracking, cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ab"
    result = runner.invoke(
        app,
        ["replay", "--model", "any_cancer/1", "--model", f"any_cancer@{CHALLENGER}",
         "--cohort", str(cohort), "--out", str(out), "--workdir", str(tracking.workdir),
         "--n-boot", str(N_BOOT)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "missing_required_panel" in result.output, "the exclusion summary is printed"
    assert "any_cancer v1 - any_cancer v2" in result.output, "the paired AUC difference"
    assert {p.name for p in out.glob("scores_*.parquet")} == {
        "scores_any_cancer_v1.parquet", "scores_any_cancer_v2.parquet"
    }, "one score file per model"  # fmt: skip
    comparison = json.loads((out / "manifest.json").read_text())["comparison"]
    diff = comparison["auc_difference"]
    assert diff["low"] <= diff["estimate"] <= diff["high"], "a paired bootstrap interval"
    assert set(comparison["auc"]) == {"any_cancer v1", "any_cancer v2"}, "the AUC of each"
    assert set(comparison["observed_expected"]) == set(comparison["auc"]), "the O/E of each"
    cells = sum(v for row in comparison["bands"].values() for v in row.values())
    assert cells == comparison["paired_rows"], "the band cross-table covers every paired row"
    assert 0.5 < comparison["band_agreement"] < 1, "two different versions mostly agree"
    html = (out / "report.html").read_text()
    assert "Side by side" in html and "Band agreement" in html, "the paired tables are shown"
    assert (out / "report_any_cancer_v2.html").is_file(), "B gets its own report"


@pytest.mark.slow
def test_spark_and_local_engines_give_identical_files(
    replayed: ReplayResult, tracking: Tracking, cohort: Path, tmp_path: Path
) -> None:
    """Through the registry, as `triage replay --engine spark` runs (the outputs' parity on
    other layouts is tests/training/replay/test_spark_parity.py)."""
    pytest.importorskip("pyspark")
    options = ReplayOptions(
        cohort, tmp_path / "spark", engine="spark", spark_master="local[2]", n_boot=N_BOOT
    )
    spark = replay(tracking, ["any_cancer/1"], options)
    for name in ("scores.parquet", "drift.parquet", "green_cancers.parquet", "metrics.json"):
        assert (spark.out / name).is_file(), f"{name} is one file"
        assert filecmp.cmp(replayed.out / name, spark.out / name, shallow=False), (
            f"the engines write the same {name}, byte for byte"
        )
    a, b = replayed.manifest["models"][0], spark.manifest["models"][0]
    assert a["pinned"] == b["pinned"] and a["scores"] == b["scores"], "the same pin and scores"
