"""The model card: what the model is for and not for, where its data come from, its limitations,
and a TRIPOD+AI checklist of what the report covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.spec import ModelSpec
from models.validation import ISSUE_CODES
from training.evaluation.formatting import inline_text
from training.json_files import json_safe

# --------------------------------------------------------------------------- model card

# Item numbers confirmed from the TRIPOD+AI checklist; other topics are listed by name only.
_COVERED, _PARTIAL, _NOT = "covered", "partial", "not covered"


def _period(split_range: Any) -> dict[str, str]:
    return {"start": split_range.start.isoformat(), "end": split_range.end.isoformat()}


def _limitations(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[str]:
    s = spec.split
    items = [
        "Simulated data: the cohorts come from the project's seeded simulator, not from patients; "
        "the figures describe the method, not performance on real referrals.",
        f"Temporal split at one (simulated) centre, which is not external validation: trained "
        f"{s.train.start}..{s.train.end}, calibrated {s.calibrate.start}..{s.calibrate.end}, "
        f"evaluated {s.evaluate.start}..{s.evaluate.end}, all from the same population.",
        "Missing data: untested analytes stay missing and LightGBM routes them with its native "
        "NaN handling (a learned default direction at each split); nothing is imputed. A "
        "different test-ordering pattern at deployment can shift the risks.",
    ]
    if spec.is_case_control:
        items.append(
            f"Case-control training: the probabilities are shifted (log-odds intercept "
            f"correction) to the stated deployment prevalence "
            f"{spec.calibration.deployment_prevalence:g}. Calibration is checked on the "
            f"case-control scale only; PPV and NPV at the deployment prevalence come from the "
            f"sample's sensitivity and specificity by Bayes' rule."
        )
    else:
        items.append(
            "Probabilities reflect the case mix and conversion rate of the calibration period; "
            "a change in either needs recalibration."
        )
    items.append(
        "Subgroup sizes: estimates for small subgroups rest on few cancers (no AUC below 5); "
        "see the subgroup table for n and events. Subgroup AUC intervals are Hanley-McNeil "
        "(row-level), not patient-level bootstrap."
    )
    if "events" in data_summary:
        items.append(f"Events per period: {inline_text(data_summary['events'])}.")
    return items


def _tripod(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """TRIPOD+AI topics this report covers, honestly marked; manuscript-only items are left out."""
    equity = [g for g in ("deprivation", "ethnicity") if g in spec.subgroups]
    code = data_summary.get("code_version")
    rows = [
        (
            "3c",
            "Health inequalities",
            _PARTIAL if equity else _NOT,
            f"Subgroup table and forest plot by {', '.join(spec.subgroups) or 'nothing'}; the data "
            "are simulated, so no real inequality is described.",
        ),
        (
            "5a",
            "Data sources",
            _PARTIAL,
            "Model card (data, limitations): simulated cohorts; representativeness of real "
            "populations cannot be assessed.",
        ),
        ("5b", "Data dates", _COVERED, "Model card: train / calibrate / evaluate periods."),
        (
            "6a",
            "Setting",
            _PARTIAL,
            f"Model card: {spec.cohort.kind} setting; one simulated centre with several labs.",
        ),
        (
            "6b",
            "Eligibility",
            _COVERED,
            "Model card: age range, required panels/analytes; records with validation errors "
            "are excluded (counts by code).",
        ),
        ("6c", "Treatments", _NOT, "Treatments are not recorded in the simulated data."),
        ("-", "Outcome definition and horizon", _COVERED, "Model card: outcome."),
        ("-", "Predictors", _COVERED, "Model card: features."),
        (
            "-",
            "Sample size",
            _PARTIAL,
            "Rows and events per period are reported; no formal sample-size calculation.",
        ),
        (
            "-",
            "Missing data",
            _PARTIAL,
            "LightGBM native NaN routing (limitations); missingness is not tabulated by subgroup.",
        ),
        (
            "-",
            "Class imbalance / case-control sampling",
            _COVERED if spec.is_case_control else _PARTIAL,
            "Prevalence shift and Bayes PPV/NPV at the deployment prevalence"
            if spec.is_case_control
            else "No resampling or class weights; Platt calibration on a later period.",
        ),
        (
            "-",
            "Fairness",
            _PARTIAL,
            "Performance by subgroup (AUC, O/E, rule-out sensitivity); no fairness constraint, "
            "formal disparity test or mitigation.",
        ),
        (
            "-",
            "Discrimination with CI",
            _COVERED,
            "Headline metrics: AUC with patient-level bootstrap 95% CI; ROC curve.",
        ),
        (
            "-",
            "Calibration with CI",
            _COVERED,
            "O/E, intercept and slope with bootstrap CIs; binned curve with Wilson CIs.",
        ),
        (
            "-",
            "Clinical utility",
            _COVERED,
            "Decision curve (net benefit); sensitivity/specificity/PPV/NPV at the RAG thresholds.",
        ),
        ("-", "Subgroup performance", _COVERED, "Subgroups section."),
        (
            "-",
            "Model updating",
            _PARTIAL,
            "Registry version, run id and spec digest identify the model; no updating or "
            "recalibration schedule is defined.",
        ),
        (
            "-",
            "Code availability",
            _PARTIAL if code else _NOT,
            f"Code version recorded: {inline_text(code)}; public release not stated."
            if code
            else "No code version recorded.",
        ),
        (
            "-",
            "Poor-quality or unavailable inputs",
            _COVERED,
            "Input checks: records with error codes are not scored, warnings are returned with "
            "the score (codes listed in the model card).",
        ),
    ]
    return [{"item": i, "topic": t, "status": s, "where": w} for i, t, s, w in rows]


def build_model_card(spec: ModelSpec, *, data_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model card as a JSON-serialisable dict: what the model is for and not for, where its
    data come from, its limitations and a TRIPOD+AI checklist of what the report covers.

    `data_summary` is the run's provenance (rows/events per period, exclusions by issue code,
    code version, ...); `version` and `run_id` are taken from it when present.
    """
    s, f = spec.split, spec.features
    return {
        "name": spec.name,
        "title": spec.title,
        "version": json_safe(data_summary.get("version")),
        "run_id": json_safe(data_summary.get("run_id")),
        "spec_digest": spec.digest,
        "intended_use": spec.intended_use,
        "population": spec.population,
        "setting": {"kind": spec.cohort.kind, "pathways": list(spec.cohort.pathways) or ["all"]},
        "periods": {
            "date_column": s.date_column,
            "train": _period(s.train),
            "calibrate": _period(s.calibrate),
            "evaluate": _period(s.evaluate),
        },
        "outcome": {
            "column": spec.outcome.column,
            "definition": spec.outcome.definition,
            "horizon_days": spec.outcome.horizon_days,
        },
        "features": {
            "analytes": list(f.analytes),
            "derived": list(f.derived),
            "demographics": list(f.demographics),
            "context": list(f.context),
            "count": len(f.names),
        },
        "eligibility": spec.eligibility.model_dump(mode="json"),
        "calibration": {
            "method": spec.calibration.method,
            "deployment_prevalence": spec.calibration.deployment_prevalence,
        },
        "triage_policy": {
            "rule_out_sensitivity": spec.triage.rule_out_sensitivity,
            "rule_in_ppv": spec.triage.rule_in_ppv,
        },
        "subgroups": list(spec.subgroups),
        "not_for": list(spec.not_for),
        "input_checks": {
            "errors_not_scored": sorted(c for c, (sev, _) in ISSUE_CODES.items() if sev == "error"),
            "warnings_scored": sorted(c for c, (sev, _) in ISSUE_CODES.items() if sev == "warning"),
        },
        "limitations": _limitations(spec, data_summary),
        "data": json_safe(dict(data_summary)),
        "tripod_ai": _tripod(spec, data_summary),
        "tripod_ai_note": (
            "Manuscript items (title, abstract, introduction, discussion, funding, registration, "
            "patient involvement) are outside this report and are not listed."
        ),
    }
