"""Training: load -> validate -> split -> fit both families -> calibrate -> choose the family ->
thresholds -> evaluate (the served model and its comparator).

Fitting and calibrating live in `training.fit.family`; case-control offsets in
`training.fit.case_control`. Logging and registration follow in `training.registry.runs`.

`train_model` reads like a table of contents; each step is a named function. Nothing from the
evaluation period touches fitting, calibration or threshold choice: periods come from the spec's
dates, and a patient seen in an earlier period is kept out of the later ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.calibration import LogitCalibration
from models.columns import map_columns
from models.features import SEX_CODES
from models.frame_validation import validate_frame
from models.predictor import TriagePredictor, spec_feature_frame
from models.reference import reference_statistics, training_missing
from models.spec import ModelSpec
from models.triage import Thresholds
from training.cohorts.dates import implied_precision, tied_share
from training.cohorts.reader import (
    CohortError,
    CohortSource,
    Source,
    made_by_simulator,
    open_cohort,
)
from training.evaluation.metrics import paired_auc_difference
from training.evaluation.model import (
    bootstrap_groups,
    evaluate_model,
    explanation_sample,
    subgroup_age_bands,
)
from training.evaluation.subgroups import age_band
from training.evaluation.thresholds import choose_rule_in, choose_rule_out
from training.fit.case_control import feature_strata, stratum_offsets
from training.fit.family import Fitted, choose_family, fit_families
from training.provenance import code_version

PERIODS = ("train", "stop", "calibrate", "evaluate")
STOP_MIN_EVENTS = 10  # events (and non-events) the early-stopping slice needs at least
META_COLUMNS = (
    "patient_id", "referral_id", "index_date", "pathway", "lab", "deprivation", "ethnicity",
    "cancer_site", "true_risk", "duffy_null", "matched_set",
)  # fmt: skip


@dataclass(frozen=True)
class TrainOptions:
    cohort: Path
    window_days: int = 90
    source: Source = "auto"  # for a folder holding both formats
    n_boot: int = 200
    seed: int | None = None  # None: the spec's seed
    num_threads: int = 0  # 0: all cores, for fitting and batch prediction


@dataclass
class Cohort:
    """Eligible rows (canonical values + metadata + outcome) and what was excluded, by reason."""

    frame: pd.DataFrame
    exclusions: dict[str, int]
    n_input: int
    digest: str


@dataclass
class TrainResult:
    spec: ModelSpec
    predictor: TriagePredictor  # the served family's
    comparator: TriagePredictor  # the other family's (the report's baseline column)
    periods: dict[str, pd.DataFrame]
    evaluation: dict[str, Any]
    baseline_evaluation: dict[str, Any]  # the comparator's
    predictions: pd.DataFrame  # evaluation-period predictions of both models
    shap_sample: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)


# --- load and validate ----------------------------------------------------------------------------


def select_population(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Rows of the spec's cohort (its pathways, when it names any)."""
    if spec.cohort.pathways:
        if "pathway" not in frame:
            raise CohortError("the spec filters on pathway but the cohort has no pathway column")
        frame = frame[frame["pathway"].isin(spec.cohort.pathways)]
    return frame.reset_index(drop=True)


def validate_cohort(frame: pd.DataFrame, spec: ModelSpec, digest: str) -> Cohort:
    """Validate every row through the catalogue; keep eligible rows, count exclusions by reason.

    `frame` is in the spec's terms (`open_cohort(..., spec=spec)`): columns mapped, index dates
    read as calendar days."""
    require_columns(frame, spec)
    mapped, units = map_columns(frame, spec)
    checked = validate_frame(
        mapped, catalogue=spec.catalogue, eligibility=spec.eligibility, units=units
    )
    errors = checked.issues[checked.issues["severity"] == "error"]
    exclusions = errors.drop_duplicates(["row", "code"])["code"].value_counts().to_dict()
    values = checked.values
    for column in (*META_COLUMNS, spec.outcome.column, spec.split.date_column):
        if column in mapped and column not in values:
            values[column] = mapped[column].to_numpy()
    for subgroup in spec.subgroups:  # a mapped subgroup column travels with its rows
        if subgroup in mapped and subgroup not in values:
            values[subgroup] = mapped[subgroup].to_numpy()
    values[spec.split.date_column] = pd.to_datetime(values[spec.split.date_column])
    dated = values[spec.split.date_column].notna().to_numpy()
    if (~dated).any():
        exclusions["missing_index_date"] = int((~dated).sum())
    eligible = values.loc[checked.eligible & dated].reset_index(drop=True)
    if eligible.empty:
        raise CohortError(_nothing_eligible(len(frame), errors))
    return Cohort(eligible, {str(k): int(v) for k, v in exclusions.items()}, len(frame), digest)


def require_columns(frame: pd.DataFrame, spec: ModelSpec) -> None:
    """The patient id, index date and outcome columns, with 0/1 outcomes; the error says how to
    map a column under another name."""
    roles = {"patient_id": "patient_id", spec.split.date_column: "index_date",
             spec.outcome.column: "outcome"}  # fmt: skip
    missing = [column for column in roles if column not in frame]
    if missing:
        hints = ", ".join(f"YOUR_COLUMN: {{code: {roles[c]}}}" for c in missing)
        raise CohortError(
            f"the cohort lacks required columns {missing}: a patient id (to keep a patient "
            f"out of later periods), the index date and the outcome. If yours have other names, "
            f"map them in the spec: column_map: {{{hints}}}. The cohort has: "
            f"{', '.join(map(str, frame.columns[:15]))}{' ...' if len(frame.columns) > 15 else ''}"
        )
    outcome = pd.to_numeric(frame[spec.outcome.column], errors="coerce")
    bad = frame[spec.outcome.column][~outcome.isin([0, 1])]
    if len(bad):
        raise CohortError(
            f"outcome column {spec.outcome.column!r} must hold 0 or 1; found "
            f"{sorted({str(v) for v in bad.unique()[:5]})} in {len(bad):,} rows. Map codes with "
            f"column_map: {{{spec.outcome.column}: {{code: outcome, values: {{YES: 1, NO: 0}}}}}}"
        )


def _nothing_eligible(n_rows: int, errors: pd.DataFrame) -> str:
    """Why no row is eligible: the most frequent reasons, each with an example message."""
    reasons = (
        errors.groupby("code")
        .agg(rows=("row", "nunique"), example=("message", "first"))
        .sort_values("rows", ascending=False)
        .head(4)
    )
    lines = [f"no row of {n_rows:,} is eligible; the commonest reasons:"]
    lines += [f"  {code}: {r.rows:,} rows (e.g. {r.example})" for code, r in reasons.iterrows()]
    if {"age_out_of_range", "invalid_sex"} & set(reasons.index):
        lines.append(
            "  map age and sex columns with other names: column_map: {YOUR_AGE: {code: age}, "
            "YOUR_SEX: {code: sex, values: {F: female, M: male}}}"
        )
    return "\n".join(lines)


def describe_cohort(source: CohortSource, cohort: Cohort, spec: ModelSpec) -> dict[str, Any]:
    """What the model card says about the data: the file, its hash, rows, dates and whether the
    project's simulator made it (its manifest beside the files), plus warnings about dates
    (coarse or heaped) that change what the split means."""
    column = cohort.frame[spec.split.date_column]
    precision = implied_precision(column)
    ties = tied_share(column)
    warnings = []
    if precision != "day":
        warnings.append(
            f"index dates are known only to the {precision} (taken as the middle of it): each "
            f"{precision} falls whole into one period, and the as-of window of a long cohort "
            f"cannot be honoured within it"
        )
    if ties >= 0.5:
        warnings.append(
            f"{ties:.0%} of rows share an index date with at least 1% of the cohort (heaped "
            "dates); the early-stopping slice is a random share of patients, so it is unaffected"
        )
    return {
        "name": source.path.name,
        "sha256": cohort.digest,
        "rows": cohort.n_input,
        "date_range": [column.min().date().isoformat(), column.max().date().isoformat()],
        "date_precision": precision,
        "ties": round(ties, 4),
        "simulated": made_by_simulator(source.path),
        "warnings": warnings,
    }


# --- split ---------------------------------------------------------------------------------------


def split_periods(frame: pd.DataFrame, spec: ModelSpec, seed: int) -> dict[str, pd.DataFrame]:
    """Train / early-stopping / calibrate / evaluate, patient-disjoint across periods.

    Periods come from the spec's dates (index days). The early-stopping slice is a seeded random
    share (`split.early_stopping_fraction`) of the training period's *patients*, not a date cut:
    tied or coarse dates (every date 1 July) would move whole years into a cut. A patient seen
    in an earlier period is removed from every later one. The train, calibrate and evaluate
    periods must each hold `split.min_events` events and non-events; the early-stopping slice
    `STOP_MIN_EVENTS`.
    """
    dates = frame[spec.split.date_column].dt.date
    split = spec.split
    in_period = {
        "train": dates.between(split.train.start, split.train.end),
        "calibrate": dates.between(split.calibrate.start, split.calibrate.end),
        "evaluate": dates.between(split.evaluate.start, split.evaluate.end),
    }
    train = frame[in_period["train"]]
    patients = np.sort(pd.unique(train["patient_id"]))
    rng = np.random.default_rng(seed)
    held = rng.random(len(patients)) < split.early_stopping_fraction
    stopping = train["patient_id"].isin(patients[held]).to_numpy()
    periods = {"train": train[~stopping], "stop": train[stopping]}
    seen = set(patients)
    for name in ("calibrate", "evaluate"):
        rows = frame[in_period[name]]
        periods[name] = rows[~rows["patient_id"].isin(seen)].reset_index(drop=True)
        seen |= set(periods[name]["patient_id"])
    for name in PERIODS:
        check_period(name, periods[name][spec.outcome.column], spec)
    return {k: v.reset_index(drop=True) for k, v in periods.items()}


def check_period(name: str, outcome: pd.Series, spec: ModelSpec) -> None:
    """Enough events and non-events in a period, or a message naming what to change."""
    events, rows = int(outcome.sum()), len(outcome)
    # The early-stopping slice only picks a number of rounds: a fixed floor is enough there.
    needed = (
        min(STOP_MIN_EVENTS, spec.split.min_events) if name == "stop" else spec.split.min_events
    )
    if events >= needed and rows - events >= needed:
        return
    field = "split.early_stopping_fraction" if name == "stop" else f"split.{name}"
    if name == "stop":
        where = "the early-stopping share of the training patients"
    else:
        period = getattr(spec.split, name)
        where = f"the {name} period {period.start}..{period.end}"
    raise CohortError(
        f"{where} has {rows:,} rows and {events:,} events ({rows - events:,} without); at least "
        f"{needed} of each are needed (split.min_events). Widen {field}, or lower "
        f"split.min_events knowingly (estimates from few events are unstable)"
    )


# --- thresholds and the predictor -----------------------------------------------------------------


def choose_thresholds(
    y_cal: np.ndarray, p_cal: np.ndarray, spec: ModelSpec, groups: np.ndarray,
    weights: np.ndarray | None, seed: int, within: dict[str, np.ndarray] | None = None,
) -> tuple[Thresholds, dict[str, dict[str, Any]]]:  # fmt: skip
    """Green: the highest cut-off whose lower 95% bound of sensitivity on the calibration period
    meets the target, and whose estimated sensitivity meets it within each level of
    `triage.rule_out_within` (`within`: each row's level) with enough events; red: the lowest
    meeting the PPV target (the population's PPV for case-control models: controls weighted
    1/r_s, or Bayes at a global deployment prevalence). Either is None, with the reason, below
    `triage.min_events` calibration-period events."""
    triage, events = spec.triage, spec.outcome.plural_name
    rule_out = choose_rule_out(
        y_cal, p_cal, triage.rule_out_sensitivity, bound=triage.sensitivity_bound,
        min_events=triage.min_events, groups=groups, n_boot=spec.promotion.n_boot, seed=seed,
        events_name=events, within=within, within_min_events=spec.promotion.subgroup_min_events,
    )  # fmt: skip
    rule_in = choose_rule_in(
        y_cal, p_cal, triage.rule_in_ppv, weights=weights,
        prevalence=spec.calibration.deployment_prevalence, min_events=triage.min_events,
        events_name=events,
    )  # fmt: skip
    green, red = rule_out.threshold, rule_in.threshold
    if green is not None and red is not None and red < green:
        red = green  # the PPV target is met below the rule-out cut: no amber band
    choices = {"rule_out": rule_out.to_dict(), "rule_in": rule_in.to_dict()}
    return Thresholds(green, red), choices


def rule_out_levels(spec: ModelSpec, x: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each row's level of every `triage.rule_out_within` subgroup the inputs hold: age bands as
    the evaluation draws them (`subgroup_age_bands`), and sex."""
    levels: dict[str, np.ndarray] = {}
    for name in spec.triage.rule_out_within:
        if name == "age_band" and "age" in x.columns:
            bands = age_band(x["age"], subgroup_age_bands(spec))
            levels[name] = bands.astype(object).to_numpy()
        elif name == "sex" and "sex" in x.columns:
            names = {code: label for label, code in SEX_CODES.items()}
            levels[name] = x["sex"].map(names).astype(object).to_numpy()
    return levels


def build_predictor(
    fitted: Fitted, spec: ModelSpec, x_cal: pd.DataFrame, y_cal: np.ndarray, groups: np.ndarray,
    seed: int, num_threads: int, metadata: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None, labs: np.ndarray | None = None,
) -> tuple[TriagePredictor, dict[str, dict[str, Any]]]:  # fmt: skip
    """A family's predictor with its own thresholds and reference statistics, both from the
    calibration period (out of sample; population-weighted for a case-control sample), and
    `training`: its inputs' missing rates in the training rows (`training_missing`), which make
    the inputs it never saw missing required at scoring. `labs` (the calibration rows' labs)
    adds a reference per lab, against which replay judges each lab's drift."""
    untuned = TriagePredictor(
        spec=spec, booster=fitted.model, calibration=fitted.calibration,
        thresholds=Thresholds(None, None), num_threads=num_threads,
    )  # fmt: skip
    p_cal = untuned.probability(x_cal)
    weights = sample_weights(fitted.calibration, x_cal, y_cal)
    within = rule_out_levels(spec, x_cal)
    thresholds, choices = choose_thresholds(y_cal, p_cal, spec, groups, weights, seed, within)
    reference = reference_statistics(x_cal, p_cal, weights, labs)
    if training is not None:
        reference["training"] = training
    predictor = TriagePredictor(
        spec=spec, booster=fitted.model, calibration=fitted.calibration, thresholds=thresholds,
        reference=reference, metadata=metadata, num_threads=num_threads,
    )  # fmt: skip
    return predictor, choices


def sample_weights(
    calibration: LogitCalibration, x: pd.DataFrame, y: np.ndarray
) -> np.ndarray | None:
    """Population weights of a stratified case-control sample's rows (None otherwise)."""
    if calibration.strata is None:
        return None
    return calibration.population_weights(y, *feature_strata(x))


# --- the orchestrator ----------------------------------------------------------------------------


def train_model(spec: ModelSpec, options: TrainOptions) -> TrainResult:
    """Build, calibrate and judge one model from a cohort (no tracking: see `log_training`)."""
    started = time.perf_counter()
    seed = spec.seed if options.seed is None else options.seed
    source = open_cohort(options.cohort, options.window_days, options.source, spec=spec)
    selected = select_population(source.read(), spec)
    cohort = validate_cohort(selected, spec, source.digest())
    strata, sampling = None, None
    if spec.calibration.case_control is not None:
        strata, sampling = stratum_offsets(selected, spec, options.cohort)
    del selected
    periods = split_periods(cohort.frame, spec, seed)
    y = {k: v[spec.outcome.column].to_numpy(np.int64) for k, v in periods.items()}
    x = {k: spec_feature_frame(spec, v) for k, v in periods.items()}
    groups = {k: v[bootstrap_groups(v)].to_numpy() for k, v in periods.items()}

    fits = fit_families(x, y, spec, seed, options.num_threads, strata)
    w_cal = sample_weights(fits["lightgbm"].calibration, x["calibrate"], y["calibrate"])
    family, choice = choose_family(
        spec, fits, x["calibrate"], y["calibrate"], groups["calibrate"], w_cal, seed
    )
    chosen, other = fits[family], fits[choice["comparator"]]
    provenance = {
        "spec_digest": spec.digest,
        "cohort_digest": cohort.digest,
        "cohort_path": str(options.cohort),
        "code_version": code_version(),
        "seed": seed,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "lightgbm_version": lgb.__version__,
        "model_family": choice,
        "best_iteration": fits["lightgbm"].iterations,
        "n_input": cohort.n_input,
        "cohort": describe_cohort(source, cohort, spec),
        "case_control": sampling,
        "exclusions": cohort.exclusions,
        "rows": {k: len(v) for k, v in periods.items()},
        "events": {k: int(v.sum()) for k, v in y.items()},
    }
    cal = (x["calibrate"], y["calibrate"], groups["calibrate"], seed, options.num_threads)
    seen = training_missing([x["train"], x["stop"]])  # the training period: fit + early stopping
    labs = periods["calibrate"]["lab"].to_numpy() if "lab" in periods["calibrate"] else None
    predictor, choices = build_predictor(
        chosen, spec, *cal, metadata=provenance, training=seen, labs=labs
    )
    comparator, comparator_choices = build_predictor(other, spec, *cal, training=seen, labs=labs)
    provenance["thresholds"] = choices

    p_eval = predictor.probability(x["evaluate"])
    p_base = comparator.probability(x["evaluate"])
    evaluation = evaluate_model(
        periods["evaluate"], p_eval, predictor.thresholds, predictor.calibration, spec,
        options.n_boot, seed, choices=choices, case_control_sample=True,
    )  # fmt: skip
    baseline_evaluation = evaluate_model(
        periods["evaluate"], p_base, comparator.thresholds, comparator.calibration, spec,
        options.n_boot, seed, choices=comparator_choices, case_control_sample=True,
    )  # fmt: skip
    for ev, fam in ((evaluation, family), (baseline_evaluation, choice["comparator"])):
        ev["model_family"] = fam
    evaluation["vs_baseline"] = paired_auc_difference(
        y["evaluate"], p_eval, p_base, groups["evaluate"], n_boot=options.n_boot, seed=seed,
        weights=sample_weights(chosen.calibration, x["evaluate"], y["evaluate"]),
    )  # fmt: skip
    predictions = periods["evaluate"][["patient_id", spec.outcome.column]].assign(
        probability=p_eval, baseline_probability=p_base
    )
    if "referral_id" in periods["evaluate"]:
        predictions.insert(0, "referral_id", periods["evaluate"]["referral_id"])
    provenance["train_seconds"] = round(time.perf_counter() - started, 2)
    return TrainResult(
        spec=spec, predictor=predictor, comparator=comparator, periods=periods,
        evaluation=evaluation, baseline_evaluation=baseline_evaluation, predictions=predictions,
        shap_sample=explanation_sample(predictor, periods["evaluate"], seed),
        provenance=provenance,
    )  # fmt: skip
