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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.analytes import CATALOGUE, Analyte, Catalogue
from models.features import (
    DEMOGRAPHICS,
    DERIVED,
    DerivedEntry,
    DerivedFeature,
    entry_name,
    resolve_derived,
)
from models.spec_policy import (
    Calibration,
    LightGBMParams,
    ModelChoice,
    MonitoringPolicy,
    PromotionGates,
    TriagePolicy,
)
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
        default=0.15,
        gt=0,
        lt=0.5,
        description="share of the training period's patients held out (seeded, at random) for "
        "LightGBM's early stopping; never a date cut, which tied or coarse dates would distort",
    )
    min_events: int = Field(
        default=30, ge=1, description="fewest events each period must hold, or training stops"
    )
    time_zone: str = Field(
        default="Europe/London",
        description="IANA zone in which index dates are calendar days; timezone-aware "
        "timestamps are converted to it, naive ones are taken as already local",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Europe/London)"
            ) from None
        return value

    @model_validator(mode="after")
    def _in_order(self) -> Split:
        if not self.train.end < self.calibrate.start:
            raise ValueError("the calibration period must start after the training period ends")
        if not self.calibrate.end < self.evaluate.start:
            raise ValueError("the evaluation period must start after the calibration period ends")
        return self


class CohortFilter(_Frozen):
    kind: Literal["referrals", "primary_care", "generic"] = Field(
        description="referrals: urgent suspected-cancer referrals; primary_care: routine "
        "primary-care bloods; generic: any other cohort, with neutral recommendation wording"
    )
    pathways: tuple[str, ...] = Field(default=(), description="empty: every pathway")

    @model_validator(mode="after")
    def _known_pathways(self) -> CohortFilter:
        unknown = sorted(set(self.pathways) - set(PATHWAYS))
        if unknown:
            raise ValueError(f"unknown pathways {unknown}; known: {list(PATHWAYS)}")
        return self


# Words after which an outcome's name is not pluralised (death from cancer -> deaths from cancer).
_PREPOSITIONS = frozenset(
    {"after", "at", "by", "due", "for", "from", "in", "of", "on", "with", "within"}
)


class Outcome(_Frozen):
    """The predicted event: its 0/1 column, its name in words (recommendations, report, model
    card), its definition and horizon (None: at any time in follow-up)."""

    column: str = Field(default="cancer", pattern=_IDENTIFIER)
    name: str = Field(
        default="cancer",
        min_length=1,
        description="the outcome in words, singular and lower case (e.g. myeloma, death from "
        "cancer); recommendations say 'risk of <name>'",
    )
    plural: str | None = Field(
        default=None,
        min_length=1,
        description="the events in words, plural (e.g. myeloma cases); default: derived from "
        "`name` (cancer -> cancers, death from cancer -> deaths from cancer)",
    )
    definition: str
    horizon_days: int | None = Field(
        default=None, gt=0, description="None: the outcome at any time in follow-up"
    )

    @property
    def plural_name(self) -> str:
        """The events in words, plural: `plural`, or `name` with the word before any
        preposition (else its last word) made plural by English rules of thumb."""
        if self.plural is not None:
            return self.plural
        words = self.name.split()
        head = next(
            (i - 1 for i, w in enumerate(words) if i and w in _PREPOSITIONS), len(words) - 1
        )
        word = words[head]
        if word.endswith("is"):  # metastasis -> metastases
            word = word[:-2] + "es"
        elif word.endswith(("s", "x", "z", "ch", "sh")):
            word += "es"
        elif len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
            word = word[:-1] + "ies"
        else:
            word += "s"
        return " ".join([*words[:head], word, *words[head + 1 :]])

    @property
    def horizon_text(self) -> str:
        """The horizon in words: `730 days` or `any time in follow-up`."""
        if self.horizon_days is None:
            return "any time in follow-up"
        return f"{self.horizon_days} days"


class Features(_Frozen):
    """Model inputs: analytes, derived features (a built-in by name, or the spec's own
    `{name, title?, ratio | difference | product | log}`, see models.features), demographics
    and context; which analytes are required at scoring (`required_below_missing`, see
    models.required) and how far back a FHIR bundle's results may date (`lookback_days`)."""

    analytes: tuple[str, ...] = Field(min_length=1)
    derived: tuple[DerivedEntry, ...] = ()
    demographics: tuple[Literal["age", "sex"], ...] = DEMOGRAPHICS  # type: ignore[assignment]
    context: tuple[Literal["pathway"], ...] = ()
    required_below_missing: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="an analyte missing in under this share of the training rows is required at "
        "scoring (refused as missing_required_analyte unless models.derive fills it): a model's "
        "answer for an absence it (almost) never saw is arbitrary; 0 makes none required",
    )
    lookback_days: int = Field(
        default=90,
        gt=0,
        description="as-of look-back window (days) for results taken from a FHIR bundle: an "
        "Observation older than this before the reference date is ignored (replay's "
        "window_days default)",
    )

    @model_validator(mode="after")
    def _unique(self) -> Features:
        names = [*self.analytes, *self.derived_names, *self.demographics, *self.context]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {duplicated}")
        builtin = {d for d in self.derived if isinstance(d, str)}
        unknown = sorted(builtin - set(DERIVED))
        if unknown:
            raise ValueError(f"unknown derived features {unknown}; known: {sorted(DERIVED)}")
        return self

    @property
    def derived_names(self) -> tuple[str, ...]:
        """The derived features' names, in order."""
        return tuple(entry_name(d) for d in self.derived)

    def derived_features(self, catalogue: Catalogue) -> tuple[DerivedFeature, ...]:
        """The derived features resolved against the spec's catalogue (titles, units, panels
        and how to compute them)."""
        return resolve_derived(self.derived, catalogue)

    @property
    def names(self) -> tuple[str, ...]:
        """Model input columns in order."""
        return (*self.analytes, *self.derived_names, *self.demographics, *self.context)


# Column roles a cohort column can be mapped to besides an analyte or a subgroup column.
ROLES: tuple[str, ...] = ("patient_id", "index_date", "age", "sex", "pathway", "lab", "outcome")
SEXES = ("female", "male")


class ColumnMapping(_Frozen):
    """One cohort column: an analyte (with the unit its values are in), a role (`ROLES`) or a
    subgroup column, and for coded columns the meaning of each code (e.g. sex `{1: male, 2:
    female}`, an outcome `{Y: 1, N: 0}`). Codes not listed stay as they are, so the validation
    still refuses what it does not recognise."""

    code: str
    unit: str | None = None
    values: dict[str | int | float | bool, str | int] | None = None

    def recoding(self) -> dict[str, str | int]:
        """`values` keyed by their text (`1`, `1.0` and `"1"` are the same code)."""
        return {code_text(k): v for k, v in (self.values or {}).items()}


def code_text(value: object) -> str:
    """A code as text, so a CSV's `1`, a float column's `1.0` and YAML's `"1"` match."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


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
    model: ModelChoice = ModelChoice()
    lightgbm: LightGBMParams = LightGBMParams()
    calibration: Calibration = Calibration()
    triage: TriagePolicy
    promotion: PromotionGates = PromotionGates()
    monitoring: MonitoringPolicy = MonitoringPolicy()
    subgroups: tuple[str, ...] = ("sex", "age_band", "deprivation", "ethnicity", "lab")
    extra_analytes: tuple[Analyte, ...] = ()
    column_map: dict[str, ColumnMapping] = Field(default_factory=dict)
    seed: int = 20261121

    @model_validator(mode="after")
    def _analytes_known(self) -> ModelSpec:
        catalogue = self.catalogue
        unknown = [c for c in self.features.analytes if c not in catalogue]
        if unknown:
            raise ValueError(f"features.analytes: unknown analytes {unknown}")
        _ = self.derived  # resolved once; raises naming features.derived[i]
        unknown = [c for c in self.eligibility.required_analytes if c not in catalogue]
        if unknown:
            raise ValueError(f"eligibility.required_analytes: unknown analytes {unknown}")
        case_control = self.calibration.case_control
        needed = {"age_band": "age", "sex": "sex"}
        for stratum in case_control.match_on if case_control else ():
            if needed[stratum] not in self.features.demographics:
                raise ValueError(
                    f"calibration.case_control matches on {stratum}: features.demographics "
                    f"must include {needed[stratum]} (each row's offset is looked up from it)"
                )
        for column, mapping in self.column_map.items():
            _check_mapping(column, mapping, catalogue, self.subgroups)
        targets = [self.column_target(m) for m in self.column_map.values()]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"column_map: several columns are mapped to {twice}")
        return self

    def column_target(self, mapping: ColumnMapping) -> str:
        """The column name a mapped cohort column gets: the analyte's code, the role's column
        (the outcome's and the index date's as the spec names them) or the subgroup's name."""
        if mapping.code == "outcome":
            return self.outcome.column
        if mapping.code == "index_date":
            return self.split.date_column
        return mapping.code

    @cached_property
    def catalogue(self) -> Catalogue:
        """The catalogue extended with this spec's own analytes."""
        return CATALOGUE.extended(self.extra_analytes)

    @cached_property
    def derived(self) -> tuple[DerivedFeature, ...]:
        """The derived features resolved against this spec's catalogue, in order (once)."""
        return self.features.derived_features(self.catalogue)

    @property
    def is_case_control(self) -> bool:
        c = self.calibration
        return c.deployment_prevalence is not None or c.case_control is not None

    @cached_property
    def digest(self) -> str:
        """A hash of the spec's content, logged with every run. The monitoring alert thresholds
        are operational policy, not the model, and are left out."""
        payload = json.dumps(self.model_dump(mode="json", exclude={"monitoring"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_mapping(
    column: str, mapping: ColumnMapping, catalogue: Catalogue, subgroups: tuple[str, ...]
) -> None:
    """One `column_map` entry: a known target, a unit only for an analyte (and one accepted for
    it), codes only for a non-analyte, codes that mean something for their role."""
    where, code = f"column_map.{column}", mapping.code
    if code not in catalogue and code not in ROLES and code not in subgroups:
        raise ValueError(
            f"{where}: unknown target {code!r}: not an analyte in the catalogue (or the spec's "
            f"extra_analytes), a role ({', '.join(ROLES)}) or a subgroup in `subgroups`"
        )
    if code in catalogue:
        analyte = catalogue[code]
        if mapping.unit is not None and not is_accepted(analyte, mapping.unit):
            raise ValueError(
                f"{where}: unit {mapping.unit!r} is not accepted for {code}; accepted: "
                f"{', '.join(analyte.units)}"
            )
        if mapping.values is not None:
            raise ValueError(f"{where}: an analyte's values are numbers; `values` is for codes")
        return
    if mapping.unit is not None:
        raise ValueError(f"{where}: `unit` is only for analytes, not for {code!r}")
    recoding = mapping.recoding()
    allowed_meanings: dict[str, set[str | int]] = {"sex": {*SEXES}, "outcome": {0, 1}}
    meanings = allowed_meanings.get(code)
    wrong = [v for v in recoding.values() if meanings is not None and v not in meanings]
    if wrong:
        allowed = " or ".join(sorted(str(m) for m in meanings or ()))
        raise ValueError(f"{where}: {code} codes must mean {allowed}, not {wrong}")
    cycle = sorted(set(recoding) & {code_text(v) for v in recoding.values()})
    if cycle:  # applying the map twice must change nothing (readers and scorers both map)
        raise ValueError(f"{where}: codes {cycle} are both a code and a meaning")


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
