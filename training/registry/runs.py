"""Log a training run to MLflow and register its model (alias `challenger`).

A run carries: tags and a readable name, the LightGBM parameters and provenance as params, flat
metrics (AUC with CI, calibration, thresholds, oracle gap, baseline), the full evaluation JSON for
both models, the model card, the HTML report, the evaluation predictions, the evaluation rows
(`EVALUATION_ROWS`: canonical values, ids and outcome, with the model's probability; any later
champion is re-scored on them when this version is compared or promoted), a SHAP sample, and the
model itself: a pyfunc logged from code whose artifact is the predictor folder (text booster +
JSON), with explicit pip requirements and a signature.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

import models
from models.spec import ColumnMapping, ModelSpec
from models.units import from_canonical
from training.evaluation.card import build_model_card
from training.evaluation.formatting import family_label
from training.evaluation.model import summary_metrics
from training.evaluation.report import render_report
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.store import CHALLENGER, MODEL_ARTIFACT, Tracking

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODELS_PACKAGE = Path(models.__file__).parent
RUNTIME_PACKAGES = ("lightgbm", "numpy", "pandas", "pydantic", "pyyaml", "mlflow")
EVALUATION_ROWS = "evaluation_rows.parquet"  # the run artifact behind paired comparisons


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str
    version: str | None
    report: str = ""  # the HTML report logged with the run


@dataclass(frozen=True)
class Trained:
    """A model trained, logged (and registered), with its report written to a file."""

    result: TrainResult
    logged: LoggedRun
    report: Path


def pip_requirements() -> list[str]:
    """Exact versions of what the predictor needs at inference (never inferred)."""
    return [f"{name}=={installed_version(name)}" for name in RUNTIME_PACKAGES]


def signature(spec: ModelSpec) -> ModelSignature:
    """The model's inputs as its users send them: analytes by catalogue code in canonical units,
    `age`, `sex` (and `pathway`), or by the cohort's own column names, units and codes where the
    spec's `column_map` maps them; probability, band and status out.

    The inputs are typed Any: the schema names them, and the project's validation judges their
    values (a non-number is refused with its error code). MLflow's own types would refuse a
    whole frame for an integer column (platelets, age from a CSV) where a double is declared."""
    names = input_names(spec)
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(AnyType(), names.get(code, code), required=False) for code in spec.features.analytes
    ]
    inputs += [
        ColSpec(AnyType(), names.get(name, name)) for name in ("age", "sex", *spec.features.context)
    ]
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec("double", "probability"),
        ColSpec("string", "band"),
    ]
    outputs.append(ColSpec("string", "status"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_names(spec: ModelSpec) -> dict[str, str]:
    """Each mapped model input's name in the user's cohort (`column_map`: theirs -> ours)."""
    return {spec.column_target(m): column for column, m in spec.column_map.items()}


def _mapping_of(spec: ModelSpec, target: str) -> ColumnMapping | None:
    return next((m for m in spec.column_map.values() if spec.column_target(m) == target), None)


def comparison_tables(
    evaluation: dict[str, Any], comparator: dict[str, Any] | None = None
) -> dict[str, pd.DataFrame]:
    """Extra report tables computed at training time (paired served model vs comparator AUC)."""
    diff = evaluation.get("vs_baseline")
    if not diff:
        return {}
    served = family_label(evaluation.get("model_family"), "served model")
    other = family_label((comparator or {}).get("model_family"), "comparator")
    row = {
        f"AUC difference ({served} - {other})": f"{diff['estimate']:+.4f}",
        "95% CI (paired patient-level bootstrap)": f"[{diff['low']:+.4f}, {diff['high']:+.4f}]",
    }
    return {f"{served} vs {other}, paired": pd.DataFrame([row])}


def input_example(spec: ModelSpec) -> pd.DataFrame:
    """A made-up patient at the reference midpoints (never a real record inside the artifact),
    in the user's own columns, units and codes where the spec maps them."""
    row: dict[str, Any] = {}
    for code in spec.features.analytes:
        analyte = spec.catalogue[code]
        interval = analyte.reference
        low = interval.low if interval.low is not None else 0.0
        value = low if interval.high is None else (low + interval.high) / 2
        mapping = _mapping_of(spec, code)
        if mapping is not None and mapping.unit is not None:
            value = from_canonical(analyte, value, mapping.unit)
        row[code] = value
    row |= {"age": 65.0, "sex": _coded(spec, "sex", "female")}
    if "pathway" in spec.features.context:
        pathway = spec.cohort.pathways[0] if spec.cohort.pathways else "lower_gi"
        row["pathway"] = _coded(spec, "pathway", pathway)
    names = input_names(spec)
    return pd.DataFrame([row]).rename(columns=names)


def _coded(spec: ModelSpec, target: str, meaning: str) -> Any:
    """The user's code for `meaning` in a coded column (the meaning itself when none is stated)."""
    mapping = _mapping_of(spec, target)
    codes = [c for c, m in ((mapping.values or {}) if mapping else {}).items() if m == meaning]
    return codes[0] if codes else meaning


def render(result: TrainResult, run_id: str | None = None) -> tuple[dict[str, Any], str]:
    """The model card and the HTML report of a training result."""
    card = build_model_card(result.spec, data_summary=result.provenance)
    if run_id is not None:
        card["run_id"] = run_id
    html = render_report(
        title=f"{result.spec.title}: evaluation report",
        model_card=card,
        evaluation=result.evaluation,
        baseline_evaluation=result.baseline_evaluation,
        shap_sample=result.shap_sample,
        extra_tables=comparison_tables(result.evaluation, result.baseline_evaluation),
    )
    return card, html


def log_training(result: TrainResult, tracking: Tracking, *, register: bool = True) -> LoggedRun:
    """Log everything about a training result; register it as `challenger` when asked."""
    spec, provenance = result.spec, result.provenance
    client = tracking.client
    tracking.activate()  # the fluent API below logs to these stores, whatever was set since
    work = scratch_dir()
    try:
        with mlflow.start_run(
            experiment_id=tracking.experiment_id(spec.name),
            run_name=f"{spec.name} {result.predictor.family} "
            f"{provenance['trained_at'][:16].replace('T', ' ')}",
        ) as run:
            run_id = run.info.run_id
            mlflow.set_tags(
                {
                    "spec": spec.name,
                    "spec_digest": provenance["spec_digest"],
                    "cohort_digest": provenance["cohort_digest"][:16],
                    "code_version": provenance["code_version"],
                    "model_family": f"{result.predictor.family} + sigmoid calibration",
                    "case_control": str(spec.is_case_control).lower(),
                    "mlflow.note.content": f"{spec.title}. {spec.intended_use}",
                }
            )
            mlflow.log_params(_params(result))
            mlflow.log_metrics(summary_metrics(result.evaluation))
            mlflow.log_metrics(summary_metrics(result.baseline_evaluation, "baseline_"))
            card, html = render(result, run_id)
            mlflow.log_dict(result.evaluation, "metrics.json")
            mlflow.log_dict(result.baseline_evaluation, "baseline_metrics.json")
            mlflow.log_dict(card, "model_card.json")
            mlflow.log_dict(provenance, "provenance.json")
            mlflow.log_dict(spec.model_dump(mode="json"), "spec.yaml")  # also in the predictor
            mlflow.log_text(html, "report.html")
            for name, frame in (
                ("evaluation_predictions", result.predictions),
                ("shap_sample", result.shap_sample),
                (EVALUATION_ROWS.removesuffix(".parquet"), evaluation_rows(result)),
            ):
                path = work / f"{name}.parquet"
                frame.to_parquet(path, index=False)
                mlflow.log_artifact(str(path))
            predictor_dir = result.predictor.save(work / "predictor")
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_FILE),
                artifacts={"predictor": str(predictor_dir)},
                code_paths=[str(MODELS_PACKAGE)],
                pip_requirements=pip_requirements(),
                signature=signature(spec),
                input_example=input_example(spec),
            )
        version = None
        if register:
            registered = mlflow.register_model(info.model_uri, spec.name)
            version = str(registered.version)
            client.set_registered_model_alias(spec.name, CHALLENGER, version)
            for key, value in {
                "run_id": run_id,
                "spec_digest": provenance["spec_digest"],
                "auc": f"{result.evaluation['auc']['estimate']:.4f}",
                "validation_status": "candidate",
            }.items():
                client.set_model_version_tag(spec.name, version, key, value)
        return LoggedRun(run_id=run_id, model_uri=info.model_uri, version=version, report=html)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def evaluation_rows(result: TrainResult) -> pd.DataFrame:
    """The evaluation period's rows as validated (catalogue codes in canonical units, age, sex,
    pathway, ids, index date, outcome, subgroup columns) with the model's own `probability`:
    another model is scored on the same patients from them, without the cohort file."""
    rows = result.periods["evaluate"].reset_index(drop=True)
    probability = result.predictions["probability"].to_numpy()
    if len(probability) != len(rows):
        raise ValueError("evaluation predictions and rows differ in length")
    return parquet_safe(rows.assign(probability=probability))


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns Parquet cannot store as they are (mixed text and numbers) as text; missing
    values stay missing."""
    out = frame.copy()
    for column in [c for c in out.columns if out[c].dtype == np.dtype(object)]:
        try:
            pa.array(out[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            values = out[column]
            out[column] = values.where(values.isna(), values.astype(str))
    return out


def scratch_dir() -> Path:
    """A new temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix="triage-"))


def train_and_register(
    spec: ModelSpec,
    options: TrainOptions,
    tracking: Tracking,
    reports: Path,
    *,
    register: bool = True,
) -> Trained:
    """Train (`train_model`), log the run to MLflow and register it as `challenger` (when
    asked), and write its HTML report to `reports/{name}-{version or run id}.html`."""
    result = train_model(spec, options)
    logged = log_training(result, tracking, register=register)
    reports.mkdir(parents=True, exist_ok=True)
    report = reports / f"{spec.name}-{logged.version or logged.run_id}.html"
    report.write_text(logged.report)
    return Trained(result, logged, report)


def _params(result: TrainResult) -> dict[str, Any]:
    p = result.provenance
    params: dict[str, Any] = {f"lgbm_{k}": v for k, v in result.spec.lightgbm.model_dump().items()}
    params |= {
        "spec": result.spec.name,
        "model_family": result.predictor.family,
        "model_family_rule": result.spec.model.family,
        "seed": p["seed"],
        "best_iteration": p["best_iteration"],
        "cohort_path": p["cohort_path"],
        "rows_train": p["rows"]["train"],
        "rows_calibrate": p["rows"]["calibrate"],
        "rows_evaluate": p["rows"]["evaluate"],
        "rule_out_threshold": result.predictor.thresholds.rule_out,
        "rule_in_threshold": result.predictor.thresholds.rule_in,
        "calibration_slope": result.predictor.calibration.slope,
        "calibration_intercept": result.predictor.calibration.intercept,
        "prevalence_shift": result.predictor.calibration.shift,
    }
    return params
