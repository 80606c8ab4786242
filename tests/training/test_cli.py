"""The `triage` command line for the catalogue and validation."""

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from training.cli import app

runner = CliRunner()


def test_analytes_prints_the_catalogue() -> None:
    result = runner.invoke(app, ["analytes"])
    assert result.exit_code == 0, result.output
    assert "haemoglobin" in result.output and "718-7" in result.output


def test_specs_lists_shipped_specs() -> None:
    result = runner.invoke(app, ["specs"])
    assert result.exit_code == 0, result.output
    assert "myeloma" in result.output and "lower_gi" in result.output


def test_validate_summarises_and_is_strict_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    pd.DataFrame(
        {
            "age": [60, 70],
            "sex": ["male", "female"],
            "haemoglobin": [9.8, 131],
            "haemoglobin_unit": ["g/L", "g/L"],
        }
    ).to_csv(path, index=False)
    lenient = runner.invoke(app, ["validate", str(path)])
    assert lenient.exit_code == 0, lenient.output
    assert "out_of_limits" in lenient.output
    strict = runner.invoke(app, ["validate", str(path), "--strict"])
    assert strict.exit_code == 1, "errors with --strict exit non-zero"
    issues = tmp_path / "issues.parquet"
    with_spec = runner.invoke(
        app, ["validate", str(path), "--spec", "lower_gi", "--issues-out", str(issues)]
    )
    assert with_spec.exit_code == 0, with_spec.output
    assert "missing_required_panel" in with_spec.output, "the spec's eligibility applies"
    assert len(pd.read_parquet(issues)) >= 3
