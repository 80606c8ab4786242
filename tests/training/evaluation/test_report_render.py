"""The rendered report: byte-identical reruns, the backend left alone, counts and missing values in
words, DataFrame tables, the replay's lead section and card rows, and model family names."""

from __future__ import annotations

import html
import pickle
import re
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest

from models.spec import load_spec
from tests.training.evaluation.test_evaluate import synthetic_predictions
from training.evaluation.card import build_model_card
from training.evaluation.evaluate import evaluate_predictions
from training.evaluation.formatting import inline_text
from training.evaluation.report import SECTIONS, render_report
from training.evaluation.report_tables import cell_text, frame_table
from training.fit.train import TrainResult
from training.registry.runs import render

SUMMARY = {
    "rows": {"train": 103_848, "stop": 7_519, "calibrate": 33_425, "evaluate": 113_899},
    "events": {"train": 7_272, "stop": 1_242, "calibrate": 2_137, "evaluate": 7_453},
    "exclusions": {"missing_required_panel": 11_549, "out_of_limits": 157},
}
REPLAY = {
    "start": "2011-01-01",
    "end": "2019-12-31",
    "rows": 300_000,
    "scored": 288_297,
    "ineligible": 11_703,
    "events": 19_877,
}


@pytest.fixture(scope="module")
def evaluation() -> dict[str, Any]:
    frame = synthetic_predictions(1500, seed=8)
    return evaluate_predictions(frame, rule_out=0.03, rule_in=0.3, subgroups=("sex",), n_boot=10)


def _text(page: str) -> str:
    """The page's text without images and tags."""
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", page)))


def _dd(page: str, term: str) -> str:
    """The model card's value for one row."""
    match = re.search(rf"<dt>{re.escape(term)}</dt><dd>(.*?)</dd>", page)
    assert match, f"the card has a {term!r} row"
    return html.unescape(match.group(1))


def test_rerendering_a_trained_model_gives_identical_bytes(any_cancer: TrainResult) -> None:
    state = pickle.dumps(np.random.get_state())
    _, first = render(any_cancer)
    _, second = render(any_cancer)
    assert first == second, "the same training result renders to the same bytes"
    assert pickle.dumps(np.random.get_state()) == state, "the global RNG is untouched"
    assert any_cancer.evaluation["roc"]["band"]["fpr"], "the trained model's ROC has its band"
    assert "Software" not in first and "matplotlib" not in first.lower(), "no version stamp"


def test_rendering_leaves_the_matplotlib_backend_alone(evaluation: dict[str, Any]) -> None:
    original = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        render_report(title="t", model_card={}, evaluation=evaluation)
        assert matplotlib.get_backend() == "svg", "the renderer does not switch backends"
    finally:
        matplotlib.use(original)


def test_card_counts_have_separators_and_missing_values_are_words(
    evaluation: dict[str, Any],
) -> None:
    card = build_model_card(load_spec("any_cancer"), data_summary=SUMMARY)
    card["calibration"] = {"method": "sigmoid", "deployment_prevalence": None}  # an older card
    del card["population_scale"]
    page = render_report(title="t", model_card=card, evaluation=evaluation)
    assert "train: 103,848" in _dd(page, "Rows per period") and "stop: 7,519" in page
    assert _dd(page, "Events per period").startswith("train: 7,272, stop: 1,242")
    assert _dd(page, "Exclusions (validation codes)") == (
        "missing_required_panel: 11,549, out_of_limits: 157"
    )
    assert _dd(page, "Calibration") == "sigmoid", "an unset prevalence is left out"
    assert _dd(page, "Train") == "2011-01-01 to 2015-12-31", "a period reads A to B"
    assert "required_analytes: none" in _dd(page, "Eligibility"), "an empty list in words"
    text = _text(page)
    assert "None" not in text and "nan" not in text.split(), "no Python repr in the page"
    assert "Events per period: train: 7,272" in text, "the limitations use separators too"


def test_inline_text_writes_words() -> None:
    value: dict[str, Any] = {
        "a": None,
        "b": 1234567,
        "c": [],
        "d": True,
        "e": float("nan"),
        "f": np.int64(7519),
    }
    assert (
        inline_text(value) == "a: not given, b: 1,234,567, c: none, d: yes, e: not given, f: 7,519"
    )


def test_replay_card_and_lead_tables(evaluation: dict[str, Any]) -> None:
    card = build_model_card(
        load_spec("any_cancer"), data_summary={"exclusions": {"out_of_limits": 157}}
    )
    card["replay"] = REPLAY
    lead = {"Bands by year": pd.DataFrame({"year": [2011, 2012], "scored": [31_002, 30_877]})}
    page = render_report(
        title="t",
        model_card=card,
        evaluation=evaluation,
        lead_tables=lead,
        extra_tables={"Drift": pd.DataFrame({"psi": [0.1]})},
    )
    assert _dd(page, "Replayed period") == "2011-01-01 to 2019-12-31"
    assert _dd(page, "Rows replayed") == (
        "300,000 rows: 288,297 scored, 11,703 ineligible; 19,877 cancers among the scored"
    )
    assert "<dt>Rows per period</dt>" not in page and "<dt>Events per period</dt>" not in page
    findings, lead_at = page.index("Key findings"), page.index(f">{SECTIONS['lead']}</h2>")
    assert findings < lead_at < page.index(f">{SECTIONS['card']}</h2>"), "after the findings"
    assert page.index(f">{SECTIONS['extra']}</h2>") > page.index(f">{SECTIONS['periods']}</h2>")
    nav = re.search(r"<nav>(.*?)</nav>", page)
    assert nav and nav.group(1).startswith('<a href="#lead">Replay results</a>'), "listed first"
    assert "<td>31,002</td>" in page, "counts in the lead tables have separators"
    unknown = {**REPLAY, "start": None, "end": None, "events": None}
    card["replay"] = unknown
    page = render_report(title="t", model_card=card, evaluation=evaluation)
    assert _dd(page, "Replayed period") == "not given"
    assert "not given cancers among the scored" in _dd(page, "Rows replayed")


def test_frame_table_drops_a_range_index_and_formats_cells() -> None:
    frame = pd.DataFrame(
        {
            "feature": ["crp", "psa"],
            "rows": np.array([103_848, 12], dtype=np.int64),
            "ks_p_value": [0.0000123, 0.25],
            "flagged": [True, False],
            "psi": [0.1234, np.nan],
        }
    )
    page = frame_table(frame)
    assert "<th></th>" not in page and "<td>0</td>" not in page, "no RangeIndex column"
    assert page.startswith('<div class="wide">'), "wrapped in a scrollable box"
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert cells[:5] == ["crp", "103,848", "&lt; 0.001", "yes", "0.123"], cells
    assert cells[5:] == ["psa", "12", "0.250", "no", "–"], cells
    named = frame_table(frame.set_index("feature"))
    assert re.findall(r"<th>(.*?)</th>", named)[0] == "feature", "a named index is shown"
    assert cell_text("p_value", 0.001) == "0.001" and cell_text("x", np.float64(2.5)) == "2.500"


def test_wide_tables_scroll_instead_of_being_cut(evaluation: dict[str, Any]) -> None:
    wide = pd.DataFrame({f"column_{i}": [i * 1000] for i in range(30)})
    page = render_report(
        title="t", model_card={}, evaluation=evaluation, extra_tables={"wide": wide}
    )
    assert ".wide{overflow-x:auto" in page, "the scrollable box's style"
    tables, boxed = page.count("<table"), page.count('<div class="wide"><table')
    assert tables == boxed > 0, "every table sits in the box"
    assert "<th>column_29</th>" in page, "the last column is in the page"


def test_subgroup_oe_without_a_ci_and_family_names(evaluation: dict[str, Any]) -> None:
    rows = [dict(r) for r in evaluation["subgroups"]["rows"]]
    for row in rows:
        row.pop("observed_expected_ci")  # an evaluation logged before the O/E CI
    old = {**evaluation, "subgroups": {**evaluation["subgroups"], "rows": rows}}
    page = render_report(title="t", model_card={}, evaluation=old, baseline_evaluation=old)
    oe = f"{rows[0]['observed_expected']:.3f} [–]"
    assert f"<td>{oe}</td>" in page, "the missing interval is a dash"
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert "served model" in headers and "comparator (comparator)" not in headers, headers
    assert not {"LightGBM", "Baseline"} & set(headers), "no invented family or generic name"
    named = {**evaluation, "model_family": "spline"}
    page = render_report(
        title="t",
        model_card={},
        evaluation=named,
        baseline_evaluation={**evaluation, "model_family": "lightgbm"},
    )
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert headers.count("spline logistic") == 2 and "LightGBM (comparator)" in headers, headers


def test_the_quoted_point_s_reason_is_in_the_headline(evaluation: dict[str, Any]) -> None:
    quoted = {**evaluation, "net_benefit_at": {**evaluation["net_benefit_at"], "reason": "why"}}
    page = render_report(title="t", model_card={}, evaluation=quoted)
    assert "<td>net benefit at 0.03 (treat all): why</td>" in page
