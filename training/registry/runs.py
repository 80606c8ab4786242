"""Log a training run to MLflow and register its model (alias `challenger`).

A run carries: tags and a unique readable name (`any_cancer v3 lightgbm 2026-11-30 18:54`: the
registered version, else the run id's first characters), parameters and flat metrics named as the
README's "MLflow runs" table says (`calibration/platt_slope`, `eval/auc`, `comparator/auc`), the
cohort's four periods as dataset inputs (source, digest, schema and size; never the rows), the
report's ROC, calibration and decision-curve figures as images, the full evaluation JSON for both
models, the model card and the HTML report (both carrying the registered version: the model is
registered before they are rendered), the evaluation predictions, the evaluation rows
(`EVALUATION_ROWS`: canonical values, ids and outcome, with the model's probability; any later
champion is re-scored on them when this version is compared or promoted), a SHAP sample, and the
model itself: a pyfunc logged from code whose artifact is the predictor folder (text booster +
JSON), with explicit pip requirements and a signature.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import pandas as pd
import PIL.Image
import pyarrow as pa
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

import models
from models.spec import ColumnMapping, ModelSpec
from models.units import from_canonical
from training.evaluation.card import build_model_card
from training.evaluation.formatting import family_label
from training.evaluation.model import summary_metrics
from training.evaluation.plots import calibration_plot, decision_plot, roc_plot
from training.evaluation.report import render_report
from training.fit.train import TrainOptions, TrainResult, train_model
from training.registry.store import CHALLENGER, MODEL_ARTIFACT, Tracking

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODELS_PACKAGE = Path(models.__file__).parent
RUNTIME_PACKAGES = ("lightgbm", "numpy", "pandas", "pydantic", "pyyaml", "mlflow")
EVALUATION_ROWS = "evaluation_rows.parquet"  # the run artifact behind paired comparisons
EVAL_METRICS = "eval/"  # the served model on the evaluation period (MLflow's chart view
COMPARATOR_METRICS = "comparator/"  # groups metrics by the part before the first "/")
NOT_SET = "not set"  # a threshold whose target was not met
SCHEMA_ROWS = 1000  # rows a period's schema is inferred from
FIGURE_FOLDER = "figures"
FIGURES = {"roc": roc_plot, "calibration": calibration_plot, "decision_curve": decision_plot}
PNG_DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


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


def render(
    result: TrainResult, run_id: str | None = None, version: str | None = None
) -> tuple[dict[str, Any], str]:
    """The model card and the HTML report of a training result (with its run and registered
    version, when known)."""
    card = build_model_card(result.spec, data_summary=result.provenance)
    if run_id is not None:
        card["run_id"] = run_id
    if version is not None:
        card["version"] = version
    html = render_report(
        title=f"{result.spec.title}: evaluation report",
        model_card=card,
        evaluation=result.evaluation,
        baseline_evaluation=result.baseline_evaluation,
        shap_sample=result.shap_sample,
        extra_tables=comparison_tables(result.evaluation, result.baseline_evaluation),
    )
    return card, html


def run_name(result: TrainResult, run_id: str, version: str | None = None) -> str:
    """`any_cancer v3 lightgbm 2026-11-30 18:54`: the spec, the registered version (else `run`
    and the run id's first 8 characters, so two runs in one minute never share a name), the
    served family and when it was trained (UTC, to the minute)."""
    when = result.provenance["trained_at"][:16].replace("T", " ")
    which = f"v{version}" if version is not None else f"run {run_id[:8]}"
    return f"{result.spec.name} {which} {result.predictor.family} {when}"


def log_training(result: TrainResult, tracking: Tracking, *, register: bool = True) -> LoggedRun:
    """Log everything about a training result; register it as `challenger` when asked, before
    the model card and report are rendered, so that both name the registered version."""
    spec, provenance = result.spec, result.provenance
    tracking.activate()  # the fluent API below logs to these stores, whatever was set since
    work = scratch_dir()
    try:
        with mlflow.start_run(experiment_id=tracking.experiment_id(spec.name)) as run:
            run_id = run.info.run_id
            mlflow.set_tags(
                {
                    "mlflow.runName": run_name(result, run_id),
                    "spec": spec.name,
                    "spec_digest": provenance["spec_digest"],
                    "cohort_digest": provenance["cohort_digest"][:16],
                    "code_version": provenance["code_version"],
                    "model_family": f"{result.predictor.family} + sigmoid calibration",
                    "case_control": str(spec.is_case_control).lower(),
                    "mlflow.note.content": f"{spec.title}. {spec.intended_use}",
                }
            )
            mlflow.log_params(run_params(result))
            mlflow.log_metrics(summary_metrics(result.evaluation, EVAL_METRICS))
            mlflow.log_metrics(summary_metrics(result.baseline_evaluation, COMPARATOR_METRICS))
            log_periods(result)
            log_figures(figure_pngs(result.evaluation, result.baseline_evaluation), work)
            mlflow.log_dict(result.evaluation, "metrics.json")
            mlflow.log_dict(result.baseline_evaluation, "baseline_metrics.json")
            mlflow.log_dict(provenance, "provenance.json")
            mlflow.log_dict(spec.model_dump(mode="json"), "spec.yaml")  # also in the predictor
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
            version = (
                register_challenger(result, tracking, info.model_uri, run_id) if register else None
            )
            card, html = render(result, run_id, version)
            mlflow.log_dict(card, "model_card.json")
            mlflow.log_text(html, "report.html")
            mlflow.set_tag("mlflow.runName", run_name(result, run_id, version))
        return LoggedRun(run_id=run_id, model_uri=info.model_uri, version=version, report=html)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register_challenger(
    result: TrainResult, tracking: Tracking, model_uri: str, run_id: str
) -> str:
    """Register the logged model under the spec's name with alias `challenger`; its version."""
    name, client = result.spec.name, tracking.client
    version = str(mlflow.register_model(model_uri, name).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for key, value in {
        "run_id": run_id,
        "spec_digest": result.provenance["spec_digest"],
        "auc": f"{result.evaluation['auc']['estimate']:.4f}",
        "validation_status": "candidate",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    return version


class CohortPeriod(MetaDataset):
    """One period of the cohort as a run input: where the cohort came from, a digest of the
    period's rows, their schema (inferred from the first rows: MLflow's inference reads every
    value, seconds per period) and the number of rows and events; never the data itself."""

    def __init__(
        self, frame: pd.DataFrame, *, source: DatasetSource, name: str, digest: str, outcome: str
    ) -> None:
        self.rows, self.columns = frame.shape
        self.events = int(frame[outcome].sum()) if outcome in frame else None
        super().__init__(source, name=name, digest=digest, schema=sample_schema(frame))

    @property
    def profile(self) -> dict[str, Any]:
        return {"num_rows": self.rows, "num_elements": self.rows * self.columns,
                "events": self.events}  # fmt: skip

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self.profile)}


def sample_schema(frame: pd.DataFrame) -> Schema | None:
    """The columns and types of a frame's first rows, as MLflow states a dataset's schema; None
    where MLflow cannot type a column (as MLflow's own datasets do: the schema is optional)."""
    with warnings.catch_warnings():  # MLflow's hint about integer columns, meant for models
        warnings.simplefilter("ignore", UserWarning)
        try:
            return cast(Schema, infer_signature(frame.head(SCHEMA_ROWS)).inputs)
        except (MlflowException, TypeError, ValueError):
            return None


def cohort_source(path: str) -> DatasetSource:
    """The cohort's file or folder as an MLflow dataset source (a `file://` URI). MLflow
    registers its local source twice (for `` and `file`), so the first is named outright."""
    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    return resolve_dataset_source(Path(path).resolve().as_uri(), candidate_sources=[local])


def period_digest(cohort_sha256: str, period: str, frame: pd.DataFrame) -> str:
    """16 hex characters of SHA-256 over the cohort's digest, the period and its rows' values."""
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(f"{cohort_sha256}:{period}:".encode() + rows).hexdigest()[:16]


def log_periods(result: TrainResult) -> None:
    """Each period of the cohort (train, stop, calibrate, evaluate) as a dataset input whose
    context is the period: lineage in the run page, without a copy of the data."""
    provenance = result.provenance
    source = cohort_source(provenance["cohort_path"])
    cohort = (provenance.get("cohort") or {}).get("name") or Path(provenance["cohort_path"]).name
    datasets: list[Dataset | None] = [
        CohortPeriod(
            frame, source=source, name=f"{cohort} {period}", outcome=result.spec.outcome.column,
            digest=period_digest(provenance["cohort_digest"], period, frame),
        )
        for period, frame in result.periods.items()
    ]  # fmt: skip
    contexts: list[str | None] = list(result.periods)
    mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(contexts))


def figure_pngs(evaluation: dict[str, Any], comparator: dict[str, Any] | None) -> dict[str, bytes]:
    """The report's ROC, calibration and decision-curve figures as PNG files' bytes: the report's
    own images (`training.evaluation.plots`), decoded from the data URIs it embeds."""
    return {name: embedded_png(draw(evaluation, comparator)) for name, draw in FIGURES.items()}


def embedded_png(html: str) -> bytes:
    """The PNG inside an `<img src="data:image/png;base64,...">` element."""
    found = PNG_DATA_URI.search(html)
    if found is None:
        raise ValueError("the figure holds no embedded PNG image")
    return base64.b64decode(found.group(1), validate=True)


def log_figures(figures: dict[str, bytes], work: Path) -> None:
    """Each figure twice: byte for byte as `figures/<name>.png` (the report's image), and as an
    MLflow image (`log_image` with a key), which the experiment's chart view shows run beside
    run in an "Image grid" chart (it reads only keyed images, not plain artifacts)."""
    folder = work / FIGURE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        mlflow.log_artifact(str(path), FIGURE_FOLDER)
        with PIL.Image.open(io.BytesIO(png)) as image:
            mlflow.log_image(image.convert("RGBA"), key=name, synchronous=True)


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


def run_params(result: TrainResult) -> dict[str, Any]:
    """The run's parameters, in sections: `lightgbm/*` (the spec's settings), `model/*`,
    `train/*`, `data/*` (the cohort and rows per period), `calibration/*` (the Platt scaling
    fitted on the calibration period: `platt_slope` and `platt_intercept` on the raw margin, and
    the case-control prevalence shift) and `thresholds/*` (`not set` when the target was not
    met). The evaluation's calibration slope is a metric, `eval/calibration_slope`."""
    p, predictor = result.provenance, result.predictor
    params: dict[str, Any] = {
        f"lightgbm/{k}": v for k, v in result.spec.lightgbm.model_dump().items()
    }
    params |= {
        "spec": result.spec.name,
        "model/family": predictor.family,
        "model/family_rule": result.spec.model.family,
        "train/seed": p["seed"],
        "train/best_iteration": p["best_iteration"],
        "data/cohort_path": p["cohort_path"],
        **{f"data/rows_{period}": rows for period, rows in p["rows"].items()},
        "calibration/platt_slope": predictor.calibration.slope,
        "calibration/platt_intercept": predictor.calibration.intercept,
        "calibration/prevalence_shift": predictor.calibration.shift,
    }
    for name, value in (("rule_out", predictor.thresholds.rule_out),
                        ("rule_in", predictor.thresholds.rule_in)):  # fmt: skip
        params[f"thresholds/{name}"] = NOT_SET if value is None else value
    return params
