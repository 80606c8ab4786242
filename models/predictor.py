"""TriagePredictor: everything inference needs, saved and loaded as one artifact folder.

The folder holds the model (a LightGBM booster as text, `booster.txt`, or the spline model's
coefficients and knots as JSON, `spline.json`: the spec's `model.family`) and everything else as
JSON (`predictor.json`: family, spec, feature order, calibration, thresholds, catalogue version,
reference statistics, provenance, and the model file's SHA-256). Nothing is pickled. Both families
answer the same calls (`predict` with `raw_score` or `pred_contrib`: exact additive contributions
with the bias last), so everything below is family-blind. The API scores
one record with `score`; replay and the pyfunc score frames with `models.scoring.score_frame`, which
calls this object's `probability` / `explain_matrix` with the same validation rules, routing and
model warnings; training and evaluation call `predict` / `explain`. One booster call underneath
all of them is what makes their outputs identical. Both paths first require the inputs the model
never saw missing in training (`models.required`: refused, or derived exactly by `models.derive`);
their training missing rates are saved in `predictor.json` (`reference.training`). A folder saved
before they were recorded still loads, with every input optional as it was then (only the
eligibility's panels and analytes are required), and a warning in the log: retrain to require them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd

from models.calibration import LogitCalibration
from models.derive import derivations_for
from models.explain import Driver, calibrated_contributions, group_by_panel, top_drivers
from models.features import (
    SEX_CODES,
    derived_columns,
    feature_columns,
    map_codes,
    stack_columns,
    take_rows,
)
from models.required import RequiredInputs, eligibility_inputs
from models.spec import PATHWAYS, ModelSpec
from models.spline import SplineModel, SplineModelError
from models.triage import Band, Thresholds, assign_band, assign_bands, recommend
from models.validation import Issue, RecordValidation, validate_record

FloatArray = npt.NDArray[np.float64]
BOOSTER_FILE = "booster.txt"
SPLINE_FILE = "spline.json"
MODEL_FILES = {"lightgbm": BOOSTER_FILE, "spline": SPLINE_FILE}
META_FILE = "predictor.json"
FORMAT_VERSION = 1
Model = lgb.Booster | SplineModel
PATHWAY_CODES = {name: float(i) for i, name in enumerate(PATHWAYS)}
log = logging.getLogger(__name__)

# Warnings the model adds to the validation's own (they depend on the model, not on the data).
MODEL_WARNINGS = {
    "analyte_missing": "analytes the model uses were not given; it scores without them",
    "outside_training_range": "a value beyond the 0.01-99.99th percentiles seen in training",
    "analyte_derived": "a required analyte not given was derived exactly from others",
}


class ArtifactError(RuntimeError):
    """A predictor folder that is missing, corrupt, tampered with or incompatible."""


@dataclass(frozen=True)
class Score:
    """The answer for one patient: refused with reasons, or scored and explained."""

    eligible: bool
    issues: tuple[Issue, ...]
    values: dict[str, float] = field(default_factory=dict)
    probability: float | None = None
    band: Band | None = None
    recommendation: str | None = None
    base: float | None = None
    contributions: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)
    drivers: list[Driver] = field(default_factory=list)
    validation: RecordValidation | None = None


def spec_feature_columns(
    spec: ModelSpec, values: pd.DataFrame, rows: npt.NDArray[np.int64] | None = None
) -> dict[str, FloatArray]:
    """A spec's model inputs (float64, in order) from a frame of canonical values, for the rows
    at positions `rows` (every row when None)."""
    f = spec.features
    columns = feature_columns(values, f.analytes, spec.derived, f.demographics, rows)
    if "pathway" in f.context:
        columns["pathway"] = take_rows(map_codes(values["pathway"], PATHWAY_CODES), rows)
    return columns


def spec_feature_frame(spec: ModelSpec, values: pd.DataFrame) -> pd.DataFrame:
    """A spec's model inputs (float64, in order) from a frame of canonical values."""
    return pd.DataFrame(spec_feature_columns(spec, values), index=values.index)


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (artifact integrity checks)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TriagePredictor:
    """A calibrated triage model (LightGBM or spline) with its spec, thresholds and reference
    statistics. `booster` is the fitted model of either family."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        booster: Model,
        calibration: LogitCalibration,
        thresholds: Thresholds,
        reference: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        num_threads: int = 1,
    ) -> None:
        self.spec = spec
        self.booster = booster
        self.calibration = calibration
        self.thresholds = thresholds
        self.reference = dict(reference or {})
        self.metadata = dict(metadata or {})
        self.num_threads = num_threads
        self.feature_names: tuple[str, ...] = spec.features.names
        if tuple(booster.feature_name()) != self.feature_names:
            raise ArtifactError(
                f"booster features {booster.feature_name()} differ from the spec's "
                f"{list(self.feature_names)}"
            )
        self.catalogue = spec.catalogue
        self.derived = {d.name: d for d in spec.derived}
        self.soft_limits = {
            name: (stats["low"], stats["high"])
            for name, stats in self.reference.get("features", {}).items()
            if name in self.catalogue
        }
        training = self.reference.get("training")
        self.training_missing: dict[str, float] | None = (
            None if training is None else dict(training["missing_rate"])
        )
        self.eligibility_inputs = eligibility_inputs(spec)
        # Required because the model (almost) never saw them missing (models.required).
        self.required = RequiredInputs.of(spec, self.training_missing)
        self.required_inputs = self.required.codes

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        """`lightgbm` or `spline`."""
        return "spline" if isinstance(self.booster, SplineModel) else "lightgbm"

    # --- features -------------------------------------------------------------------------------

    def feature_frame(self, values: pd.DataFrame) -> pd.DataFrame:
        """Model inputs (float64, in the model's order) from a frame of canonical values."""
        return spec_feature_frame(self.spec, values)

    def feature_matrix(
        self, values: pd.DataFrame, rows: npt.NDArray[np.int64] | None = None
    ) -> FloatArray:
        """The model inputs of `feature_frame` for the rows at positions `rows` (every row when
        None) as one C-contiguous matrix, which the booster reads without a copy."""
        n_rows = len(values) if rows is None else len(rows)
        return stack_columns(spec_feature_columns(self.spec, values, rows), n_rows)

    def feature_row(
        self, values: Mapping[str, float], age: float | None, sex: str | None, pathway: str | None
    ) -> FloatArray:
        """One patient's model inputs as a (1, k) array: the per-request twin of feature_frame."""
        row = np.full((1, len(self.feature_names)), np.nan)
        f = self.spec.features
        for i, code in enumerate(f.analytes):
            row[0, i] = values.get(code, math.nan)
        offset = len(f.analytes)
        derived = derived_columns(
            list(self.derived.values()), lambda code: np.array([values.get(code, math.nan)])
        )
        for j, column in enumerate(derived.values()):
            row[0, offset + j] = column[0]
        offset += len(derived)
        for j, name in enumerate(f.demographics):
            if name == "sex":
                row[0, offset + j] = SEX_CODES.get(sex or "", math.nan)
            else:
                row[0, offset + j] = math.nan if age is None else float(age)
        if f.context:
            row[0, -1] = PATHWAY_CODES.get(pathway or "", math.nan)
        return row

    # --- prediction -----------------------------------------------------------------------------

    def margin(self, features: FloatArray | pd.DataFrame) -> FloatArray:
        """The booster's raw log-odds margin."""
        x = features.to_numpy(np.float64) if isinstance(features, pd.DataFrame) else features
        return self._booster_predict(x, raw_score=True)

    def _booster_predict(self, x: FloatArray, **kwargs: bool) -> FloatArray:
        if len(x) == 0:  # LightGBM divides by the row count for contributions: no rows, no call
            width = (x.shape[1] + 1,) if kwargs.get("pred_contrib") else ()
            return np.zeros((0, *width), dtype=np.float64)
        result = self.booster.predict(x, num_threads=self.num_threads, **kwargs)
        return np.asarray(result, dtype=np.float64)

    def probability(self, features: FloatArray | pd.DataFrame) -> FloatArray:
        """Calibrated probability (on the population's scale for case-control models)."""
        x = features.to_numpy(np.float64) if isinstance(features, pd.DataFrame) else features
        return self.calibration.probability(self.margin(x), self.row_shift(x))

    def row_shift(self, x: FloatArray) -> FloatArray | None:
        """Each row's case-control offset from its age and sex inputs (None without strata)."""
        if self.calibration.strata is None:
            return None
        names = self.feature_names
        age = x[:, names.index("age")] if "age" in names else np.full(len(x), np.nan)
        sex = x[:, names.index("sex")] if "sex" in names else np.full(len(x), np.nan)
        return self.calibration.row_shift(age, sex)

    def predict(self, values: pd.DataFrame) -> pd.DataFrame:
        """Probability and band for each row of canonical values (rows must be eligible)."""
        probability = self.probability(self.feature_frame(values))
        return pd.DataFrame(
            {"probability": probability, "band": assign_bands(probability, self.thresholds)},
            index=values.index,
        )

    def explain(self, values: pd.DataFrame) -> tuple[FloatArray, pd.DataFrame]:
        """Base and per-feature contributions in calibrated log-odds for each row."""
        base, contributions = self.explain_matrix(self.feature_matrix(values))
        return base, pd.DataFrame(contributions, columns=self.feature_names, index=values.index)

    def explain_matrix(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Base and per-feature contributions in calibrated log-odds for rows of model inputs
        (`feature_matrix`)."""
        raw = self._booster_predict(x, pred_contrib=True)
        return calibrated_contributions(raw, self.calibration, self.row_shift(x))

    def score(
        self, record: Mapping[str, Any], *, pathway: str | None = None, explain: bool = True
    ) -> Score:
        """Validate one patient record and, if eligible, score and explain it.

        `record` is `{"age", "sex", "analytes": {code or LOINC: {"value", "unit"}}}`.
        """
        validation = validate_record(
            record, catalogue=self.catalogue, eligibility=self.spec.eligibility
        )
        completed = self.required.complete_record(validation)
        values, issues = completed.values, validation.issues + completed.issues
        if not validation.eligible or any(i.severity == "error" for i in completed.issues):
            return Score(eligible=False, issues=issues, validation=validation)
        x = self.feature_row(values, validation.age, validation.sex, pathway)
        probability = float(self.probability(x)[0])
        band = assign_band(probability, self.thresholds)
        issues += self._model_warnings(values)
        result = Score(
            eligible=True,
            issues=issues,
            values=values,
            probability=probability,
            band=band,
            recommendation=recommend(band, self.spec),
            validation=validation,
        )
        if not explain:
            return result
        base, contributions = self.explain_matrix(x)
        named = dict(zip(self.feature_names, (float(c) for c in contributions[0]), strict=True))
        shown: dict[str, float | str | None] = {
            **values,
            **{n: float(x[0, i]) for i, n in enumerate(self.feature_names) if n in self.derived},
            "age": validation.age,
            "sex": validation.sex,
            "pathway": pathway,
        }
        drivers = top_drivers(
            self.feature_names,
            shown,
            contributions[0],
            self.catalogue,
            sex=validation.sex,
            age=validation.age,
            derived=self.derived,
        )
        derived = completed.derived
        return replace(
            result,
            base=float(base[0]),
            contributions=named,
            groups=group_by_panel(named, self.catalogue, self.derived),
            drivers=[
                replace(d, text=f"{d.text} (derived: {derived[d.feature].derivation.formula})")
                if d.feature in derived
                else d
                for d in drivers
            ],
        )

    def _model_warnings(self, values: Mapping[str, float]) -> tuple[Issue, ...]:
        warnings = []
        missing = [c for c in self.spec.features.analytes if c not in values]
        if missing:
            warnings.append(
                Issue(
                    "warning",
                    "analyte_missing",
                    ",".join(missing),
                    f"not given: {', '.join(missing)}; the model scores without them",
                )
            )
        for code, value in values.items():
            low, high = self.soft_limits.get(code, (math.nan, math.nan))
            if value < low or value > high:
                analyte = self.catalogue[code]
                shown = [f"{round(v, analyte.decimals):g}" for v in (value, low, high)]
                warnings.append(
                    Issue(
                        "warning",
                        "outside_training_range",
                        code,
                        f"{analyte.name} {shown[0]} {analyte.display_unit} is beyond the range "
                        f"seen in training ({shown[1]}-{shown[2]}); the estimate is less certain",
                    )
                )
        return tuple(warnings)

    # --- artifact -------------------------------------------------------------------------------

    def is_required(self, code: str) -> bool:
        """Whether a record must carry `code` (given, or derived where `models.derive` can)."""
        return code in self.eligibility_inputs or code in self.required_inputs

    def describe_input(self, code: str) -> dict[str, Any]:
        """One input for clients: units, limits, whether it is required and why, its missing
        rate in training (None when unknown) and how it can be derived."""
        a = self.catalogue[code]
        derivations = derivations_for(code) if code in self.required_inputs else ()
        rate = None if self.training_missing is None else self.training_missing.get(code)
        return {
            "code": a.code,
            "name": a.name,
            "loinc": a.loinc,
            "unit": a.unit,
            "accepted_units": list(a.units),
            "limits": a.limits.model_dump(),
            "panel": a.panel,
            "required": self.is_required(code),
            "required_by": (
                "eligibility"
                if code in self.eligibility_inputs
                else "training"
                if code in self.required_inputs
                else None
            ),
            "training_missing_rate": rate,
            "derivable_from": list(derivations[0].inputs) if derivations else None,
            "derivations": [d.to_dict() for d in derivations],
        }

    def describe_panels(self) -> dict[str, dict[str, Any]]:
        """Per panel of the model's inputs: whether the eligibility requires it, and which of its
        inputs are required and which optional."""
        panels: dict[str, dict[str, Any]] = {}
        for code in self.spec.features.analytes:
            panel = self.catalogue[code].panel
            entry = panels.setdefault(
                panel,
                {
                    "required_panel": panel in self.spec.eligibility.required_panels,
                    "required": [],
                    "optional": [],
                },
            )
            entry["required" if self.is_required(code) else "optional"].append(code)
        return panels

    def describe(self) -> dict[str, Any]:
        """What a client needs to know: inputs (required or not, and why), units, limits,
        thresholds, intended use, the look-back window for results taken from a FHIR bundle."""
        spec = self.spec
        return {
            "name": spec.name,
            "title": spec.title,
            "intended_use": spec.intended_use,
            "population": spec.population,
            "not_for": list(spec.not_for),
            "features": list(self.feature_names),
            "inputs": [self.describe_input(c) for c in spec.features.analytes],
            "required_inputs": [c for c in spec.features.analytes if self.is_required(c)],
            "panels": self.describe_panels(),
            "required_below_missing": spec.features.required_below_missing,
            "training_missing_known": self.training_missing is not None,
            "lookback_days": spec.features.lookback_days,
            "eligibility": spec.eligibility.model_dump(mode="json"),
            "thresholds": self.thresholds.to_dict(),
            "family": self.family,
            "calibration": self.calibration.to_dict(),
            "catalogue_version": self.catalogue.version,
            "outcome": {
                "name": spec.outcome.column,
                "definition": spec.outcome.definition,
                "horizon_days": spec.outcome.horizon_days,
            },
        }

    def save(self, folder: str | Path) -> Path:
        """Write `booster.txt` and `predictor.json` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        booster_path = folder / MODEL_FILES[self.family]
        self.booster.save_model(str(booster_path))
        meta = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "spec": self.spec.model_dump(mode="json"),
            "feature_names": list(self.feature_names),
            "calibration": self.calibration.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "catalogue": {"version": self.catalogue.version, "checksum": self.catalogue.checksum},
            "reference": self.reference,
            "metadata": self.metadata,
            "booster_sha256": file_sha256(booster_path),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, allow_nan=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, num_threads: int = 1) -> TriagePredictor:
        """Load and verify a predictor folder; raises ArtifactError with the reason."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ArtifactError(f"{meta_path}: missing from the model artifact")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{meta_path}: not valid JSON ({error})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{meta_path}: unsupported format {meta.get('format_version')}")
        family = meta.get("family", "lightgbm")
        if family not in MODEL_FILES:
            raise ArtifactError(f"{meta_path}: unknown model family {family!r}")
        booster_path = folder / MODEL_FILES[family]
        if not booster_path.is_file():
            raise ArtifactError(f"{booster_path}: missing from the model artifact")
        if file_sha256(booster_path) != meta.get("booster_sha256"):
            raise ArtifactError(f"{booster_path}: checksum mismatch (tampered or corrupt)")
        spec = ModelSpec.model_validate(meta["spec"])
        if spec.catalogue.checksum != meta["catalogue"]["checksum"]:
            raise ArtifactError(
                f"the model was trained with analyte catalogue {meta['catalogue']['version']} "
                f"({meta['catalogue']['checksum']}); this code has {spec.catalogue.version} "
                f"({spec.catalogue.checksum}): retrain or use the matching code version"
            )
        booster: Model
        try:
            if family == "spline":
                booster = SplineModel.load(booster_path)
            else:
                booster = lgb.Booster(model_file=str(booster_path))
        except (lgb.basic.LightGBMError, SplineModelError) as error:
            raise ArtifactError(f"{booster_path}: not a {family} model ({error})") from None
        if "training" not in (meta.get("reference") or {}):
            log.warning(
                "%s: saved before training missing rates were recorded; every input is "
                "treated as optional (only the eligibility's are required): retrain to require "
                "the inputs the model never saw missing",
                meta_path,
            )
        return cls(
            spec=spec,
            booster=booster,
            calibration=LogitCalibration.from_dict(meta["calibration"]),
            thresholds=Thresholds.from_dict(meta["thresholds"]),
            reference=meta.get("reference"),
            metadata=meta.get("metadata"),
            num_threads=num_threads,
        )
