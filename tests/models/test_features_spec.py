"""A spec's own derived features: checked when the spec loads (names, inputs, units), and
computed the same by training, the frame scorer, the record path and a reloaded predictor."""

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml

from models.calibration import LogitCalibration
from models.explain import describe_driver, feature_panel
from models.predictor import TriagePredictor, spec_feature_frame
from models.scoring import score_frame
from models.spec import ModelSpec, SpecError, parse_spec
from models.triage import Thresholds

SPEC = """
name: light_chains
title: Light chains
intended_use: tests
population: simulated adults
cohort: {kind: primary_care}
outcome: {definition: myeloma within 2 years, horizon_days: 730}
split:
  train: {start: 2015-01-01, end: 2015-12-31}
  calibrate: {start: 2016-01-01, end: 2016-12-31}
  evaluate: {start: 2017-01-01, end: 2017-12-31}
triage: {rule_out_sensitivity: 0.9, rule_in_ppv: 0.2}
extra_analytes:
- {code: kappa_flc, name: Kappa free light chain, loinc: 36916-5, unit: mg/L,
   display_unit: mg/L, reference: {low: 3.3, high: 19.4}, limits: {low: 0, high: 10000},
   panel: protein, cancer_direction: high, decimals: 1}
- {code: lambda_flc, name: Lambda free light chain, loinc: 33944-0, unit: mg/L,
   display_unit: mg/L, reference: {low: 5.7, high: 26.3}, limits: {low: 0, high: 10000},
   panel: protein, cancer_direction: high, decimals: 1}
features:
  analytes: [kappa_flc, lambda_flc, haemoglobin]
  derived:
  - nlr
  - name: kl_ratio
    title: Kappa/lambda free light chain ratio
    ratio: [kappa_flc, lambda_flc]
"""


def _spec_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SPEC)
    return data


def _with_derived(*entries: Any) -> dict[str, Any]:
    data = _spec_data()
    data["features"]["derived"].extend(entries)
    return data


def test_a_spec_defines_its_own_ratio_next_to_a_built_in() -> None:
    spec = parse_spec(_spec_data())
    names = ("kappa_flc", "lambda_flc", "haemoglobin", "nlr", "kl_ratio", "age", "sex")
    assert spec.features.names == names, "derived features after the analytes, in list order"
    kl = spec.features.derived_features(spec.catalogue)[1]
    assert kl.title == "Kappa/lambda free light chain ratio", "the title given in the spec"
    assert kl.unit == "1", "mg/L over mg/L is dimensionless"
    assert kl.inputs == ("kappa_flc", "lambda_flc")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "urea_minus_creat", "difference": ["urea", "creatinine"]},
            "features.derived[2] (urea_minus_creat): difference needs inputs in the same unit; "
            "urea is mmol/L, creatinine is umol/L",
        ),
        (
            {"name": "kl", "ratio": ["kappa", "lambda_flc"]},
            "features.derived[2] (kl): 'kappa' is neither an analyte of the catalogue (declare "
            "it in extra_analytes) nor a derived feature listed before this one",
        ),
        (
            {"name": "KL ratio", "ratio": ["kappa_flc", "lambda_flc"]},
            "features.derived[2] (KL ratio): a name must be lower case letters, digits and _, "
            "starting with a letter",
        ),
        (
            {"name": "crp", "log": "crp"},
            "features.derived[2] (crp): the name is an analyte's code; choose another",
        ),
        (
            {"name": "plr", "ratio": ["platelets", "lymphocytes"]},
            "features.derived[2] (plr): the name is a built-in derived feature; choose another",
        ),
        ({"name": "kl_ratio", "log": "crp"}, "features: features listed twice: ['kl_ratio']"),
        (
            {"name": "kl", "ratio": ["kappa_flc", "lambda_flc"], "log": "kappa_flc"},
            "features.derived[2] (kl): give exactly one of ratio, difference, product, log "
            "(given: ratio, log)",
        ),
        ({"name": "kl", "ratoi": ["a", "b"]}, "features.derived.2.expression.ratoi: unknown field"),
    ],
)
def test_a_bad_derived_feature_fails_naming_its_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(_with_derived(entry), "bad.yaml")
    assert message in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    "signed",
    [{"name": "na_minus_k", "difference": ["sodium", "potassium"]}, "globulin_calc"],
    ids=["a spec's difference", "a built-in difference"],
)
def test_log_refuses_a_quantity_that_can_be_negative(signed: Any) -> None:
    name = signed if isinstance(signed, str) else signed["name"]
    data = _with_derived(signed, {"name": "log_signed", "log": name})
    with pytest.raises(SpecError) as raised:
        parse_spec(data, "bad.yaml")
    expected = f"features.derived[3] (log_signed): log needs a positive quantity; {name} can be"
    assert expected in str(raised.value), str(raised.value)


def test_an_expression_may_use_only_earlier_derived_features() -> None:
    later = _with_derived({"name": "log_kl", "log": "kl_ratio"})
    assert parse_spec(later).features.derived_names[-1] == "log_kl", "kl_ratio comes first"
    data = _spec_data()
    data["features"]["derived"].insert(1, {"name": "log_kl", "log": "kl_ratio"})
    with pytest.raises(SpecError, match=r"derived\[1\] \(log_kl\): 'kl_ratio' is neither"):
        parse_spec(data)


def _fitted(spec: ModelSpec, n: int = 600) -> TriagePredictor:
    """A small LightGBM on simulated rows whose risk rises with the kappa/lambda ratio only."""
    rng = np.random.default_rng(7)
    values = pd.DataFrame(
        {
            "kappa_flc": rng.lognormal(2.5, 0.8, n).round(1),
            "lambda_flc": rng.lognormal(2.7, 0.8, n).round(1),
            "haemoglobin": rng.normal(135, 15, n).round(),
            "neutrophils": rng.lognormal(1.4, 0.3, n).round(2),
            "lymphocytes": rng.lognormal(0.6, 0.3, n).round(2),
            "age": rng.integers(40, 90, n),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    ratio = values["kappa_flc"] / values["lambda_flc"]
    outcome = rng.random(n) < 1 / (1 + np.exp(-3 * (np.log(ratio) - 0.5)))
    frame = spec_feature_frame(spec, values)
    params = {"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 20, "verbose": -1}
    params |= {"num_threads": 1, "deterministic": True, "seed": 7}
    booster = lgb.train(
        params,
        lgb.Dataset(frame, label=outcome.astype(float), feature_name=list(frame.columns)),
        num_boost_round=30,
    )
    return TriagePredictor(
        spec=spec,
        booster=booster,
        calibration=LogitCalibration(slope=1.0, intercept=0.0),
        thresholds=Thresholds(rule_out=0.1, rule_in=0.6),
    )


def test_record_frame_and_reloaded_predictor_agree_on_a_spec_defined_ratio(
    tmp_path: Path,
) -> None:
    spec = parse_spec(_spec_data())
    predictor = _fitted(spec)
    analytes = {"kappa_flc": 60.0, "lambda_flc": 12.0, "haemoglobin": 118.0}
    units = {"kappa_flc": "mg/L", "lambda_flc": "mg/L", "haemoglobin": "g/L"}
    record = {
        "age": 71,
        "sex": "female",
        "analytes": {code: {"value": v, "unit": units[code]} for code, v in analytes.items()},
    }
    score = predictor.score(record)
    assert score.eligible and score.probability is not None, score.issues
    frame = pd.DataFrame([{**analytes, "age": 71, "sex": "female"}])
    scored = score_frame(predictor, frame, explain=True)
    assert scored.inputs["kl_ratio"].tolist() == [5.0], "the frame path computes 60 / 12"
    assert scored.probability[0] == score.probability, "API == frame scorer, bit for bit"
    assert scored.contributions is not None
    assert scored.contributions[0].tolist() == list(score.contributions.values()), (
        "the same explanation on both paths"
    )
    assert score.contributions["kl_ratio"] != 0.0, "the model leans on the ratio"
    driver = next(d for d in score.drivers if d.feature == "kl_ratio")
    assert driver.value == 5.0 and driver.unit is None, "a dimensionless ratio shows no unit"
    assert driver.text.startswith("Kappa/lambda free light chain ratio 5 "), driver.text
    assert "protein" in score.groups, "grouped with its inputs' panel"

    reloaded = TriagePredictor.load(predictor.save(tmp_path / "model"))
    assert reloaded.spec == spec, "the spec, derived expressions included, is saved with it"
    assert reloaded.score(record).probability == score.probability, "and scores the same"


def test_a_derived_driver_names_its_title_unit_and_panel() -> None:
    entry = {"name": "na_minus_k", "title": "Sodium minus potassium"}
    spec = parse_spec(_with_derived({**entry, "difference": ["sodium", "potassium"]}))
    derived = {d.name: d for d in spec.features.derived_features(spec.catalogue)}
    driver = describe_driver("na_minus_k", 136.0, 0.2, spec.catalogue, derived=derived)
    assert driver.text == "Sodium minus potassium 136 mmol/L increased the estimated risk"
    assert driver.unit == "mmol/L", "a difference keeps its inputs' unit"
    assert feature_panel("na_minus_k", spec.catalogue, derived) == "renal", "its inputs' panel"
    missing = describe_driver("na_minus_k", None, -0.1, spec.catalogue, derived=derived)
    assert missing.text == "Sodium minus potassium not available decreased the estimated risk"
