"""The parts of a model spec that say how a model is fitted and judged: the model family, LightGBM's
parameters, calibration (with case-control sampling), the triage policy and the promotion gates.
`models.spec.ModelSpec` holds them; they live here to keep that module readable."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LightGBMParams(_Frozen):
    n_estimators: int = Field(default=600, gt=0, le=20_000)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    num_leaves: int = Field(default=7, ge=2, le=4096)
    max_depth: int = Field(default=3, ge=-1, le=64)
    min_child_samples: int = Field(default=50, ge=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    subsample_freq: int = Field(default=1, ge=0)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    reg_alpha: float = Field(default=0.0, ge=0)
    early_stopping_rounds: int = Field(default=50, gt=0)


class CaseControl(_Frozen):
    """How a case-control sample was drawn, so probabilities reach the population scale.

    Every case is sampled; controls are sampled within matching strata (`match_on`: 5-year age
    bands from `age_band_years` and/or sex). The population's size and cases per stratum come from
    `population_counts`, a CSV with columns `age_from` (a band's first year of age, a multiple of
    `age_band_years`), `sex` (female/male; when matched on sex), `population` and `cases`; a
    relative path is read from the cohort's folder. For stratum s, r_s = controls sampled / the
    population's non-cases, and logit p_population = logit p_sample + log r_s."""

    match_on: tuple[Literal["age_band", "sex"], ...] = Field(
        default=("age_band", "sex"), min_length=1
    )
    age_band_years: int = Field(default=5, ge=1, le=50)
    population_counts: str = Field(
        min_length=1, description="CSV of population and cases per stratum (see the docstring)"
    )

    @model_validator(mode="after")
    def _unique(self) -> CaseControl:
        if len(set(self.match_on)) != len(self.match_on):
            raise ValueError(f"match_on lists a stratum twice: {list(self.match_on)}")
        return self


class Calibration(_Frozen):
    method: Literal["sigmoid"] = Field(
        default="sigmoid", description="affine in log-odds, which keeps SHAP exactly additive"
    )
    deployment_prevalence: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="case-control data without strata: one population prevalence the "
        "probabilities are shifted to (a global shift; `case_control` is preferred)",
    )
    case_control: CaseControl | None = Field(
        default=None,
        description="case-control data matched on strata: per-stratum offsets to the population",
    )

    @model_validator(mode="after")
    def _one_way(self) -> Calibration:
        if self.deployment_prevalence is not None and self.case_control is not None:
            raise ValueError(
                "give either deployment_prevalence (one global shift) or case_control "
                "(per-stratum offsets from population counts), not both"
            )
        return self


class TriagePolicy(_Frozen):
    rule_out_sensitivity: float = Field(
        gt=0.5, lt=1, description="green: the lower 95% bound of sensitivity must reach it"
    )
    rule_in_ppv: float = Field(gt=0, lt=1, description="red: PPV target")
    sensitivity_bound: Literal["wilson", "bootstrap"] = Field(
        default="wilson",
        description="how the lower 95% bound of rule-out sensitivity on the calibration period "
        "is computed when the green threshold is chosen",
    )
    min_events: int = Field(
        default=50,
        ge=1,
        description="fewest calibration-period events behind a threshold; with fewer, no "
        "threshold is set and that band is never given",
    )
    rule_out_within: tuple[Literal["age_band", "sex"], ...] = Field(
        default=("age_band", "sex"),
        description="the green threshold must also reach the sensitivity target (estimated) "
        "within every level of these subgroups that has at least promotion.subgroup_min_events "
        "calibration-period events: a rule-out claim must hold for each age band and sex, not "
        "only on average (young cancers carry lower risk, so one cut-off misses more of them)",
    )
    referral_threshold: float = Field(
        default=0.03,
        gt=0,
        lt=1,
        description="the guideline's referral threshold (NICE NG12: 3%) the green band's risk "
        "is compared with",
    )
    recommendations: dict[Literal["green", "amber", "red"], str] = Field(
        default_factory=dict,
        description="the recommendation served with each band; a band left out gets the "
        "cohort kind's default (models.triage); '{outcome}' is replaced by outcome.name",
    )

    @model_validator(mode="after")
    def _texts_given(self) -> TriagePolicy:
        empty = [band for band, text in self.recommendations.items() if not text.strip()]
        if empty:
            raise ValueError(f"recommendations: empty text for {empty}")
        return self


class PromotionGates(_Frozen):
    calibration_slope: tuple[float, float] = (0.8, 1.2)
    observed_expected: tuple[float, float] = (0.8, 1.25)
    rule_out_sensitivity_margin: float = Field(default=0.02, ge=0, lt=0.5)
    auc_non_inferior: bool = True
    auc_margin: float = Field(
        default=0.01,
        ge=0,
        lt=0.5,
        description="non-inferiority margin: the lower 95% bound of candidate minus champion "
        "AUC (both scored on the candidate's evaluation patients) must be >= -auc_margin",
    )
    n_boot: int = Field(
        default=1000, ge=1000, description="bootstrap resamples behind every gate's interval"
    )
    subgroups: tuple[str, ...] = Field(
        default=("age_band", "sex"),
        description="subgroups whose rule-out sensitivity and O/E are gated (each level with at "
        "least subgroup_min_events events)",
    )
    subgroup_min_events: int = Field(default=20, ge=1)


class ModelChoice(_Frozen):
    """Which model family is fitted: `lightgbm`, the restricted-cubic-spline logistic model
    (`spline`), or `auto` (both; LightGBM only when its AUC on the calibration period beats the
    spline model's, paired on the same rows, by at least `auto_margin` with a lower 95% bound
    above 0)."""

    family: Literal["lightgbm", "spline", "auto"] = "lightgbm"
    auto_margin: float = Field(default=0.005, ge=0, lt=0.5)


class MonitoringPolicy(_Frozen):
    """When `triage monitor` raises an alert (post-market surveillance of a deployed model).

    Operational policy, not part of the model: the spec's digest leaves it out, so tightening a
    threshold changes no registered model. Drift alerts also need the difference to be beyond
    sampling noise (the drift table's Bonferroni-corrected p-value), and realised-performance
    alerts need `min_events` events with elapsed horizons, so a quiet week cannot page anyone."""

    analyte_psi: float = Field(
        default=0.25, gt=0, description="an input's PSI against the training reference above it"
    )
    missingness_change: float = Field(
        default=0.10, gt=0, lt=1, description="an input's missing rate moved by more than this"
    )
    score_psi: float = Field(
        default=0.25, gt=0, description="the probability's PSI against training above it"
    )
    refusal_rate: float = Field(
        default=0.15, gt=0, le=1, description="share of a week's requests refused above it"
    )
    warning_rate: float = Field(
        default=0.20, gt=0, le=1, description="share of a week's scores with one warning code"
    )
    warning_codes_not_alerting: tuple[str, ...] = Field(
        default=("analyte_missing",),
        description="warning codes reported but never alerting on their rate: a model that "
        "scores without an optional analyte warns on most requests by design (its missingness "
        "is judged against training by the drift checks instead)",
    )
    min_week_requests: int = Field(
        default=50, ge=1, description="fewest requests in a week before its rates can alert"
    )
    shadow_band_agreement: float = Field(
        default=0.80, gt=0, le=1, description="a shadow's bands equal the champion's less often"
    )
    rule_out_sensitivity: float | None = Field(
        default=None,
        gt=0.5,
        lt=1,
        description="alert when the upper 95% bound of the green band's realised sensitivity is "
        "below it (None: the spec's triage.rule_out_sensitivity)",
    )
    observed_expected: tuple[float, float] = Field(
        default=(0.8, 1.25), description="alert when the realised O/E 95% CI lies outside it"
    )
    min_events: int = Field(
        default=20, ge=1, description="fewest realised cancers before a realised metric alerts"
    )
