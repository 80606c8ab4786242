"""The replay's report, console lines and manifest: the replay's results first, the card about
the replay's own period and rows, a replay that scores nothing ending with a complete manifest
that says why, and byte-identical report and metrics on a rerun.

The session's trained any_cancer model (tests/training/conftest.py) is pinned from a folder, not
from MLflow, and replayed over the referral cohort's evaluation years.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.training.pinning import pinned
from training.cli import app
from training.cli.replay import NOTHING_SCORED_STATUS, replay_lines
from training.cohorts.reader import CohortError
from training.evaluation import drift
from training.fit.train import TrainResult
from training.replay.options import ReplayModel, ReplayOptions
from training.replay.outputs import (
    MANIFEST_FILE,
    METRICS_FILE,
    REPORT_FILE,
    ReplayResult,
    drift_flag_table,
    p_value_text,
)
from training.replay.run import replay_models
from training.replay.summaries import ROW_ID, in_canonical_order, level_order

N_BOOT = 10
SINCE = date(2017, 1, 1)


@pytest.fixture(scope="module")
def model(any_cancer: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> ReplayModel:
    return pinned(any_cancer, tmp_path_factory.mktemp("pinned"))


@pytest.fixture(scope="module")
def wide(cohorts: dict[str, Path]) -> pd.DataFrame:
    return pd.read_parquet(cohorts["referrals"] / "referrals_wide.parquet")


@pytest.fixture(scope="module")
def twice(
    model: ReplayModel, cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[ReplayResult]:
    """The same replay (evaluation years, from 2017) into two folders."""
    return [
        replay_models([model], ReplayOptions(cohorts["referrals"], tmp_path_factory.mktemp(name),
                                             n_boot=N_BOOT, start=SINCE))
        for name in ("first", "second")
    ]  # fmt: skip


def test_the_replay_results_come_first_in_their_order(twice: list[ReplayResult]) -> None:
    html = (twice[0].out / REPORT_FILE).read_text()
    titles = [
        "Pinned model and cohort",
        "What would have happened, by year",
        "Cancers that would have been banded green, by year and site",
        "Drift flags (each lab against its own training-period reference",
        "Drift flags by feature and lab",
        "Standing differences between labs (training period; not drift)",
        "Drift of the score distribution against training (PSI), by year and lab",
    ]
    where = [html.find(t) for t in titles]
    assert -1 not in where, dict(zip(titles, where, strict=True))
    assert where == sorted(where), "in the order a reader needs them"
    card = html.find('<section id="card"')
    assert 0 < where[-1] < card, "every replay table comes before the model card"
    assert html.find("Ineligible rows by reason") > card, "exclusions stay at the end"
    assert html.count("<h1>") == 1 and "<h1>Replay of " in html, "the title names a replay"
    green = html[where[2] : where[3]]
    if twice[0].models[0].green_cancers.empty:  # no green band, or no cancer below it
        assert "none banded green" in green, "an empty table says so"
    else:
        assert "none banded green" not in green
    standing = html[where[5] : where[6]]
    for feature in ("esr", "plasma_viscosity"):  # the simulated lab_c measures viscosity
        assert f"<td>{feature}</td><td>analyte</td><td>lab_c</td>" in standing, feature
        assert f"<td>{feature}</td>" not in html[where[3] : where[5]], f"{feature}: not drift"


def test_the_card_describes_the_replays_own_period_and_rows(
    twice: list[ReplayResult], wide: pd.DataFrame
) -> None:
    days = pd.to_datetime(wide["index_date"]).dt.date
    replayed = wide[days >= SINCE]
    last = days[days >= SINCE].max()
    outcome = twice[0].models[0]
    counts = outcome.counts()
    assert counts["rows"] == len(replayed), "every row from 2017 on, and no other"
    html = (twice[0].out / REPORT_FILE).read_text()
    card = html[html.find('<section id="card"') :]
    card = card[: card.find("</section>")]
    assert "Replayed period" in card and "Rows replayed" in card, "the replay's own facts"
    assert SINCE.isoformat() in card and last.isoformat() in card, (
        f"from the requested start to the last index date replayed ({last})"
    )
    assert f"{len(replayed):,}" in card, "the rows replayed, counted independently"
    assert "Rows per period" not in card and "Events per period" not in card, (
        "the training run's rows per period are not this replay's"
    )
    manifest = twice[0].manifest
    assert manifest["cohort"]["index_dates"] == {"first": str(days[days >= SINCE].min()),
                                                 "last": str(last)}  # fmt: skip
    assert manifest["nothing_scored"] is False and manifest["reason"] is None


def test_p_values_read_less_than_a_thousandth(twice: list[ReplayResult]) -> None:
    assert [p_value_text(v) for v in (0.0, 1e-9, 0.0004, 0.001, 0.0234, float("nan"), None)] == [
        "< 0.001", "< 0.001", "< 0.001", "0.001", "0.023", "–", "–",
    ]  # fmt: skip
    rows = drift.flagged(twice[0].models[0].drift)
    shown = drift_flag_table(twice[0].models[0].drift)
    tiny = (rows["psi_p_value"] < 0.001).to_numpy()
    assert tiny.all(), "a PSI flag needs p < 0.001"
    assert (shown["PSI p-value"] == "< 0.001").all()
    missing = rows["missing_p_value"].to_numpy()
    assert (shown["missing change p-value"] == [p_value_text(v) for v in missing]).all()
    assert not shown["missing change p-value"].eq("0.000").any()
    html = (twice[0].out / REPORT_FILE).read_text()
    flags = html[html.find("Drift flags (each lab") : html.find("Drift flags by feature and lab")]
    assert flags.count("&lt; 0.001") >= len(rows), "in the report, every flag has one"


def test_two_runs_give_byte_identical_report_and_metrics(twice: list[ReplayResult]) -> None:
    first, second = (r.out for r in twice)
    for name in (REPORT_FILE, METRICS_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_subgroups_follow_the_spec_and_levels_are_sorted(
    twice: list[ReplayResult], model: ReplayModel
) -> None:
    metrics = json.loads((twice[0].out / METRICS_FILE).read_text())
    rows = metrics["models"][0]["evaluation"]["subgroups"]["rows"]
    columns = list(dict.fromkeys(r["column"] for r in rows))
    spec = model.predictor.spec
    wanted = list(dict.fromkeys((*spec.subgroups, *spec.promotion.subgroups)))
    assert columns == [c for c in wanted if c in columns], "columns in the spec's order"
    for column in ("lab", "deprivation", "ethnicity"):
        levels = [r["level"] for r in rows if r["column"] == column]
        assert levels == level_order(levels), f"{column}: levels sorted"


def test_canonical_order_sorts_rows_and_levels_whatever_the_engine_gave() -> None:
    rng = np.random.default_rng(3)
    n = 200
    deciles = [str(d) for d in rng.integers(1, 11, n)]
    frame = pd.DataFrame(
        {
            ROW_ID: rng.permutation(n),
            "deprivation": pd.Categorical(deciles, categories=sorted(set(deciles), reverse=True)),
            "lab": pd.Categorical(rng.choice(["lab_c", "lab_a", "lab_b"], n),
                                  categories=["lab_c", "lab_a", "lab_b"]),
            "band": pd.Categorical(["red"] * n, categories=["green", "amber", "red"]),
        }
    )  # fmt: skip
    canonical = in_canonical_order(frame)
    assert canonical[ROW_ID].tolist() == list(range(n)), "cohort order"
    assert list(canonical["deprivation"].cat.categories) == [str(d) for d in range(1, 11)], (
        "deciles as numbers: 1, 2, ..., 10"
    )
    assert list(canonical["lab"].cat.categories) == ["lab_a", "lab_b", "lab_c"]
    assert list(canonical["band"].cat.categories) == ["green", "amber", "red"], "bands as defined"
    back = frame.set_index(ROW_ID).loc[canonical[ROW_ID], "lab"].astype(str).tolist()
    assert canonical["lab"].astype(str).tolist() == back, "each row keeps its values"


def test_the_console_summarises_drift_by_feature_and_lab(twice: list[ReplayResult]) -> None:
    outcome = twice[0].models[0]
    lines = replay_lines(twice[0])
    flags = int(outcome.drift["flagged"].sum())
    groups = drift.flag_groups(outcome.drift)
    assert flags > len(groups) > 0, "the simulated assay changes repeat over years and labs"
    assert f"{outcome.pinned.label}: drift flags {flags:,}, by feature and lab:" in lines
    summary = [line for line in lines if line.startswith("  ")]
    assert summary == [f"  {line}" for line in drift.console_summary(outcome.drift)]
    assert len(summary) <= 9, "a few lines, not one per flagged row"
    assert any(line.startswith("  albumin at lab_c: PSI major") for line in summary), (
        "lab_c's albumin assay change (2017 on) leads the summary"
    )
    assert not any(".000" in line and "p" in line for line in summary)


@pytest.fixture(scope="module")
def nothing_scored(
    model: ReplayModel, wide: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> ReplayResult:
    """A cohort of children: no row is eligible."""
    folder = tmp_path_factory.mktemp("children")
    wide.head(600).assign(age=15).to_parquet(folder / "children.parquet", index=False)
    return replay_models(
        [model], ReplayOptions(folder / "children.parquet", folder / "out", n_boot=N_BOOT)
    )


def test_a_replay_that_scores_nothing_says_why_in_a_complete_manifest(
    nothing_scored: ReplayResult,
) -> None:
    out = nothing_scored.out
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["nothing_scored"] is True
    reason = manifest["reason"]
    assert "none of 600 rows was eligible" in reason and "age_out_of_range 600" in reason, reason
    entry = manifest["models"][0]
    assert entry["counts"]["rows"] == 600 and entry["counts"]["scored"] == 0
    assert entry["counts"]["ineligible"] == 600 and entry["exclusions"]["age_out_of_range"] == 600
    assert entry["evaluation"] is None and entry["report"] is None
    assert entry["drift"]["flagged"] == 0 and entry["drift"]["by_group"] == []
    assert manifest["outputs"] == ["drift.parquet", "scores.parquet"], "what was written"
    assert not (out / REPORT_FILE).exists() and not (out / METRICS_FILE).exists()
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 600 and (scores["status"] == "ineligible").all()
    reasons = Counter(r.split(":")[0] for rs in scores["reasons"] for r in rs)
    assert reasons["age_out_of_range"] == 600, "every row kept, with its reason"
    lines = replay_lines(nothing_scored)
    assert f"nothing scored: {reason}" in lines and any("no report" in x for x in lines)


def test_the_command_prints_why_and_exits_3_when_nothing_is_scored(
    nothing_scored: ReplayResult, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The command's wiring, with the replay itself stubbed by the one above (no registry)."""
    import training.replay.run

    monkeypatch.setattr(training.replay.run, "replay", lambda *args, **kwargs: nothing_scored)
    cohort = nothing_scored.manifest["cohort"]["path"]
    result = CliRunner().invoke(
        app,
        ["replay", "--model", "any_cancer@champion", "--cohort", cohort,
         "--out", str(nothing_scored.out), "--workdir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == NOTHING_SCORED_STATUS == 3, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    assert "nothing scored: any_cancer v7: none of 600 rows was eligible" in text, text
    assert "age_out_of_range 600" in text and "no report" in text


def test_a_cohort_without_sex_is_refused_up_front_and_out_is_left_alone(
    model: ReplayModel, wide: pd.DataFrame, tmp_path: Path
) -> None:
    wide.head(50).drop(columns=["sex"]).to_parquet(tmp_path / "no_sex.parquet", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / REPORT_FILE).write_text("an earlier replay's report")
    with pytest.raises(CohortError, match=r"lacks columns \['sex'\].*column_map"):
        replay_models([model], ReplayOptions(tmp_path / "no_sex.parquet", out))
    assert (out / REPORT_FILE).read_text() == "an earlier replay's report", "nothing removed"
