"""Any outcome: its name in words, an optional horizon, a generic cohort kind and the band
recommendations from the spec (per-kind defaults naming the outcome)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml

from models.calibration import LogitCalibration
from models.predictor import TriagePredictor, spec_feature_frame
from models.spec import SpecError, load_spec, parse_spec, spec_names
from models.triage import (
    BANDS,
    DEFAULT_RECOMMENDATIONS,
    Thresholds,
    recommend,
    spec_recommendations,
)

# What the shipped myeloma model served before its wording moved into its spec.
MYELOMA_TEXT = {
    "green": "Low estimated risk of myeloma from these blood results: no reflex myeloma tests "
    "suggested; safety-net as usual.",
    "amber": "Intermediate estimated risk of myeloma: consider serum protein electrophoresis and "
    "free light chains if symptoms persist.",
    "red": "High estimated risk of myeloma: request serum protein electrophoresis and serum free "
    "light chains.",
}


def _spec_data(**changes: Any) -> dict[str, Any]:
    """The shipped lower_gi spec as plain data, with top-level sections updated."""
    data = yaml.safe_load((resources.files("models") / "specs" / "lower_gi.yaml").read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return data


def _cancer_death(kind: str, **triage: Any) -> dict[str, Any]:
    return _spec_data(
        name="cancer_death",
        cohort={"kind": kind, "pathways": []},
        outcome={
            "column": "died",
            "name": "death from cancer",
            "definition": "death with cancer as the underlying cause, at any time in follow-up",
            "horizon_days": None,
        },
        triage=triage,
    )


@pytest.mark.parametrize("kind", ["generic", "primary_care"])
def test_cancer_death_model_gets_wording_naming_its_outcome(kind: str) -> None:
    spec = parse_spec(_cancer_death(kind))
    texts = {band: recommend(band, spec) for band in BANDS}
    assert all("death from cancer" in text for text in texts.values()), texts
    joined = " ".join(texts.values()).lower()
    assert "myeloma" not in joined and "electrophoresis" not in joined, "no myeloma wording"
    assert len(set(texts.values())) == 3, "each band has its own text"
    assert texts["green"].startswith("Low") and texts["red"].startswith("High"), texts


def test_generic_kind_is_neutral() -> None:
    texts = spec_recommendations(parse_spec(_cancer_death("generic")))
    joined = " ".join(texts.values()).lower()
    for word in ("referral", "electrophoresis", "blood results", "expedite"):
        assert word not in joined, f"generic wording says nothing about {word!r}"


@pytest.mark.parametrize("name", [n for n in spec_names() if n != "myeloma"])
def test_no_shipped_model_but_myeloma_mentions_myeloma(name: str) -> None:
    texts = spec_recommendations(load_spec(name))
    assert "myeloma" not in " ".join(texts.values()).lower(), texts


def test_myeloma_model_serves_the_same_text_from_its_spec() -> None:
    spec = load_spec("myeloma")
    assert spec.outcome.name == "myeloma" and spec.triage.recommendations == MYELOMA_TEXT
    assert spec_recommendations(spec) == MYELOMA_TEXT, "served text unchanged"
    assert "myeloma" not in " ".join(DEFAULT_RECOMMENDATIONS["primary_care"].values()), (
        "the primary-care defaults do not name myeloma"
    )


def test_spec_recommendations_override_per_band_with_the_outcome_name() -> None:
    data = _cancer_death("primary_care", recommendations={"red": "Refer: high risk of {outcome}."})
    texts = spec_recommendations(parse_spec(data))
    assert texts["red"] == "Refer: high risk of death from cancer.", "override, name filled in"
    assert texts["green"] == DEFAULT_RECOMMENDATIONS["primary_care"]["green"].replace(
        "{outcome}", "death from cancer"
    ), "bands left out keep the kind's default"


@pytest.mark.parametrize(
    ("triage", "expected"),
    [
        ({"recommendations": {"purple": "x"}}, "triage.recommendations.purple"),
        ({"recommendations": {"red": "  "}}, "empty text for ['red']"),
    ],
)
def test_bad_recommendations_fail_naming_the_field(triage: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(_cancer_death("generic", **triage))


def test_unknown_cohort_kind_lists_generic() -> None:
    with pytest.raises(SpecError, match="'generic'"):
        parse_spec(_spec_data(cohort={"kind": "hospital"}))


def test_horizon_is_optional_and_described() -> None:
    spec = parse_spec(_cancer_death("generic"))
    assert spec.outcome.horizon_days is None
    assert spec.outcome.horizon_text == "any time in follow-up"
    data = _spec_data()
    del data["outcome"]["horizon_days"]
    assert parse_spec(data).outcome.horizon_days is None, "absent horizon: any time"
    assert load_spec("lower_gi").outcome.horizon_text.endswith(" days")
    with pytest.raises(SpecError, match=r"outcome\.horizon_days"):
        parse_spec(_spec_data(outcome={"horizon_days": 0}))


@pytest.mark.parametrize(
    ("name", "plural", "expected"),
    [
        ("cancer", None, "cancers"),
        ("death from cancer", None, "deaths from cancer"),
        ("lung cancer", None, "lung cancers"),
        ("metastasis", None, "metastases"),
        ("myeloma", "myeloma cases", "myeloma cases"),
    ],
)
def test_outcome_plural_is_given_or_derived(name: str, plural: str | None, expected: str) -> None:
    outcome = {"name": name, **({"plural": plural} if plural else {})}
    assert parse_spec(_spec_data(outcome=outcome)).outcome.plural_name == expected


def test_default_outcome_is_cancer() -> None:
    spec = load_spec("any_cancer")
    assert (spec.outcome.name, spec.outcome.plural_name) == ("cancer", "cancers")


SMALL = """
name: cancer_death
title: Death from cancer
intended_use: tests
population: adults with a full blood count
cohort: {kind: generic}
outcome: {column: died, name: death from cancer, definition: death from cancer in follow-up}
features: {analytes: [haemoglobin, platelets]}
split:
  train: {start: 2015-01-01, end: 2015-12-31}
  calibrate: {start: 2016-01-01, end: 2016-12-31}
  evaluate: {start: 2017-01-01, end: 2017-12-31}
triage: {rule_out_sensitivity: 0.9, rule_in_ppv: 0.2}
"""


def test_predictor_serves_the_specs_wording(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(SMALL))
    rng = np.random.default_rng(3)
    n = 400
    values = pd.DataFrame(
        {
            "haemoglobin": rng.normal(135, 15, n),
            "platelets": rng.normal(280, 60, n),
            "age": rng.integers(40, 90, n),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    label = (rng.random(n) < 0.3).astype(float)
    frame = spec_feature_frame(spec, values)
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(frame, label=label), num_boost_round=5)
    predictor = TriagePredictor(
        spec=spec,
        booster=booster,
        calibration=LogitCalibration(slope=1.0, intercept=0.0),
        thresholds=Thresholds(rule_out=0.0, rule_in=1.0),  # every score amber
    )
    record = {
        "age": 70,
        "sex": "male",
        "analytes": {
            "haemoglobin": {"value": 120, "unit": "g/L"},
            "platelets": {"value": 300, "unit": "10*9/L"},
        },
    }
    score = predictor.score(record, explain=False)
    assert score.eligible and score.band == "amber", score.issues
    expected = "Intermediate estimated risk of death from cancer: follow the local protocol for "
    assert score.recommendation == expected + "the amber band."
    reloaded = TriagePredictor.load(predictor.save(tmp_path / "model"))
    assert reloaded.score(record, explain=False).recommendation == score.recommendation
