"""Model specifications: one frozen, strictly typed YAML file per model in `models/specs/`.

A spec names everything that defines a model apart from the data: intended use and population,
cohort filter, outcome, features, eligibility, temporal split, LightGBM parameters, calibration
(with the deployment prevalence for case-control data), triage policy, promotion gates and the
subgroups to report. A spec may declare its own analytes and map a custom cohort's columns (and
units) onto catalogue codes. Loading a bad spec fails with a message naming the field.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.analytes import CATALOGUE, Analyte, Catalogue
from models.features import DEMOGRAPHICS, DERIVED
from models.units import is_accepted
from models.validation import Eligibility

PATHWAYS: tuple[str, ...] = (
    "breast",
    "gynaecological",
    "haematological",
    "head_and_neck",
    "lower_gi",
    "lung",
    "skin",
    "upper_gi",
    "urological",
)
_IDENTIFIER = r"^[a-z][a-z0-9_]*$"


class SpecError(ValueError):
    """A spec that cannot be loaded; the message names the file and the offending field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DateRange(_Frozen):
    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end


class Split(_Frozen):
    """Temporal split: fit on `train`, calibrate and choose thresholds on `calibrate`, and
    evaluate on `evaluate`; the periods must be in that order and must not overlap."""

    date_column: str = "index_date"
    train: DateRange
    calibrate: DateRange
    evaluate: DateRange
    early_stopping_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="latest share of the training period held out"
    )

    @model_validator(mode="after")
    def _in_order(self) -> Split:
        if not self.train.end < self.calibrate.start:
            raise ValueError("the calibration period must start after the training period ends")
        if not self.calibrate.end < self.evaluate.start:
            raise ValueError("the evaluation period must start after the calibration period ends")
        return self


class CohortFilter(_Frozen):
    kind: Literal["referrals", "primary_care"]
    pathways: tuple[str, ...] = Field(default=(), description="empty: every pathway")

    @model_validator(mode="after")
    def _known_pathways(self) -> CohortFilter:
        unknown = sorted(set(self.pathways) - set(PATHWAYS))
        if unknown:
            raise ValueError(f"unknown pathways {unknown}; known: {list(PATHWAYS)}")
        return self


class Outcome(_Frozen):
    column: str = Field(default="cancer", pattern=_IDENTIFIER)
    definition: str
    horizon_days: int = Field(gt=0)


class Features(_Frozen):
    analytes: tuple[str, ...] = Field(min_length=1)
    derived: tuple[str, ...] = ()
    demographics: tuple[Literal["age", "sex"], ...] = DEMOGRAPHICS  # type: ignore[assignment]
    context: tuple[Literal["pathway"], ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Features:
        names = [*self.analytes, *self.derived, *self.demographics, *self.context]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {duplicated}")
        unknown = sorted(set(self.derived) - set(DERIVED))
        if unknown:
            raise ValueError(f"unknown derived features {unknown}; known: {sorted(DERIVED)}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """Model input columns in order."""
        return (*self.analytes, *self.derived, *self.demographics, *self.context)


class LightGBMParams(_Frozen):
    n_estimators: int = Field(default=600, gt=0, le=20_000)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    num_leaves: int = Field(default=15, ge=2, le=4096)
    max_depth: int = Field(default=4, ge=-1, le=64)
    min_child_samples: int = Field(default=50, ge=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    subsample_freq: int = Field(default=1, ge=0)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    reg_alpha: float = Field(default=0.0, ge=0)
    early_stopping_rounds: int = Field(default=50, gt=0)


class Calibration(_Frozen):
    method: Literal["sigmoid"] = Field(
        default="sigmoid", description="affine in log-odds, which keeps SHAP exactly additive"
    )
    deployment_prevalence: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="case-control data: population prevalence the probabilities are shifted to",
    )


class TriagePolicy(_Frozen):
    rule_out_sensitivity: float = Field(gt=0.5, lt=1, description="green: sensitivity target")
    rule_in_ppv: float = Field(gt=0, lt=1, description="red: PPV target")


class PromotionGates(_Frozen):
    calibration_slope: tuple[float, float] = (0.8, 1.2)
    observed_expected: tuple[float, float] = (0.8, 1.25)
    rule_out_sensitivity_margin: float = Field(default=0.02, ge=0, lt=0.5)
    auc_non_inferior: bool = True


class ColumnMapping(_Frozen):
    code: str
    unit: str | None = None


class ModelSpec(_Frozen):
    name: str = Field(pattern=_IDENTIFIER)
    title: str
    intended_use: str
    population: str
    not_for: tuple[str, ...] = ()
    cohort: CohortFilter
    outcome: Outcome
    features: Features
    eligibility: Eligibility = Eligibility()
    split: Split
    lightgbm: LightGBMParams = LightGBMParams()
    calibration: Calibration = Calibration()
    triage: TriagePolicy
    promotion: PromotionGates = PromotionGates()
    subgroups: tuple[str, ...] = ("sex", "age_band", "deprivation", "ethnicity", "lab")
    extra_analytes: tuple[Analyte, ...] = ()
    column_map: dict[str, ColumnMapping] = Field(default_factory=dict)
    seed: int = 20261121

    @model_validator(mode="after")
    def _analytes_known(self) -> ModelSpec:
        catalogue = CATALOGUE.extended(self.extra_analytes)
        unknown = [c for c in self.features.analytes if c not in catalogue]
        if unknown:
            raise ValueError(f"features.analytes: unknown analytes {unknown}")
        for name in self.features.derived:
            missing = [c for c in DERIVED[name].inputs if c not in catalogue]
            if missing:
                raise ValueError(f"features.derived: {name} needs unknown analytes {missing}")
        unknown = [c for c in self.eligibility.required_analytes if c not in catalogue]
        if unknown:
            raise ValueError(f"eligibility.required_analytes: unknown analytes {unknown}")
        for column, mapping in self.column_map.items():
            if mapping.code not in catalogue and mapping.code not in {*DEMOGRAPHICS, "pathway"}:
                raise ValueError(f"column_map.{column}: unknown analyte {mapping.code!r}")
            if mapping.unit is not None and mapping.code in catalogue:
                analyte = catalogue[mapping.code]
                if not is_accepted(analyte, mapping.unit):
                    raise ValueError(
                        f"column_map.{column}: unit {mapping.unit!r} is not accepted for "
                        f"{mapping.code}; accepted: {', '.join(analyte.units)}"
                    )
        return self

    @cached_property
    def catalogue(self) -> Catalogue:
        """The catalogue extended with this spec's own analytes."""
        return CATALOGUE.extended(self.extra_analytes)

    @property
    def is_case_control(self) -> bool:
        return self.calibration.deployment_prevalence is not None

    @cached_property
    def digest(self) -> str:
        """A hash of the spec's content, logged with every run."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid model spec"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (not part of the spec schema)"
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> ModelSpec:
    """A ModelSpec from already-parsed YAML/JSON data; raises SpecError naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping, not {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(source, error)) from None


def spec_names() -> list[str]:
    """Names of the specs shipped in `models/specs/`."""
    folder = resources.files("models") / "specs"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load a shipped spec by name (e.g. `lower_gi`) or any spec file by path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        resource = resources.files("models") / "specs" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise SpecError(f"unknown spec {name_or_path!r}; shipped: {', '.join(spec_names())}")
        text, source = resource.read_text(encoding="utf-8"), f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{source}: not valid YAML: {error}") from None
    spec = parse_spec(data, source)
    if path.suffix not in {".yaml", ".yml"} and spec.name != str(name_or_path):
        raise SpecError(f"{source}: name {spec.name!r} does not match the file name")
    return spec
