"""The model card and the self-contained HTML evaluation report."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from models.spec import load_spec
from tests.training.evaluation.test_evaluate import synthetic_predictions
from training.evaluation.card import build_model_card
from training.evaluation.evaluate import evaluate_predictions
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


def test_myeloma_card_mentions_the_deployment_prevalence() -> None:
    card = _card("myeloma", version="3", run_id="abc")
    assert card["calibration"]["deployment_prevalence"] == pytest.approx(0.0006), "in the card"
    assert any("0.0006" in x for x in card["limitations"]), "and in the limitations"
    assert (card["version"], card["run_id"]) == ("3", "abc"), "version and run id carried over"
    lower_gi = _card("lower_gi")
    assert lower_gi["calibration"]["deployment_prevalence"] is None, "cohort model: no shift"
