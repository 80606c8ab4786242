"""The model card: what the model is for and not for, where its data come from, its limitations,
and a TRIPOD+AI checklist of what the report covers.

The data source, the limitations and the TRIPOD+AI items about the data follow the training
cohort as the run's provenance describes it (`data_summary["cohort"]`: name, sha256, rows,
date_range, date_precision, simulated, ties): the simulator's cohorts are said to be simulated,
a user's file is described by its name, hash, rows and dates against the spec's population. A
run without that description (older runs) keeps the simulated-data wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.spec import ModelSpec
from models.triage import spec_recommendations
from models.validation import ISSUE_CODES
from training.evaluation.formatting import family_label, inline_text, is_finite_number
from training.json_files import json_safe

# --------------------------------------------------------------------------- model card

# Item numbers confirmed from the TRIPOD+AI checklist; other topics are listed by name only.
_COVERED, _PARTIAL, _NOT = "covered", "partial", "not covered"
_ELIGIBILITY = (
    "Model card: age range, required panels/analytes; records with validation errors are "
    "excluded (counts by code)."
)


def _period(split_range: Any) -> dict[str, str]:
    return {"start": split_range.start.isoformat(), "end": split_range.end.isoformat()}


_SIMULATED = (
    "Simulated data: the cohorts come from the project's seeded simulator, not from patients; "
    "the figures describe the method, not performance on real referrals."
)
_PRECISION = {
    "day": "known to the day",
    "month": "known only to the month",
    "year": "known only to the year",
}


def _cohort(data_summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The training cohort's description in the provenance (None for older runs)."""
    cohort = data_summary.get("cohort")
    return cohort if isinstance(cohort, Mapping) else None


def _simulated(cohort: Mapping[str, Any] | None) -> bool:
    """Simulated data, or an older run that does not describe its cohort (which was simulated)."""
    return cohort is None or cohort.get("simulated") is True


def _sentence(text: str) -> str:
    return text.strip().rstrip(".")


def _cohort_facts(cohort: Mapping[str, Any]) -> str:
    """`name (SHA-256 0123456789ab, 12,000 input rows, index dates A to B, known to the day)`."""
    facts = []
    if cohort.get("sha256"):
        facts.append(f"SHA-256 {str(cohort['sha256'])[:12]}")
    if isinstance(cohort.get("rows"), int):
        facts.append(f"{cohort['rows']:,} input rows")
    dates = cohort.get("date_range")
    precision = _PRECISION.get(str(cohort.get("date_precision")))
    if isinstance(dates, list | tuple) and len(dates) == 2:
        facts.append(
            f"index dates {dates[0]} to {dates[1]}" + (f", {precision}" if precision else "")
        )
    elif precision:
        facts.append(f"index dates {precision}")
    name = str(cohort.get("name") or "unnamed cohort")
    return f"{name} ({', '.join(facts)})" if facts else name


def _data_source(spec: ModelSpec, cohort: Mapping[str, Any]) -> dict[str, Any]:
    """Where the training data come from, as recorded, with one line of text."""
    if cohort.get("simulated") is True:
        facts = _cohort_facts(cohort)
        text = f"Simulated by the project's seeded simulator, not from patients: {facts}."
    else:
        text = f"{_cohort_facts(cohort)}. Intended population: {_sentence(spec.population)}."
    keys = ("name", "sha256", "rows", "date_range", "date_precision", "simulated", "ties")
    return {**{k: json_safe(cohort.get(k)) for k in keys}, "description": text}


def _data_limitations(spec: ModelSpec, cohort: Mapping[str, Any] | None) -> list[str]:
    s = spec.split
    periods = (
        f"trained {s.train.start}..{s.train.end}, calibrated {s.calibrate.start}.."
        f"{s.calibrate.end}, evaluated {s.evaluate.start}..{s.evaluate.end}, all from the same "
        "population."
    )
    if _simulated(cohort):
        items = [
            _SIMULATED,
            "Temporal split at one (simulated) centre, which is not external validation: "
            + periods,
        ]
    else:
        assert cohort is not None
        items = [
            f"One data source ({cohort.get('name') or 'the cohort file'}): representativeness "
            f"must be judged against the intended population: {_sentence(spec.population)}.",
            "Temporal split within one data source, which is not external validation: " + periods,
        ]
    precision = cohort.get("date_precision") if cohort else None
    if precision in ("month", "year"):
        items.append(
            f"Index dates known only to the {precision}: periods are assigned by {precision} and "
            "the early-stopping slice is a random share of patients."
        )
    ties = cohort.get("ties") if cohort else None
    if isinstance(ties, int | float) and not isinstance(ties, bool) and ties > 0:
        items.append(
            f"Tied index dates: {ties:.1%} of rows share their index date with at least 1% of the "
            "cohort; the order of events within a date is unknown and rows of one date always "
            "fall in the same period."
        )
    return items


def _count(value: Any) -> str:
    return (
        f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "not recorded"
    )


def population_scale_text(spec: ModelSpec, data_summary: Mapping[str, Any]) -> str:
    """How the probabilities reach the population's scale (case-control specs), or that they
    are on the cohort's own scale."""
    design, prevalence = spec.calibration.case_control, spec.calibration.deployment_prevalence
    if design is None and prevalence is None:
        return "Cohort scale: no case-control sampling, so no shift to a population is needed."
    if design is None:
        return (
            f"Global shift: one log-odds intercept correction to the stated deployment "
            f"prevalence {prevalence:g} (legacy: not by stratum)."
        )
    match = " x ".join(
        f"{design.age_band_years}-year age band" if m == "age_band" else m for m in design.match_on
    )
    text = (
        f"Per-stratum offsets: controls were matched on {match}; each stratum s gets its own "
        "offset log r_s (r_s = controls sampled / the population's non-cases in s), from the "
        f"population counts file {design.population_counts}, added to the calibrated log-odds."
    )
    sampling = data_summary.get("case_control")
    if not isinstance(sampling, Mapping):
        return text + " The population's counts were not recorded with this run."
    prevalence_value = sampling.get("population_prevalence")
    share = sampling.get("overall_sampling_fraction")
    text += (
        f" Population {_count(sampling.get('population'))} with "
        f"{_count(sampling.get('population_cases'))} cases (prevalence "
        + (f"{prevalence_value:.3g}" if isinstance(prevalence_value, float) else "not recorded")
        + f"); {_count(sampling.get('strata'))} strata; sample "
        f"{_count(sampling.get('sampled_cases'))} cases and {_count(sampling.get('controls'))} "
        "controls"
        + (f" ({share:.3g} of the population's non-cases)" if isinstance(share, float) else "")
        + "."
    )
    borrowed = [str(b) for b in sampling.get("borrowed") or []]
    text += (
        " Bands that borrowed a neighbour's offset: " + "; ".join(borrowed) + "."
        if borrowed
        else " No band borrowed a neighbour's offset."
    )
    return text


def _family(data_summary: Mapping[str, Any]) -> dict[str, Any]:
    """The served family, the comparator and why (`provenance["model_family"]`)."""
    choice = data_summary.get("model_family")
    if not isinstance(choice, Mapping):
        return {"chosen": None, "comparator": None, "text": "Model family: not recorded."}
    chosen, comparator = choice.get("chosen"), choice.get("comparator")
    reason = choice.get("reason") or "no reason recorded"
    return {
        "rule": choice.get("rule"),
        "chosen": chosen,
        "comparator": comparator,
        "calibration_auc_difference": json_safe(choice.get("calibration_auc_difference")),
        "text": f"Served: {family_label(chosen, 'not recorded')} (comparator "
        f"{family_label(comparator, 'not recorded')}): {_sentence(str(reason))}.",
    }


def threshold_texts(choices: Any) -> list[str]:
    """One line per threshold choice: the cut-off and what it rests on, or why it was not set."""
    if not isinstance(choices, Mapping):
        return ["Thresholds: choices not recorded."]
    lines = []
    for key, band in (("rule_out", "Green (rule-out)"), ("rule_in", "Red (rule-in)")):
        c = choices.get(key)
        if not isinstance(c, Mapping):
            lines.append(f"{band}: not recorded.")
            continue
        minimum = c.get("min_events", "not recorded")
        events = f"{_count(c.get('events'))} calibration-period events (minimum {minimum})"
        target = c.get("target")
        target_text = f"target {target:g}" if isinstance(target, float) else "target not recorded"
        if c.get("threshold") is None:
            lines.append(
                f"{band}: not set ({c.get('reason') or 'no reason recorded'}); {target_text}, "
                f"{events}."
            )
            continue
        bound = c.get("lower_bound")
        lines.append(
            f"{band}: {c['threshold']:.4g} by {c.get('method', 'unknown method')} ({target_text}"
            + (f", lower 95% bound {bound:.3f}" if is_finite_number(bound) else "")
            + f"), {events}, {_count(c.get('events_in_band'))} events in band"
            + (
                f"; lowered so that {c['limited_by']} also reaches the target."
                if c.get("limited_by")
                else "."
            )
        )
    return lines


def _limitations(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[str]:
    items = [
        *_data_limitations(spec, _cohort(data_summary)),
        "Missing data: nothing is imputed from other patients' outcomes. LightGBM routes an "
        "untested analyte with its native NaN handling; the spline logistic model takes the "
        "training median plus a missing-indicator term. A different test-ordering pattern at "
        "deployment can shift the risks.",
    ]
    rate = (
        "conversion rate"
        if spec.cohort.kind == "referrals"
        else f"rate of {spec.outcome.plural_name}"
    )
    if spec.calibration.case_control is not None:
        items.append(
            "Case-control training: " + population_scale_text(spec, data_summary) + " The "
            "evaluation is on the population scale (controls weighted 1/r_s, resamples of whole "
            "matched sets); offsets are only as good as the population counts."
        )
    elif spec.calibration.deployment_prevalence is not None:
        items.append(
            f"Case-control training: the probabilities are shifted (log-odds intercept "
            f"correction) to the stated deployment prevalence "
            f"{spec.calibration.deployment_prevalence:g}. Calibration is checked on the "
            f"case-control scale only; PPV and NPV at the deployment prevalence come from the "
            f"sample's sensitivity and specificity by Bayes' rule."
        )
    else:
        items.append(
            f"Probabilities reflect the case mix and {rate} of the calibration period; "
            "a change in either needs recalibration."
        )
    items.append(
        f"Subgroup sizes: estimates for small subgroups rest on few {spec.outcome.plural_name} "
        "(no AUC below 5; no flag below "
        f"{spec.promotion.subgroup_min_events}); see the subgroup table for n and events. "
        "Subgroup AUC and O/E intervals are bootstrap percentile intervals over patients (matched "
        "sets for a case-control sample), not Hanley-McNeil; rule-out sensitivity intervals "
        "are Wilson."
    )
    if "events" in data_summary:
        items.append(f"Events per period: {inline_text(data_summary['events'])}.")
    return items


def _data_items(spec: ModelSpec, cohort: Mapping[str, Any] | None) -> list[tuple[str, ...]]:
    """TRIPOD+AI items 3c, 5a, 5b, 6a and 6c, worded for simulated or real data."""
    equity = [g for g in ("deprivation", "ethnicity") if g in spec.subgroups]
    by = ", ".join(spec.subgroups) or "nothing"
    kind = spec.cohort.kind
    if _simulated(cohort):
        return [
            ("3c", "Health inequalities", _PARTIAL if equity else _NOT,
             f"Subgroup table and forest plot by {by}; the data are simulated, so no real "
             "inequality is described."),
            ("5a", "Data sources", _PARTIAL,
             "Model card (data, limitations): simulated cohorts; representativeness of real "
             "populations cannot be assessed."),
            ("5b", "Data dates", _COVERED, "Model card: train / calibrate / evaluate periods."),
            ("6a", "Setting", _PARTIAL,
             f"Model card: {kind} setting; one simulated centre with several labs."),
            ("6b", "Eligibility", _COVERED, _ELIGIBILITY),
            ("6c", "Treatments", _NOT, "Treatments are not recorded in the simulated data."),
        ]  # fmt: skip
    assert cohort is not None
    name = cohort.get("name") or "the cohort file"
    population = _sentence(spec.population)
    precision = _PRECISION.get(str(cohort.get("date_precision")))
    dates = cohort.get("date_range")
    span = (
        f"; index dates {dates[0]} to {dates[1]}"
        if isinstance(dates, list | tuple) and len(dates) == 2
        else ""
    )
    return [
        ("3c", "Health inequalities", _PARTIAL if equity else _NOT,
         f"Subgroup table and forest plot by {by}; inequalities in {name} are described only "
         "through these subgroups."),
        ("5a", "Data sources", _PARTIAL,
         f"Model card (data source): {_cohort_facts(cohort)}; how the data were collected is "
         f"not recorded by the pipeline; representativeness must be judged against the "
         f"intended population: {population}."),
        ("5b", "Data dates", _COVERED,
         f"Model card: train / calibrate / evaluate periods{span}"
         + (f", {precision}." if precision else ".")),
        ("6a", "Setting", _PARTIAL,
         f"Model card: {kind} setting; centres and labs as recorded in {name} (lab subgroup "
         "when present); the pipeline does not describe them further."),
        ("6b", "Eligibility", _COVERED, _ELIGIBILITY),
        ("6c", "Treatments", _NOT,
         f"Treatments are not model inputs and {name} is not checked for them."),
    ]  # fmt: skip


def _tripod(spec: ModelSpec, data_summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """TRIPOD+AI topics this report covers, honestly marked; manuscript-only items are left out."""
    code = data_summary.get("code_version")
    rows = [
        *_data_items(spec, _cohort(data_summary)),
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
            "LightGBM native NaN routing or the spline model's median plus missing indicator "
            "(limitations); missingness is not tabulated by subgroup.",
        ),
        (
            "-",
            "Class imbalance / case-control sampling",
            _COVERED if spec.is_case_control else _PARTIAL,
            "Per-stratum offsets log r_s from the population counts; evaluation weighted to "
            "the population (controls 1/r_s), bootstrap over matched sets"
            if spec.calibration.case_control is not None
            else "Global prevalence shift and Bayes PPV/NPV at the deployment prevalence"
            if spec.is_case_control
            else "No resampling or class weights; Platt calibration on a later period.",
        ),
        (
            "-",
            "Fairness",
            _PARTIAL,
            "Performance by subgroup (AUC, O/E, rule-out sensitivity); levels with enough "
            "events are flagged when sensitivity or O/E misses its target; no fairness "
            "constraint, formal disparity test or mitigation.",
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
            "Decision curve (net benefit over a grid suited to the prevalence); sensitivity/"
            "specificity/PPV/NPV and the risk in the green band against the referral threshold "
            "at the RAG thresholds. Thresholds are chosen on the calibration period (green: the "
            "lower 95% bound of sensitivity must reach the target; none with too few events); "
            "their CIs on the evaluation period are Wilson, or bootstrap percentile when the "
            "rows are population-weighted.",
        ),
        (
            "-",
            "Subgroup performance",
            _COVERED,
            "Subgroups section: AUC and O/E with patient-level bootstrap CIs (not "
            "Hanley-McNeil), rule-out sensitivity with Wilson CIs; flagged levels listed.",
        ),
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
    cohort = _cohort(data_summary)
    return {
        "name": spec.name,
        "title": spec.title,
        "version": json_safe(data_summary.get("version")),
        "run_id": json_safe(data_summary.get("run_id")),
        "spec_digest": spec.digest,
        "intended_use": spec.intended_use,
        "population": spec.population,
        "setting": {"kind": spec.cohort.kind, "pathways": list(spec.cohort.pathways) or ["all"]},
        **({"data_source": _data_source(spec, cohort)} if cohort is not None else {}),
        "periods": {
            "date_column": s.date_column,
            "train": _period(s.train),
            "calibrate": _period(s.calibrate),
            "evaluate": _period(s.evaluate),
        },
        "outcome": {
            "column": spec.outcome.column,
            "name": spec.outcome.name,
            "plural": spec.outcome.plural_name,
            "definition": spec.outcome.definition,
            "horizon_days": spec.outcome.horizon_days,
            "horizon": spec.outcome.horizon_text,
        },
        "features": {
            "analytes": list(f.analytes),
            "derived": [  # a built-in by name, a spec's own feature with its expression
                d if isinstance(d, str) else d.model_dump(mode="json", exclude_none=True)
                for d in f.derived
            ],
            "demographics": list(f.demographics),
            "context": list(f.context),
            "count": len(f.names),
        },
        "eligibility": spec.eligibility.model_dump(mode="json"),
        "calibration": {
            "method": spec.calibration.method,
            "deployment_prevalence": spec.calibration.deployment_prevalence,
            "case_control": None
            if spec.calibration.case_control is None
            else spec.calibration.case_control.model_dump(mode="json"),
        },
        "population_scale": population_scale_text(spec, data_summary),
        "model_family": _family(data_summary),
        "thresholds": threshold_texts(data_summary.get("thresholds")),
        "triage_policy": {
            "rule_out_sensitivity": spec.triage.rule_out_sensitivity,
            "rule_in_ppv": spec.triage.rule_in_ppv,
        },
        "recommendations": spec_recommendations(spec),
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
