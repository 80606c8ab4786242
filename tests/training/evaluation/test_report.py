"""The model card and the self-contained HTML evaluation report."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from models.spec import load_spec, parse_spec
from tests.training.evaluation.test_evaluate import synthetic_predictions
from training.evaluation.card import build_model_card
from training.evaluation.evaluate import evaluate_predictions
from training.evaluation.formatting import flag_text
from training.evaluation.metrics import choose_rule_in_threshold, choose_rule_out_threshold
from training.evaluation.report import SECTIONS, render_report

SUBGROUPS = ("sex", "age_band", "deprivation", "ethnicity")
FEATURES = ("haemoglobin", "platelets", "crp", "age", "sex")
DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


@pytest.fixture(scope="module")
def evaluations() -> dict[str, Any]:
    """A case-control style evaluation (so every section applies) and a noisier baseline."""
    frame = synthetic_predictions(2000)
    y, p = frame["cancer"], frame["probability"]
    rule_out = choose_rule_out_threshold(y, p, 0.95)
    rule_in = choose_rule_in_threshold(y, p, 0.3)
    noisy = frame.assign(
        probability=np.clip(p + np.random.default_rng(1).normal(0, 0.03, len(p)), 1e-3, 0.999)
    )
    common: dict[str, Any] = {
        "rule_out": rule_out,
        "rule_in": rule_in,
        "subgroups": SUBGROUPS,
        "deployment_prevalence": 0.0006,
        "n_boot": 30,
    }
    return {
        "model": evaluate_predictions(frame, **common),
        "baseline": evaluate_predictions(noisy, **common),
    }


@pytest.fixture(scope="module")
def shap_sample() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    contributions = {f"contrib__{f}": rng.normal(0, 0.3, 200) for f in FEATURES}
    values = {f"value__{f}": rng.normal(0, 1, 200) for f in FEATURES}
    return pd.DataFrame({**contributions, **values, "base": np.full(200, -2.5)})


def _card(name: str, **summary: Any) -> dict[str, Any]:
    data_summary = {"rows": {"evaluate": 2000}, "events": {"evaluate": 230}, **summary}
    return build_model_card(load_spec(name), data_summary=data_summary)


def test_report_is_self_contained_with_every_section(
    evaluations: dict[str, Any], shap_sample: pd.DataFrame
) -> None:
    card = _card("myeloma")
    page = render_report(
        title="Myeloma <evaluation>",
        model_card=card,
        evaluation=evaluations["model"],
        baseline_evaluation=evaluations["baseline"],
        shap_sample=shap_sample,
        extra_tables={"Notes <script>": pd.DataFrame({"text": ["<script>alert(1)</script>"]})},
        lead_tables={"Replayed bands": pd.DataFrame({"band": ["green"], "rows": [1200]})},
    )
    missing = [h for h in SECTIONS.values() if f">{html.escape(h)}</h2>" not in page]
    assert not missing, f"section headings missing: {missing}"
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) >= 5, "ROC, calibration, decision curve, forest plot and SHAP beeswarm"
    assert all(src.startswith("data:image/png;base64,") for src in images), "images are inline"
    assert "http" not in DATA_URI.sub("", page), "no external resource or link of any kind"
    assert not re.search(r"<link|<script|url\(", page, re.I), "no stylesheet/script includes"
    assert html.escape(card["intended_use"]) in page, "the model card's intended use is shown"
    assert "Myeloma &lt;evaluation&gt;" in page, "the title is escaped"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, "table text is escaped"
    assert plt.get_fignums() == [], "every plot closes its figure"


def test_report_without_optional_inputs(evaluations: dict[str, Any]) -> None:
    page = render_report(title="t", model_card=_card("lower_gi"), evaluation=evaluations["model"])
    assert SECTIONS["comparison"] not in page, "no baseline: no side-by-side section"
    assert SECTIONS["shap"] not in page, "no SHAP sample: no beeswarm"
    assert len(re.findall(r"<img ", page)) == 4, "ROC, calibration, decision curve, forest"
    assert plt.get_fignums() == [], "every plot closes its figure"


def test_report_tolerates_undefined_metrics() -> None:
    frame = synthetic_predictions(60, seed=5)
    evaluation = evaluate_predictions(
        frame, rule_out=None, rule_in=0.99, subgroups=("sex",), n_boot=5
    )
    # JSON round trip: the report is re-rendered from logged artifacts.
    evaluation = json.loads(json.dumps(evaluation, allow_nan=True))
    page = render_report(title="tiny", model_card=_card("lower_gi"), evaluation=evaluation)
    assert "not offered" in page, "a band without a threshold is shown as not offered"


@pytest.mark.parametrize("name", ["lower_gi", "myeloma"])
def test_model_card_lists_tripod_items_and_exclusions(name: str) -> None:
    spec = load_spec(name)
    card = _card(name)
    json.dumps(card)  # the card is logged as JSON
    items = {row["item"] for row in card["tripod_ai"]}
    assert {"3c", "5a", "5b", "6a", "6b", "6c"} <= items, "the confirmed TRIPOD+AI item numbers"
    topics = " ".join(row["topic"] for row in card["tripod_ai"]).lower()
    for topic in ("sample size", "missing data", "fairness", "calibration", "clinical utility",
                  "model updating", "code availability", "poor-quality"):  # fmt: skip
        assert topic in topics, f"TRIPOD+AI topic {topic!r} is in the checklist"
    statuses = {row["status"] for row in card["tripod_ai"]}
    assert statuses <= {"covered", "partial", "not covered"}, "honest three-way status"
    assert "not covered" in statuses, "gaps are declared, not hidden"
    assert card["not_for"] == list(spec.not_for), "every not-for entry of the spec is listed"
    assert card["periods"]["evaluate"]["start"] == spec.split.evaluate.start.isoformat(), "dates"
    assert any("not external validation" in x for x in card["limitations"]), "temporal split"


SAMPLING = {
    "population_counts": "/data/myeloma/myeloma_strata.csv",
    "match_on": ["age_band", "sex"],
    "population": 300_000,
    "population_cases": 180,
    "population_prevalence": 0.0006,
    "strata": 28,
    "sampled_cases": 180,
    "controls": 900,
    "overall_sampling_fraction": 0.003,
    "borrowed": ["age 105-109, male: no controls sampled; uses age 100-104, male"],
}
FAMILY = {
    "rule": "auto",
    "chosen": "spline",
    "comparator": "lightgbm",
    "auto_margin": 0.005,
    "calibration_auc_difference": {"estimate": 0.002, "low": -0.004, "high": 0.008},
    "n_boot": 1000,
    "reason": "LightGBM minus spline AUC on the calibration period is +0.0020 [-0.0040, "
    "+0.0080]: not better by the margin 0.005 with a lower bound above 0",
}
CHOICES = {
    "rule_out": {"threshold": 0.0012, "target": 0.95, "method": "wilson", "events": 120,
                 "min_events": 50, "estimate": 0.97, "lower_bound": 0.951,
                 "events_in_band": 4, "reason": None},
    "rule_in": {"threshold": None, "target": 0.005, "method": "weighted ppv", "events": 120,
                "min_events": 50, "estimate": float("nan"), "lower_bound": float("nan"),
                "events_in_band": None, "reason": "the PPV target 0.005 is never reached"},
}  # fmt: skip


def _reader_text(card: dict[str, Any]) -> str:
    """The card's sentences a reader sees (limitations, TRIPOD+AI, scale, family, thresholds)."""
    parts = [*card["limitations"], *(row["where"] for row in card["tripod_ai"])]
    family = card["model_family"]["text"]
    return " ".join([*parts, card["population_scale"], family, *card["thresholds"]])


def test_myeloma_card_states_the_per_stratum_population_scale() -> None:
    card = _card("myeloma", version="3", run_id="abc", case_control=SAMPLING,
                 model_family=FAMILY, thresholds=CHOICES)  # fmt: skip
    json.dumps(card)
    scale = card["population_scale"]
    for fact in ("Per-stratum offsets", "log r_s", "5-year age band x sex", "myeloma_strata.csv",
                 "300,000", "180 cases", "0.0006", "28 strata",
                 "age 105-109, male: no controls sampled"):  # fmt: skip
        assert fact in scale, f"the population scale states {fact!r}"
    assert any(scale in x for x in card["limitations"]), "and the limitations repeat it"
    assert card["calibration"]["deployment_prevalence"] is None
    assert card["calibration"]["case_control"]["population_counts"] == "myeloma_strata.csv"
    assert card["model_family"]["chosen"] == "spline"
    assert "Served: spline logistic (comparator LightGBM)" in card["model_family"]["text"]
    assert "not better by the margin 0.005" in card["model_family"]["text"], "the reason"
    green, red = card["thresholds"]
    assert green.startswith("Green (rule-out): 0.0012 by wilson") and "120 calibration" in green
    assert red.startswith("Red (rule-in): not set (the PPV target 0.005 is never reached)")
    text = _reader_text(card)
    assert "None" not in text and "nan" not in text, "no raw None or NaN is printed"
    assert "not Hanley-McNeil" in text and "patient-level bootstrap" in text
    assert (card["version"], card["run_id"]) == ("3", "abc"), "version and run id carried over"


def test_card_without_the_run_s_choices_says_not_recorded() -> None:
    card = _card("myeloma")
    assert "counts were not recorded" in card["population_scale"]
    assert card["model_family"]["text"] == "Model family: not recorded."
    assert "None" not in _reader_text(card)
    lower_gi = _card("lower_gi")
    assert lower_gi["calibration"]["deployment_prevalence"] is None, "cohort model: no shift"
    assert lower_gi["population_scale"].startswith("Cohort scale")


def test_legacy_global_shift_card_mentions_the_deployment_prevalence() -> None:
    data = yaml.safe_load((resources.files("models") / "specs" / "myeloma.yaml").read_text())
    data["calibration"] = {"method": "sigmoid", "deployment_prevalence": 0.0006}
    card = build_model_card(parse_spec(data), data_summary={"rows": {"evaluate": 2000}})
    assert card["calibration"]["deployment_prevalence"] == pytest.approx(0.0006), "in the card"
    assert any("0.0006" in x for x in card["limitations"]), "and in the limitations"
    assert card["population_scale"].startswith("Global shift")


def test_report_shows_green_band_risk_family_and_flagged_subgroups() -> None:
    frame = synthetic_predictions(2000)
    y, p = frame["cancer"], frame["probability"]
    common: dict[str, Any] = {
        "rule_out": choose_rule_out_threshold(y, p, 0.95), "rule_in": 0.5,
        "subgroups": ("sex", "age_band"), "n_boot": 20, "referral_threshold": 0.05,
        "sensitivity_target": 0.99, "subgroup_min_events": 5,
        "threshold_choices": CHOICES,
    }  # fmt: skip
    served = {**evaluate_predictions(frame, **common), "model_family": "spline"}
    served["vs_baseline"] = {"estimate": -0.001, "low": -0.01, "high": 0.008}
    comparator = {**served, "model_family": "lightgbm"}
    card = _card("lower_gi", model_family=FAMILY, thresholds=CHOICES)
    page = render_report(
        title="t", model_card=card, evaluation=served, baseline_evaluation=comparator
    )
    risk = re.search(r"Risk in the green band [\d.]+% \[[\d.]+%, [\d.]+%\], (below|NOT)", page)
    assert risk, "the green band's risk with its CI"
    assert "the 5% referral threshold" in page, "beside the referral threshold"
    flagged = served["subgroups"]["flagged"]
    assert flagged, "the fixture has flagged levels"
    assert f"Subgroups flagged ({len(flagged)})" in page, "the flagged list is headed"
    entry = html.escape(flag_text(flagged[0], "cancers"))
    assert entry in page, "each flagged level with its figures"
    assert page.index("Key findings") < page.index(f">{SECTIONS['card']}</h2>"), "near the top"
    assert "rule-out sensitivity below target" in page, "which check failed"
    assert "Served model: spline logistic" in page and "+0.0020 [-0.0040, +0.0080]" in page
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert "spline logistic" in headers and "LightGBM (comparator)" in headers
    assert "Baseline" not in headers, "the comparator is named by its family"
    assert "the PPV target 0.005 is never reached" in page, "why a threshold was not set"
    assert "None" not in re.sub(r"<img[^>]*>", "", page), "no raw None in the page"
    assert plt.get_fignums() == [], "every plot closes its figure"
