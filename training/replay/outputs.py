"""A replay's outputs besides the score files: drift, the HTML report(s), metrics.json,
green_cancers.parquet and manifest.json (timings only there, never in Parquet, so two replays
give byte-identical score files, reports and metrics).

The report opens with the replay's own results (`lead_tables`: the pinned model, what would have
happened, the events banded green, the drift flags, the flags by feature and lab, the standing
differences between labs and the score's drift), then the training report's sections, its model
card describing the replay's own period and rows (`replay_block`). A replay that scored nothing
has no report and no metrics: its manifest says why (`nothing_scored`, `reason`).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

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


def _green_table(outcome: ModelOutcome, events: str) -> pd.DataFrame:
    """The events banded green by year and site, or one line saying there were none (a model
    without a green band, or no event below its threshold)."""
    table = green_cancers_by_site(outcome.green_cancers)
    if table.empty:
        return pd.DataFrame([{events: "none banded green"}])
    return _in_words(table, events)


def cohort_summary(cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The replayed cohort as the model card describes a cohort (name, sha256, rows, simulated);
    its date range and precision are not measured by a replay."""
    return {
        "name": Path(str(cohort["path"])).name,
        "sha256": cohort["sha256"],
        "rows": cohort.get("rows"),
        "simulated": made_by_simulator(str(cohort["path"])),
    }


def by_count(counts: Counter[str]) -> list[tuple[str, int]]:
    """Codes and their counts, most frequent first, ties by code: the same order whichever
    engine counted them, in whatever order."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def p_value_text(value: Any) -> str:
    """A p-value as a reader wants it: "< 0.001" rather than "0.000", a dash when there is none."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def drift_flag_table(table: pd.DataFrame) -> pd.DataFrame:
    """The flagged drift rows with the columns a reader needs, largest PSI first: where and when,
    the missing rate against its reference and the change with its p-value, the PSI with its
    p-value, the flag and what the segment was compared with."""
    rows = drift.flagged(table)
    if rows.empty:
        return pd.DataFrame([{"flags": "none"}])
    psi_flag = ("PSI " + rows["psi_flag"]).where(rows["psi_flag"] != "", "")
    missing_flag = rows["missingness_flag"].map({True: "missingness", False: ""})
    rate = rows["missing_rate"].map("{:.3f}".format)
    reference = rows["reference_missing_rate"].map("{:.3f}".format)
    return pd.DataFrame(
        {
            "feature": rows["feature"],
            "kind": rows["kind"],
            "lab": rows["lab"],
            "period": rows["period"],
            "n": rows["n"].astype(int),
            "missing rate (reference)": rate + " (" + reference + ")",
            "missing change": rows["missing_change"].round(3),
            "missing change p-value": rows["missing_p_value"].map(p_value_text),
            "PSI": rows["psi"].round(3),
            "PSI p-value": rows["psi_p_value"].map(p_value_text),
            "flag": (psi_flag + "; " + missing_flag).str.strip("; "),
            "compared with": rows["reference"],
        }
    )


def drift_group_table(table: pd.DataFrame) -> pd.DataFrame:
    """The drift flags by feature and lab (`drift.flag_groups`): which years show which flag."""
    groups = drift.drift_summary(table)["by_group"]
    if not groups:
        return pd.DataFrame([{"flags": "none"}])
    return pd.DataFrame(
        [
            {
                "feature": g["feature"],
                "lab": g["lab"],
                "flags": g["flags"],
                "PSI major in": ", ".join(g["psi_major"]) or "–",
                "PSI moderate in": ", ".join(g["psi_moderate"]) or "–",
                "missingness changed in": ", ".join(g["missingness"]) or "–",
                "largest PSI": g["max_psi"],
                "largest missingness change": g["missing_change"],
            }
            for g in groups
        ]
    )


def standing_table(model: ReplayModel) -> pd.DataFrame:
    """Where a lab differed from the pooled training reference already in the training period
    (`drift.standing_differences`): local practice, not drift."""
    predictor = model.predictor
    table = drift.standing_differences(predictor.reference, feature_kinds(predictor.spec))
    if not predictor.reference.get("by_lab"):
        return pd.DataFrame([{"differences": "not known: the model keeps no per-lab reference"}])
    if table.empty:
        return pd.DataFrame([{"differences": "none beyond the drift thresholds"}])
    return table.rename(
        columns={"missing_rate": "missing rate at the lab", "pooled_missing_rate":
                 "missing rate, all labs", "missing_difference": "difference",
                 "psi_vs_pooled": "PSI vs all labs"}
    ).round(3)  # fmt: skip


def score_drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """PSI of the score against its training distribution, by year (rows) and lab (columns)."""
    score = table[table["feature"] == drift.SCORE]
    if score.empty:
        return pd.DataFrame([{"score PSI": "no scored rows"}])
    pivot = score.pivot_table(index="period", columns="lab", values="psi", aggfunc="first",
                              sort=True)  # fmt: skip
    pivot.columns.name = None
    return pivot.round(4).reset_index()


def lead_tables(
    outcome: ModelOutcome,
    model: ReplayModel,
    cohort: Mapping[str, Any],
    events: str = "cancers",
) -> dict[str, pd.DataFrame]:
    """The replay's own tables, first in its report: pin, what would have happened, events banded
    green, the drift flags, the flags by feature and lab, the standing differences between labs
    and the score's drift; the outcome is named as the spec names it."""
    pinned = outcome.pinned
    green_title = f"{events[:1].upper()}{events[1:]} that would have been banded green"
    return {
        "Pinned model and cohort": pd.DataFrame(
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
        f"{green_title}, by year and site": _green_table(outcome, events),
        "Drift flags (each lab against its own training-period reference; PSI > 0.1 moderate, "
        "> 0.25 major; missingness change > 0.1; each beyond noise: p below 0.001 shared over "
        "the table's tests, Bonferroni)": drift_flag_table(outcome.drift),
        "Drift flags by feature and lab": drift_group_table(outcome.drift),
        "Standing differences between labs (training period; not drift)": standing_table(model),
        "Drift of the score distribution against training (PSI), by year and lab": (
            score_drift_table(outcome.drift)
        ),
    }


def extra_tables(
    outcome: ModelOutcome, comparison: Mapping[str, Any] | None, events: str = "cancers"
) -> dict[str, pd.DataFrame]:
    """The replay's further tables, at the end of its report: exclusions and, with two models,
    the side-by-side comparison."""
    tables = {
        "Ineligible rows by reason (kept in the score file, status ineligible)": pd.DataFrame(
            by_count(outcome.summary.exclusions), columns=["code", "rows"]
        ),
    }
    if comparison is not None:
        tables |= {k: _in_words(v, events) for k, v in comparison_tables(comparison).items()}
    return tables


def index_dates(scores_files: Sequence[Path]) -> dict[str, str | None]:
    """The first and last index date (ISO) in a replay's score files (every row, scored or not),
    read one column at a time so that memory stays flat."""
    found: list[date] = []
    for batch in ds.dataset([str(p) for p in scores_files]).to_batches(columns=["index_date"]):
        bounds = pc.min_max(batch.column("index_date")).as_py()
        found += [d for d in (bounds["min"], bounds["max"]) if d is not None]
    return {
        "first": min(found).isoformat() if found else None,
        "last": max(found).isoformat() if found else None,
    }


def replayed_period(cohort: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The replay's first and last day (ISO): the requested bounds (`cohort["period"]`) where
    given, else (no period, or an open bound) the first or last index date replayed."""
    requested = cohort.get("period") or {}
    replayed = cohort.get("index_dates") or {}
    start, end = requested.get("start"), requested.get("end")
    return (
        start if start not in (None, str(date.min)) else replayed.get("first"),
        end if end not in (None, str(date.max)) else replayed.get("last"),
    )


def replay_block(outcome: ModelOutcome, cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The replay for the model card (`model_card["replay"]`): its own period (the requested
    bounds where given, else the first and last index dates replayed) and its rows, scored,
    ineligible and events."""
    start, end = replayed_period(cohort)
    counts = outcome.counts()
    total = outcome.what_if.iloc[-1].to_dict() if len(outcome.what_if) else {}
    events = total.get("cancers")  # the total row; absent when the cohort has no outcome
    return {
        "start": start,
        "end": end,
        "rows": counts["rows"],
        "scored": counts["scored"],
        "ineligible": counts["ineligible"],
        "events": None if events is None or pd.isna(events) else int(events),
    }


def write_report(
    outcome: ModelOutcome,
    model: ReplayModel,
    comparison: Mapping[str, Any] | None,
    cohort: Mapping[str, Any],
    path: Path,
    seed: int,
) -> Path | None:
    """The training report (`render_report`) for the replayed cohort: the replay's tables first,
    the card describing the replay's own period and rows (not the training data's)."""
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
            "exclusions": dict(sorted(outcome.summary.exclusions.items())),
        },
    )
    card.pop("data", None)  # the training run's rows and events per period: not this replay's
    card["replay"] = replay_block(outcome, cohort)
    sample = outcome.summary.sample
    shap_sample = explanation_sample(model.predictor, sample, seed) if len(sample) else None
    events = spec.outcome.plural_name
    html = render_report(
        title=f"Replay of {spec.title} v{outcome.pinned.version} on {Path(cohort['path']).name}",
        model_card=card,
        evaluation=outcome.evaluation,
        shap_sample=shap_sample,
        lead_tables=lead_tables(outcome, model, cohort, events),
        extra_tables=extra_tables(outcome, comparison, events),
    )
    path.write_text(html)
    return path


def nothing_scored_reason(outcome: ModelOutcome) -> str | None:
    """Why a model scored no row (None when it scored some): the cohort (or the replayed
    period) was empty, or every row was ineligible, with the reasons and their counts."""
    counts = outcome.counts()
    if counts["scored"]:
        return None
    label = outcome.pinned.label
    if not counts["rows"]:
        return f"{label}: the cohort has no rows in the replayed period"
    listed = ", ".join(f"{code} {n:,}" for code, n in by_count(outcome.summary.exclusions))
    return f"{label}: none of {counts['rows']:,} rows was eligible (reasons: {listed or '-'})"


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
    """What was replayed, with what, and what came out (timings only here, never in Parquet);
    `nothing_scored` with its `reason` when a model scored no row."""
    reasons = [nothing_scored_reason(o) for o in outcomes]
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
            "nothing_scored": any(reasons),
            "reason": "; ".join(r for r in reasons if r) or None,
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
