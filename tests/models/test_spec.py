"""Model specs: every shipped spec loads; bad specs fail naming the field."""

from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from models.columns import map_columns
from models.frame_validation import validate_frame
from models.spec import PATHWAYS, SpecError, load_spec, parse_spec, spec_names

LEEDS_MYELOMA_TESTS = {
    "albumin", "alp", "alt", "basophils", "calcium_adjusted", "creatinine", "crp", "eosinophils",
    "haemoglobin", "lymphocytes", "mcv", "monocytes", "neutrophils", "platelets", "wbc",
}  # fmt: skip


def test_shipped_specs_are_any_cancer_the_nine_pathways_and_myeloma() -> None:
    assert set(spec_names()) == {"any_cancer", "myeloma", *PATHWAYS}


@pytest.mark.parametrize("name", spec_names())
def test_every_shipped_spec_loads(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name
    assert all(code in spec.catalogue for code in spec.features.analytes)
    assert spec.split.train.end < spec.split.calibrate.start < spec.split.evaluate.start
    assert 0.5 < spec.triage.rule_out_sensitivity < 1


def test_myeloma_spec_is_the_leeds_model() -> None:
    spec = load_spec("myeloma")
    assert set(spec.features.analytes) == LEEDS_MYELOMA_TESTS, "the 15 Leeds tests"
    assert spec.features.demographics == ("age", "sex")
    design = spec.calibration.case_control
    assert spec.is_case_control and design is not None, "matched case-control, per-stratum scale"
    assert design.match_on == ("age_band", "sex") and design.age_band_years == 5
    assert spec.calibration.deployment_prevalence is None, "no single global shift"
    assert spec.eligibility.min_age == 40


def _base() -> dict[str, Any]:
    """The shipped lower_gi spec as plain data, to mutate."""
    return yaml.safe_load((resources.files("models") / "specs" / "lower_gi.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (
            lambda d: (
                d["lightgbm"].update(num_leafs=31)
                if "lightgbm" in d
                else d.update(lightgbm={"num_leafs": 31})
            ),
            "lightgbm.num_leafs: unknown field",
        ),
        (lambda d: d["features"]["analytes"].append("unobtainium"), "unobtainium"),
        (lambda d: d["cohort"].update(pathways=["brain"]), "unknown pathways ['brain']"),
        (lambda d: d["split"]["calibrate"].update(start="2015-06-01"), "calibration period"),
        (lambda d: d["triage"].update(rule_out_sensitivity=1.5), "triage.rule_out_sensitivity"),
        (lambda d: d["eligibility"].update(required_panels=["lipids"]), "unknown panels"),
        (
            lambda d: d.update(column_map={"hb": {"code": "haemoglobin", "unit": "mg/L"}}),
            "column_map.hb: unit 'mg/L' is not accepted",
        ),
        (lambda d: d["features"].update(derived=["magic"]), "unknown derived features"),
    ],
)
def test_bad_spec_fails_naming_the_field(mutate: Any, expected: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(SpecError) as raised:
        parse_spec(data, "bad.yaml")
    assert expected in str(raised.value), str(raised.value)
    assert str(raised.value).startswith("bad.yaml"), "the message names the file"


def test_unknown_spec_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SpecError, match="shipped: any_cancer"):
        load_spec("pancreas")


def test_custom_cohort_with_its_own_columns_and_units(tmp_path: Path) -> None:
    data = _base()
    data["name"] = "custom_lab"
    data["column_map"] = {
        "HGB": {"code": "haemoglobin", "unit": "g/dL"},
        "PLT": {"code": "platelets", "unit": "x10^9/L"},
        "CHLORIDE": {"code": "chloride", "unit": "mmol/L"},
    }
    data["extra_analytes"] = [
        {
            "code": "chloride", "name": "Chloride", "loinc": "2075-0", "unit": "mmol/L",
            "display_unit": "mmol/L", "alt_units": {"meq/L": 1},
            "reference": {"low": 95, "high": 108}, "limits": {"low": 60, "high": 150},
            "panel": "renal", "cancer_direction": "none", "decimals": 0,
        }
    ]  # fmt: skip
    data["features"]["analytes"].append("chloride")
    path = tmp_path / "custom_lab.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    frame = pd.DataFrame(
        {"age": [70], "sex": ["F"], "HGB": [10.2], "PLT": [420], "CHLORIDE": [101]}
    )
    mapped, units = map_columns(frame, spec)
    result = validate_frame(mapped, catalogue=spec.catalogue, units=units)
    assert result.values.loc[0, "haemoglobin"] == pytest.approx(102.0), "g/dL converted to g/L"
    assert result.values.loc[0, "chloride"] == 101, "a spec's own analyte is validated too"
    assert set(result.issues["code"]) == {"unit_converted"}


def test_digest_changes_with_content() -> None:
    data = _base()
    first = parse_spec(data).digest
    data["triage"]["rule_in_ppv"] = 0.3
    assert parse_spec(data).digest != first
