"""Synthetic cohorts with exactly known true risks: urgent suspected-cancer referrals (PinPoint
style) and a primary-care myeloma case-control sample (Leeds style).

How a cohort is made (docs/data-card.md gives every assumption with its source; the tables are
in `world`, each step in the module named after it):

1. people (`people`): pathway, age, sex, deprivation, ethnicity, lab (region), dates, repeat
   referrals;
2. bloods (`bloods`): a few shared latent factors (inflammation, iron deficiency, renal
   impairment, frailty) plus age and sex effects drive the primary analytes; Hct, Hb, MCH, WBC,
   total protein, total calcium and eGFR are derived from the *rounded* primaries, so every
   report hangs together;
3. testing (`bloods`): which panels were requested (whole panels; CRP more often when inflamed);
4. outcome (`outcomes`), drawn *after* the bloods from a multinomial logit over exactly what a
   model can see (reported value or a fixed 'not tested' term, age, sex, pathway). `true_risk` is
   therefore P(cancer | model-visible data) exactly; each pathway's intercept is root-found so
   that the expected conversion matches PATHWAY_TABLE;
5. lab artefacts (`extracts`; switchable, `Artefacts`) touch reported values only, never the truth;
6. the long extract (`extracts`) surrounds each index sample with older and post-index draws.

The myeloma cohort makes its index draws and artefacts once for the whole population; the
matched sample takes its people's rows, so `myeloma_population.parquet` (everyone, same wide
layout) and `myeloma_wide.parquet` (the sample) agree value for value, and `myeloma_strata.csv`
holds the population's people and cases per matching stratum.

Everything random flows from one `numpy.random.Generator` seeded from the seed; each stage gets
its own spawned child stream, so switching an artefact off leaves every other draw unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.analytes import CATALOGUE
from models.calibration import logit
from models.spec import PATHWAYS
from training.cohorts.simulator.bloods import draw_bloods, draw_latent, draw_testing, mask_untested
from training.cohorts.simulator.conditions import (
    condition_columns,
    draw_conditions,
    with_conditions,
)
from training.cohorts.simulator.extracts import (
    assemble_wide,
    draw_history,
    index_draws,
    inject_artefacts,
    long_results,
    population_wide,
    take_draws,
)
from training.cohorts.simulator.outcomes import (
    band_start,
    draw_outcomes,
    match_controls,
    oracle_auc,
    oracle_reachable,
    population_strata,
    sampled_index_events,
)
from training.cohorts.simulator.people import draw_population, draw_referrals
from training.cohorts.simulator.targets import measure_myeloma, measure_referrals, recorded
from training.cohorts.simulator.world import (
    ARTEFACT_FLAGS,
    DEFAULT_N,
    MYELOMA_HORIZON_DAYS,
    MYELOMA_PRIMARY_CARE,
    PATHWAY_TABLE,
    PRACTICE_BASELINE_END,
    PRIMARY_CARE,
    PRIMARY_CARE_TESTING,
    REFERRAL_HORIZON_DAYS,
    REFERRAL_SITES,
    REFERRAL_TESTING,
    WORLD_VERSION,
    Artefacts,
    BoolArray,
    FloatArray,
    MyelomaParams,
    ReferralParams,
    SimulatedCohort,
    Site,
)
from training.provenance import code_version

# --- the job ----------------------------------------------------------------------------------


def run_simulation(
    *,
    cohort: str = "referrals",
    n: int | None = None,
    seed: int = 7,
    out: Path | str = Path("var/cohorts"),
    artefacts: bool | Artefacts = True,
) -> dict[str, Any]:
    """Simulate a cohort, write `{cohort}_wide/_results/_index.parquet` (for myeloma also
    `_population.parquet` and `_strata.csv`) and `manifest.json` into `out`, and return the
    manifest (seed, parameters, counts, file digests, code version)."""
    switches = artefacts if isinstance(artefacts, Artefacts) else _switches(artefacts)
    rng = np.random.default_rng(seed)
    params: ReferralParams | MyelomaParams
    if cohort == "referrals":
        params = ReferralParams(n=n or DEFAULT_N[cohort], artefacts=switches)
        simulated = simulate_referrals(params, rng)
    elif cohort == "myeloma":
        params = MyelomaParams(n=n or DEFAULT_N[cohort], artefacts=switches)
        simulated = simulate_myeloma(params, rng)
    else:
        raise ValueError(f"unknown cohort {cohort!r}; expected one of {sorted(DEFAULT_N)}")
    files = write_cohort(simulated, Path(out))
    manifest = build_manifest(simulated, params, seed, files)
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _switches(on: bool) -> Artefacts:
    return Artefacts() if on else Artefacts.none()


def simulate_referrals(params: ReferralParams, rng: np.random.Generator) -> SimulatedCohort:
    """Referral cohort: people -> conditions -> bloods -> testing -> outcome -> artefacts ->
    long extract."""
    people_rng, blood_rng, testing_rng, outcome_rng, artefact_rng, history_rng, condition_rng = (
        rng.spawn(7)
    )
    people = draw_referrals(params, people_rng)
    severity = draw_conditions(people, condition_rng, params.practice)
    base = draw_latent(len(people), blood_rng)
    latent = with_conditions(base, severity)
    duffy = params.artefacts.duffy_null
    truth = draw_bloods(people, latent, blood_rng, severity, duffy_effect=duffy)
    tested = draw_testing(people, latent, testing_rng, REFERRAL_TESTING, severity)
    seen = mask_untested(truth, tested)
    targets = {p: PATHWAY_TABLE[p].conversion for p in PATHWAYS}
    baseline = (people["index_date"] < np.datetime64(PRACTICE_BASELINE_END)).to_numpy()
    index, intercepts = draw_outcomes(
        people, seen, REFERRAL_SITES, targets, outcome_rng, REFERRAL_HORIZON_DAYS, baseline
    )
    draws = index_draws(people, seen, params.window_days, testing_rng)
    reported, flags = inject_artefacts(draws, params.artefacts, artefact_rng)
    index = with_truth_columns(index, flags, REFERRAL_SITES, severity)
    history = draw_history(people, base, severity, params, REFERRAL_TESTING, history_rng)
    history = inject_artefacts(history, params.artefacts, artefact_rng)[0]
    results = long_results([reported, history])
    wide = assemble_wide(index, reported, flags)
    summary = referral_summary(wide, results, intercepts)
    summary["realism"] = recorded(measure_referrals(wide))
    return SimulatedCohort("referrals", wide, results, index, summary)


def simulate_myeloma(params: MyelomaParams, rng: np.random.Generator) -> SimulatedCohort:
    """Myeloma: population -> conditions -> bloods -> outcome -> index draws and artefacts for
    everyone -> matched case-control sample (their rows of those draws) -> older and later
    draws."""
    people_rng, blood_rng, testing_rng, outcome_rng, artefact_rng, history_rng, condition_rng = (
        rng.spawn(7)
    )
    population = draw_population(params, people_rng)
    severity = draw_conditions(population, condition_rng)
    base = draw_latent(len(population), blood_rng)
    latent = with_conditions(base, severity)
    # Nested so that the unmasked values are freed at once (memory at 4M people).
    seen = mask_untested(
        draw_bloods(
            population, latent, blood_rng, severity, duffy_effect=params.artefacts.duffy_null
        ),
        draw_testing(population, latent, testing_rng, PRIMARY_CARE_TESTING, severity),
    )
    del latent
    targets = {PRIMARY_CARE: params.incidence}
    events, intercepts = draw_outcomes(
        population, seen, (MYELOMA_PRIMARY_CARE,), targets, outcome_rng, MYELOMA_HORIZON_DAYS
    )
    draws = index_draws(population, seen, params.window_days, testing_rng)
    everyone, all_flags = inject_artefacts(draws, params.artefacts, artefact_rng)
    events = with_truth_columns(events, all_flags, (MYELOMA_PRIMARY_CARE,), severity)
    rows, matched_set = match_controls(events, params, outcome_rng)
    sample = population.iloc[rows].reset_index(drop=True)
    index = sampled_index_events(events, rows, matched_set, params)
    reported, flags = take_draws(everyone, all_flags, rows)
    sample_severity = {name: s[rows] for name, s in severity.items()}
    history = draw_history(
        sample, base[rows], sample_severity, params, PRIMARY_CARE_TESTING, history_rng
    )
    history = inject_artefacts(history, params.artefacts, artefact_rng)[0]
    results = long_results([reported, history])
    wide = assemble_wide(index, reported, flags)
    strata = population_strata(events, params)
    summary = myeloma_summary(events, wide, results, params, intercepts, strata)
    age_from = band_start(events["age"], params)
    whole = population_wide(events, everyone, all_flags, age_from)
    summary["realism"] = recorded(measure_myeloma(whole))
    return SimulatedCohort("myeloma", wide, results, index, summary, whole, strata)


def with_truth_columns(
    events: pd.DataFrame,
    flags: Mapping[str, BoolArray],
    sites: Sequence[Site],
    severity: Mapping[str, FloatArray],
) -> pd.DataFrame:
    """`true_risk_reachable` after `true_risk`, then one `condition_<name>` column each: what
    the person had (never model input; for evaluators and the data card's checks)."""
    out = events.copy()
    position = list(out.columns).index("true_risk") + 1
    out.insert(position, "true_risk_reachable", oracle_reachable(out, flags, sites))
    conditions = condition_columns(severity)
    conditions.index = out.index
    return pd.concat([out, conditions], axis=1)


def referral_summary(
    wide: pd.DataFrame, results: pd.DataFrame, intercepts: Mapping[str, float]
) -> dict[str, Any]:
    """Counts, conversion and oracle AUC per pathway, and artefact counts."""
    per_pathway = {}
    for pathway, rows in wide.groupby("pathway", observed=True):
        per_pathway[str(pathway)] = {
            "referrals": len(rows),
            "cancers": int(rows["cancer"].sum()),
            "expected_cancers": round(float(rows["true_risk"].sum()), 2),
            "configured_conversion": PATHWAY_TABLE[str(pathway)].conversion,
            "oracle_auc": round(oracle_auc(rows["cancer"], rows["true_risk"]), 4),
        }
    patients = wide["patient_id"].value_counts()
    return {
        "referrals": len(wide),
        "patients": len(patients),
        "patients_with_repeat_referrals": round(float((patients > 1).mean()), 4),
        "cancers": int(wide["cancer"].sum()),
        "oracle_auc_any_cancer": round(oracle_auc(wide["cancer"], wide["true_risk"]), 4),
        "pathways": per_pathway,
        "intercepts": {k: round(v, 6) for k, v in intercepts.items()},
        "artefacts": {name: int(wide[name].sum()) for name in ARTEFACT_FLAGS},
        "duffy_null": int(wide["duffy_null"].sum()),
        "results": len(results),
    }


def myeloma_summary(
    population: pd.DataFrame,
    wide: pd.DataFrame,
    results: pd.DataFrame,
    params: MyelomaParams,
    intercepts: Mapping[str, float],
    strata: pd.DataFrame,
) -> dict[str, Any]:
    """Population incidence, the sample's composition, the prior shift back to it, and the
    matching strata (`control_sampling_fraction`: all controls / all the population's
    non-cases; per stratum it is what `myeloma_strata.csv` lets a model compute)."""
    prevalence = float(population["cancer"].mean())
    cases = int(wide["cancer"].sum())
    fraction = cases / len(wide)
    non_cases = int(strata["population"].sum() - strata["cases"].sum())
    return {
        "population": len(population),
        "population_cases": int(population["cancer"].sum()),
        "population_prevalence": prevalence,
        "configured_incidence": params.incidence,
        "intercept": round(intercepts[PRIMARY_CARE], 6),
        "expected_cases": round(float(population["true_risk"].sum()), 2),
        "oracle_auc_population": round(
            oracle_auc(population["cancer"], population["true_risk"]), 4
        ),
        "sample": len(wide),
        "sample_cases": cases,
        "sample_controls": len(wide) - cases,
        "controls_per_case": params.controls_per_case,
        "unmatched_control_slots": params.controls_per_case * cases - (len(wide) - cases),
        "sampling_fraction": fraction,
        "logit_shift": logit(prevalence) - logit(fraction),
        "control_sampling_fraction": (len(wide) - cases) / non_cases,
        "strata": strata.to_dict(orient="records"),
        "artefacts": {name: int(wide[name].sum()) for name in ARTEFACT_FLAGS},
        "results": len(results),
    }  # fmt: skip


def write_cohort(simulated: SimulatedCohort, out: Path) -> dict[str, str]:
    """Write the three Parquet files (and a case-control cohort's population table and strata
    CSV); returns file name -> SHA-256."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in ("wide", "results", "index", "population"):
        frame: pd.DataFrame | None = getattr(simulated, part)
        if frame is not None:
            paths.append(out / f"{simulated.name}_{part}.parquet")
            frame.to_parquet(paths[-1], index=False)
    if simulated.strata is not None:
        paths.append(out / f"{simulated.name}_strata.csv")
        simulated.strata.to_csv(paths[-1], index=False, lineterminator="\n")
    return {path.name: _sha256(path) for path in paths}


def _sha256(path: Path) -> str:
    """A file's SHA-256, read in blocks (the population table runs to hundreds of MB)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def build_manifest(
    simulated: SimulatedCohort,
    params: ReferralParams | MyelomaParams,
    seed: int,
    files: Mapping[str, str],
) -> dict[str, Any]:
    """Everything needed to reproduce and audit the files (no timestamps: same seed, same file)."""
    return {
        "cohort": simulated.name,
        "seed": seed,
        "world_version": WORLD_VERSION,
        "parameters": json.loads(json.dumps(asdict(params), default=str)),
        "counts": simulated.summary,
        "files": dict(files),
        "code_version": code_version(),  # package version + git commit
        "catalogue_version": CATALOGUE.version,
    }
