"""What a user with their own cohort sees when something is wrong: one or a few clear lines on
stderr naming the cause and the fix, exit status 2, and no traceback (unless `--debug`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from models.spec import load_spec
from models.triage import Thresholds
from tests.training.test_foreign_cohort import foreign_layout, foreign_spec_data
from training.cli import app
from training.cli.models import describe_thresholds
from training.cohorts.simulator import run_simulation

runner = CliRunner()


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("errors")
    run_simulation(cohort="referrals", n=3_000, seed=3, out=folder)
    return pd.read_parquet(folder / "referrals_wide.parquet")


def write(tmp_path: Path, frame: pd.DataFrame, spec: dict) -> tuple[str, str]:
    frame.to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(tmp_path / "cohort.csv"), str(tmp_path / "spec.yaml")


def train(tmp_path: Path, cohort: str, spec: str, *extra: str):  # type: ignore[no-untyped-def]
    work = ["--n-boot", "5", "--workdir", str(tmp_path / "var"), "--no-register"]
    return runner.invoke(app, [*extra, "train", "--spec", spec, "--cohort", cohort, *work])


def assert_user_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, f"a user error exits with 2, not {result.exit_code}"
    assert "Traceback" not in result.output, "no traceback without --debug"
    assert result.stderr.startswith("error: "), f"the message is on stderr: {result.stderr!r}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} missing from {result.stderr!r}"


def test_an_unknown_spec_field_is_one_line_naming_it(tmp_path: Path, native) -> None:
    spec = foreign_spec_data() | {"lightgbm": {"min_child_sample": 5}}
    cohort, spec_file = write(tmp_path, foreign_layout(native), spec)
    assert_user_error(
        train(tmp_path, cohort, spec_file), "lightgbm.min_child_sample: unknown field"
    )


def test_debug_shows_the_traceback(tmp_path: Path, native) -> None:
    spec = foreign_spec_data() | {"lightgbm": {"min_child_sample": 5}}
    cohort, spec_file = write(tmp_path, foreign_layout(native), spec)
    result = train(tmp_path, cohort, spec_file, "--debug")
    assert result.exit_code != 0 and result.exception is not None, "--debug lets it raise"
    assert "min_child_sample" in str(result.exception)


def test_forgetting_to_map_age_and_sex_names_the_real_cause(tmp_path: Path, native) -> None:
    spec = foreign_spec_data()
    spec["column_map"] = {
        k: v for k, v in spec["column_map"].items() if v["code"] not in ("age", "sex")
    }
    cohort, spec_file = write(tmp_path, foreign_layout(native), spec)
    assert_user_error(
        train(tmp_path, cohort, spec_file),
        "no row of 3,000 is eligible",
        "invalid_sex: 3,000 rows (e.g. sex is missing; expected male or female)",
        "age_out_of_range",
        "YOUR_SEX: {code: sex, values: {F: female, M: male}}",
    )


def test_an_unmapped_patient_id_is_refused_with_the_fix(tmp_path: Path, native) -> None:
    spec = foreign_spec_data()
    del spec["column_map"]["pid"]
    cohort, spec_file = write(tmp_path, foreign_layout(native), spec)
    assert_user_error(
        train(tmp_path, cohort, spec_file),
        "lacks required columns ['patient_id']",
        "column_map: {YOUR_COLUMN: {code: patient_id}}",
        "pid",
    )


def test_an_outcome_with_unlisted_codes_is_refused(tmp_path: Path, native) -> None:
    frame = foreign_layout(native).assign(
        cancer_12m=lambda f: f["cancer_12m"].map({1: "Y", 0: "N"})
    )
    cohort, spec_file = write(tmp_path, frame, foreign_spec_data())
    assert_user_error(
        train(tmp_path, cohort, spec_file), "outcome column 'cancer' must hold 0 or 1"
    )
    spec = foreign_spec_data()
    spec["column_map"]["cancer_12m"]["values"] = {"Y": 1}
    cohort, spec_file = write(tmp_path, frame, spec)
    assert_user_error(train(tmp_path, cohort, spec_file), "codes ['N'] are not listed")


def test_a_period_with_too_few_events_names_the_period_and_the_field(
    tmp_path: Path, native
) -> None:
    # 3,000 referrals: ~94 training-period cancers, ~35 in the 2016 calibration year.
    spec = foreign_spec_data()
    spec["split"]["min_events"] = 60
    cohort, spec_file = write(tmp_path, foreign_layout(native), spec)
    assert_user_error(
        train(tmp_path, cohort, spec_file),
        "the calibrate period 2016-01-01..2016-12-31 has",
        "events",
        "split.min_events",
        "Widen split.calibrate",
    )


def test_day_first_dates_are_refused_not_guessed(tmp_path: Path, native) -> None:
    frame = foreign_layout(native)
    frame["referral_year"] = native["index_date"].dt.strftime("%d/%m/%Y")
    cohort, spec_file = write(tmp_path, frame, foreign_spec_data())
    assert_user_error(train(tmp_path, cohort, spec_file), "is not an ISO 8601 date")


def test_dates_with_and_without_a_time_zone_are_refused(tmp_path: Path, native) -> None:
    frame = foreign_layout(native)
    stamps = native["index_date"].dt.strftime("%Y-%m-%dT09:00:00")
    frame["referral_year"] = stamps.where(frame.index % 2 == 0, stamps + "+01:00")
    cohort, spec_file = write(tmp_path, frame, foreign_spec_data())
    assert_user_error(
        train(tmp_path, cohort, spec_file), "mixes timestamps with a time zone", "and without"
    )


def test_validate_without_a_spec_lists_the_columns_it_ignored(tmp_path: Path, native) -> None:
    cohort, _ = write(tmp_path, foreign_layout(native), foreign_spec_data())
    result = runner.invoke(app, ["validate", cohort])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for column in ("pid", "gender", "hb_g_dl", "creat_mg_dl", "referral_year"):
        assert column in text, f"{column} is listed as not recognised: {text}"
    assert "--spec" in text and "column_map" in text, "the fix is suggested"


def test_validate_prints_an_example_message_per_issue_code(tmp_path: Path, native) -> None:
    frame = foreign_layout(native)
    spec = foreign_spec_data()
    spec["column_map"]["hb_g_dl"]["unit"] = "g/L"  # declared wrongly: values are in g/dL
    cohort, spec_file = write(tmp_path, frame, spec)
    result = runner.invoke(app, ["validate", cohort, "--spec", spec_file, "--strict"])
    assert result.exit_code == 1, "--strict fails on errors"
    text = " ".join(result.output.split())
    assert "row " in text and "g/dL" in text, f"the example shows the unit hint: {text}"


def test_an_unmet_target_prints_no_band_instead_of_none() -> None:
    spec = load_spec("any_cancer")
    text = describe_thresholds(Thresholds(0.01, None), spec)
    assert "None" not in text and "no red band" in text and "green < 0.01" in text


def test_replay_from_after_to_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, [
        "replay", "--model", "x@champion", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"),
        "--period", "evaluate", "--from", "2018-01-01", "--workdir", str(tmp_path / "var"),
    ])  # fmt: skip
    assert result.exit_code == 2 and "--period, or --from/--to, not both" in result.output
