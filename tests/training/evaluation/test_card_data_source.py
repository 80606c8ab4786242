"""The model card and report follow the data and the outcome: a user's real cohort is described
by its file, hash, rows and dates (no simulated-data claim), the simulator's cohort keeps the
simulated wording, and a non-cancer outcome is named as the spec names it."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import yaml

from models.spec import ModelSpec, load_spec, parse_spec
from tests.training.evaluation.test_evaluate import synthetic_predictions
from training.evaluation.card import build_model_card
from training.evaluation.evaluate import evaluate_predictions
from training.evaluation.report import render_report

SHA = "0123456789abcdef" * 4
REAL = {
    "name": "gp_bloods_2010_2020.csv",
    "sha256": SHA,
    "rows": 48_213,
    "date_range": ["2010-07-01", "2020-07-01"],
    "date_precision": "year",
    "simulated": False,
    "ties": 1.0,
}
SIMULATED = {
    "name": "referrals_wide.parquet",
    "sha256": SHA,
    "rows": 30_000,
    "date_range": ["2011-01-03", "2019-12-30"],
    "date_precision": "day",
    "simulated": True,
    "ties": 0.0,
}
SUMMARY = {"rows": {"evaluate": 2000}, "events": {"evaluate": 230}}


def _text(card: dict[str, Any]) -> str:
    """Every sentence of the card a reader sees (the provenance under `data` aside)."""
    parts = [*card["limitations"], *(row["where"] for row in card["tripod_ai"])]
    return " ".join([*parts, str((card.get("data_source") or {}).get("description", ""))])


def _cancer_death() -> ModelSpec:
    data = yaml.safe_load((resources.files("models") / "specs" / "lower_gi.yaml").read_text())
    data["cohort"] = {"kind": "generic"}
    data["outcome"] = {
        "column": "cancer",
        "name": "death from cancer",
        "definition": "death from cancer at any time in follow-up",
    }
    return parse_spec(data)


def test_real_cohort_card_names_the_file_and_claims_no_simulation() -> None:
    spec = load_spec("lower_gi")
    card = build_model_card(spec, data_summary={**SUMMARY, "cohort": REAL})
    text = _text(card)
    assert "simulat" not in text.lower(), "no simulated-data claim for a real cohort"
    source = card["data_source"]["description"]
    for fact in ("gp_bloods_2010_2020.csv", SHA[:12], "48,213", "2010-07-01", "2020-07-01"):
        assert fact in source, f"the data source names {fact}"
    assert SHA[:13] not in source, "the hash is cut to 12 hex digits"
    assert "known only to the year" in source
    assert spec.population.rstrip(".") in source, "the spec's population text"
    assert any(
        "representativeness must be judged against the intended population" in x
        for x in card["limitations"]
    )
    coarse = (
        "Index dates known only to the year: periods are assigned by year and the early-stopping "
        "slice is a random share of patients."
    )
    assert coarse in card["limitations"], "coarse dates are a stated limitation"
    assert any("100.0% of rows share their index date" in x for x in card["limitations"]), "ties"
    items = {row["item"]: row["where"] for row in card["tripod_ai"]}
    assert "gp_bloods_2010_2020.csv" in items["5a"] and SHA[:12] in items["5a"]
    assert "2010-07-01 to 2020-07-01" in items["5b"]
    assert "gp_bloods_2010_2020.csv" in items["6a"] and "gp_bloods_2010_2020.csv" in items["6c"]


def test_real_cohort_report_has_no_simulated_claim() -> None:
    spec = load_spec("lower_gi")
    card = build_model_card(spec, data_summary={**SUMMARY, "cohort": REAL})
    evaluation = evaluate_predictions(
        synthetic_predictions(400, seed=3), rule_out=0.05, rule_in=0.5, n_boot=5
    )
    page = render_report(title="real", model_card=card, evaluation=evaluation)
    assert "simulat" not in page.lower()
    assert "<dt>Data source</dt><dd>gp_bloods_2010_2020.csv (SHA-256 0123456789ab" in page


@pytest.mark.parametrize("cohort", [SIMULATED, None], ids=["simulator", "older run"])
def test_simulated_cohort_keeps_the_simulated_wording(cohort: dict[str, Any] | None) -> None:
    spec = load_spec("lower_gi")
    summary = {**SUMMARY, **({"cohort": cohort} if cohort else {})}
    card = build_model_card(spec, data_summary=summary)
    assert card["limitations"][0].startswith(
        "Simulated data: the cohorts come from the project's seeded simulator, not from patients"
    )
    assert card["limitations"][1].startswith("Temporal split at one (simulated) centre")
    items = {row["item"]: row["where"] for row in card["tripod_ai"]}
    assert items["6a"] == "Model card: referrals setting; one simulated centre with several labs."
    assert items["6c"] == "Treatments are not recorded in the simulated data."
    assert not any("Index dates known only" in x for x in card["limitations"]), "day precision"
    if cohort is None:
        assert "data_source" not in card, "an older run has no data-source description"
    else:
        source = card["data_source"]["description"]
        assert source.startswith("Simulated by the project's seeded simulator, not from patients")
        assert "referrals_wide.parquet" in source and SHA[:12] in source


def test_report_for_another_outcome_names_it_in_every_table() -> None:
    spec = _cancer_death()
    card = build_model_card(spec, data_summary={**SUMMARY, "cohort": REAL})
    frame = synthetic_predictions(600, seed=4)
    evaluation = evaluate_predictions(
        frame, rule_out=0.05, rule_in=0.5, subgroups=("sex",), deployment_prevalence=0.01, n_boot=5
    )
    page = render_report(
        title="death", model_card=card, evaluation=evaluation, baseline_evaluation=evaluation
    )
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert not [h for h in headers if "cancers" in h], "no 'cancers' in any table header"
    assert {"deaths from cancer in band", "deaths from cancer found per 100k"} <= set(headers)
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert "rows / patients / deaths from cancer" in cells, "headline and side-by-side rows"
    assert "cancers" not in " ".join(re.findall(r'<p class="note">(.*?)</p>', page))
    assert "any time in follow-up" in page, "the horizon is described"
    assert "Low estimated risk of death from cancer" in page, "the served recommendations"
    assert card["outcome"]["horizon_days"] is None
    assert card["outcome"]["horizon"] == "any time in follow-up"
    assert (card["outcome"]["name"], card["outcome"]["plural"]) == (
        "death from cancer",
        "deaths from cancer",
    )
    assert "myeloma" not in page.lower()


def test_cancer_report_keeps_its_wording() -> None:
    card = build_model_card(load_spec("lower_gi"), data_summary=SUMMARY)
    evaluation = evaluate_predictions(
        synthetic_predictions(400, seed=3), rule_out=0.05, rule_in=0.5, n_boot=5
    )
    page = render_report(title="cancer", model_card=card, evaluation=evaluation)
    headers = re.findall(r"<th>(.*?)</th>", page)
    assert "cancers in band" in headers and "cancers" in headers
    assert "horizon 365 days" in page or re.search(r"horizon \d+ days", page)
