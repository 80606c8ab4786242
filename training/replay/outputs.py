"""A replay's outputs besides the score files: drift, the HTML report(s) with the replay's own
tables, metrics.json, green_cancers.parquet and manifest.json (timings only there, never in
Parquet, so two replays give byte-identical score files).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from models.spec import ModelSpec
from models.triage import BANDS
from training.cohorts.reader import made_by_simulator
from training.evaluation import drift
from training.evaluation.card import build_model_card
from training.evaluation.model import explanation_sample
from training.evaluation.report import render_report
from training.json_files import json_safe, write_json
from training.provenance import code_version, files_sha256
from training.replay.chunks import INELIGIBLE, SCORED
from training.replay.options import PinnedModel, ReplayModel, ReplayOptions
from training.replay.outcomes import (
    comparison_tables,
    evaluate_replay,
    green_cancers,
    green_cancers_by_site,
    what_would_have_happened,
)
from training.replay.summaries import PassSummary

MANIFEST_FILE = "manifest.json"
DRIFT_FILE = "drift.parquet"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
GREEN_CANCERS_FILE = "green_cancers.parquet"


# --- finishing: drift, evaluation, report, manifest -----------------------------------------------


@dataclass
class ModelOutcome:
    """Everything a replay found for one model."""

    pinned: PinnedModel
    summary: PassSummary
    drift: pd.DataFrame
    what_if: pd.DataFrame
    green_cancers: pd.DataFrame
    evaluation: dict[str, Any] | None
    report: Path | None = None

    def counts(self) -> dict[str, Any]:
        tally = self.summary.tally
        scored = tally[tally["status"] == SCORED]
        return {
            "rows": self.summary.rows,
            "scored": int(scored["count"].sum()),
            "ineligible": int(tally.loc[tally["status"] == INELIGIBLE, "count"].sum()),
            "bands": {b: int(scored.loc[scored["band"] == b, "count"].sum()) for b in BANDS},
        }


@dataclass
class ReplayResult:
    out: Path
    models: list[ModelOutcome]
    comparison: dict[str, Any] | None
    manifest: dict[str, Any]


def feature_kinds(spec: ModelSpec) -> dict[str, str]:
    """Each model input's kind, for the drift table."""
    f = spec.features
    kinds = {name: "analyte" for name in f.analytes}
    kinds |= {name: "derived" for name in f.derived_names}
    kinds |= {name: "demographic" for name in f.demographics}
    return kinds | {name: "context" for name in f.context}


def finish_model(
    model: ReplayModel, summary: PassSummary, options: ReplayOptions, seed: int
) -> ModelOutcome:
    """Drift, what would have happened and the evaluation of one model's pass."""
    predictor = model.predictor
    table = drift.drift_table(
        summary.drift_counts, predictor.reference, kinds=feature_kinds(predictor.spec)
    )
    cancers = green_cancers(summary.evaluation, predictor.spec)
    return ModelOutcome(
        pinned=model.pinned,
        summary=summary,
        drift=table,
        what_if=what_would_have_happened(summary.tally),
        green_cancers=cancers,
        evaluation=evaluate_replay(summary.evaluation, predictor, options.n_boot, seed),
    )


def _in_words(frame: pd.DataFrame, events: str) -> pd.DataFrame:
    """A table for the report with 'cancers' in its column names replaced by the outcome's plural
    (the Parquet and JSON outputs keep their column names)."""
    if events == "cancers":
        return frame
    return frame.rename(columns=lambda c: str(c).replace("cancers", events))


def cohort_summary(cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The replayed cohort as the model card describes a cohort (name, sha256, rows, simulated);
    its date range and precision are not measured by a replay."""
    return {
        "name": Path(str(cohort["path"])).name,
        "sha256": cohort["sha256"],
        "rows": cohort.get("rows"),
        "simulated": made_by_simulator(str(cohort["path"])),
    }


def report_tables(
    outcome: ModelOutcome,
    comparison: Mapping[str, Any] | None,
    cohort: Mapping[str, Any],
    events: str = "cancers",
) -> dict[str, pd.DataFrame]:
    """The replay's own tables for the report: pin, what would have happened, events banded green
    by site, exclusions, drift (flagged rows and the score), and the side-by-side comparison; the
    outcome is named as the spec names it."""
    pinned = outcome.pinned
    tables = {
        "Replay: pinned model and cohort": pd.DataFrame(
            [
                {
                    "model": pinned.name,
                    "version": pinned.version,
                    "run": pinned.run_id,
                    "booster SHA-256": pinned.booster_sha256[:16],
                    "catalogue": pinned.catalogue_version,
                    "cohort SHA-256": str(cohort["sha256"])[:16],
                    "cohort rows": outcome.summary.rows,
                }
            ]
        ),
        "What would have happened, by year": _in_words(outcome.what_if, events),
        f"{events[:1].upper()}{events[1:]} that would have been banded green, by year and site": (
            _in_words(green_cancers_by_site(outcome.green_cancers), events)
        ),
        "Ineligible rows by reason (kept in the score file, status ineligible)": pd.DataFrame(
            outcome.summary.exclusions.most_common(),
            columns=["code", "rows"],
        ),
    }
    flagged = drift.flagged(outcome.drift)
    tables["Drift flags (PSI > 0.1 moderate, > 0.25 major; missingness change > 0.1)"] = (
        flagged.round(4) if len(flagged) else pd.DataFrame([{"flags": "none"}])
    )
    score = outcome.drift[outcome.drift["feature"] == drift.SCORE]
    tables["Drift of the score distribution against training (PSI), by year and lab"] = (
        score.pivot_table(index="period", columns="lab", values="psi", aggfunc="first", sort=True)
        .round(4)
        .reset_index()
    )
    if comparison is not None:
        tables |= {k: _in_words(v, events) for k, v in comparison_tables(comparison).items()}
    return tables


def write_report(
    outcome: ModelOutcome,
    model: ReplayModel,
    comparison: Mapping[str, Any] | None,
    cohort: Mapping[str, Any],
    path: Path,
    seed: int,
) -> Path | None:
    """The training report (`render_report`) for the replayed cohort, with the replay's tables."""
    if outcome.evaluation is None:
        return None
    spec = model.predictor.spec
    card = build_model_card(
        spec,
        data_summary={
            "version": outcome.pinned.version,
            "run_id": outcome.pinned.run_id,
            "cohort_path": cohort["path"],
            "cohort_digest": cohort["sha256"],
            "cohort": cohort_summary(cohort),
            "code_version": code_version(),
            "n_input": outcome.summary.rows,
            "exclusions": dict(outcome.summary.exclusions),
        },
    )
    sample = outcome.summary.sample
    shap_sample = explanation_sample(model.predictor, sample, seed) if len(sample) else None
    html = render_report(
        title=f"Replay of {spec.title} v{outcome.pinned.version} on {Path(cohort['path']).name}",
        model_card=card,
        evaluation=outcome.evaluation,
        shap_sample=shap_sample,
        extra_tables=report_tables(outcome, comparison, cohort, spec.outcome.plural_name),
    )
    path.write_text(html)
    return path


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json_safe(frame.to_dict("records"), nan_as_null=True)
    return records


def _headline(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {
        "n": evaluation.get("n"),
        "events": evaluation.get("events"),
        "auc": evaluation.get("auc"),
        "calibration": evaluation.get("calibration"),
        "brier": evaluation.get("brier"),
        "scale": evaluation.get("scale"),
    }


def write_outputs(
    outcomes: Sequence[ModelOutcome],
    models: Sequence[ReplayModel],
    comparison: dict[str, Any] | None,
    cohort: Mapping[str, Any],
    options: ReplayOptions,
    seed: int,
) -> list[Path]:
    """drift.parquet, and with outcomes report(s), metrics.json and green_cancers.parquet."""
    out = options.out
    written = []
    drift_frames = [o.drift.assign(model=o.pinned.name, version=o.pinned.version) for o in outcomes]
    pd.concat(drift_frames, ignore_index=True).to_parquet(out / DRIFT_FILE, index=False)
    written.append(out / DRIFT_FILE)
    for i, (outcome, model) in enumerate(zip(outcomes, models, strict=True)):
        name = REPORT_FILE if i == 0 else f"report_{outcome.pinned.stem}.html"
        outcome.report = write_report(outcome, model, comparison, cohort, out / name, seed)
        if outcome.report is not None:
            written.append(outcome.report)
    if any(o.evaluation is not None for o in outcomes):
        metrics = {
            "models": [
                {
                    "label": o.pinned.label,
                    "name": o.pinned.name,
                    "version": o.pinned.version,
                    "evaluation": o.evaluation,
                    "what_would_have_happened": _records(o.what_if),
                    "green_cancers_by_site": _records(green_cancers_by_site(o.green_cancers)),
                }
                for o in outcomes
            ],
            "comparison": comparison,
        }
        written.append(write_json(out / METRICS_FILE, json_safe(metrics, nan_as_null=True)))
        cancers = pd.concat(
            [o.green_cancers.assign(model=o.pinned.name, version=o.pinned.version)
             for o in outcomes],
            ignore_index=True,
        )  # fmt: skip
        cancers.to_parquet(out / GREEN_CANCERS_FILE, index=False)
        written.append(out / GREEN_CANCERS_FILE)
    return written


def build_manifest(
    outcomes: Sequence[ModelOutcome],
    comparison: dict[str, Any] | None,
    cohort: Mapping[str, Any],
    options: ReplayOptions,
    seed: int,
    outputs: Sequence[Path],
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """What was replayed, with what, and what came out (timings only here, never in Parquet)."""
    return json_safe(
        {
            "replay": {
                "engine": options.engine,
                "explain": options.explain,
                "window_days": options.window_days,
                "source": options.source,
                "chunk_rows": options.chunk_rows,
                "n_boot": options.n_boot,
                "seed": seed,
            },
            "cohort": dict(cohort),
            "code_version": code_version(),
            "models": [
                {
                    "pinned": o.pinned.to_dict(),
                    "scores": [
                        {"file": p.name, "sha256": files_sha256([p])}
                        for p in o.summary.scores_files
                    ],
                    "counts": o.counts(),
                    "exclusions": dict(sorted(o.summary.exclusions.items())),
                    "warnings": dict(sorted(o.summary.warnings.items())),
                    "drift": drift.drift_summary(o.drift),
                    "what_would_have_happened": _records(o.what_if),
                    "green_cancers_by_site": _records(green_cancers_by_site(o.green_cancers)),
                    "evaluation": _headline(o.evaluation),
                    "report": o.report.name if o.report is not None else None,
                    "timings_seconds": {k: round(v, 3) for k, v in o.summary.timings.items()},
                }
                for o in outcomes
            ],
            "comparison": comparison,
            "outputs": sorted({p.name for p in outputs}),
            "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        },
        nan_as_null=True,
    )


def clear_outputs(out: Path) -> None:
    """Remove a previous replay's files from `out` (score files, drift, reports, manifest)."""
    for pattern in ("scores*.parquet", "report*.html", DRIFT_FILE, METRICS_FILE, MANIFEST_FILE,
                    GREEN_CANCERS_FILE):  # fmt: skip
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
