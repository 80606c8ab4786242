"""The replay orchestrator: pin the model(s) -> score the cohort (local or Spark engine) ->
drift, evaluation and what would have happened -> side by side -> report, metrics, manifest.
See the package docstring for what a replay promises.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from training.cohorts.reader import open_cohort
from training.json_files import write_json
from training.registry.store import Tracking
from training.replay.local import replay_local
from training.replay.options import (
    ProgressCallback,
    ReplayModel,
    ReplayOptions,
    check_columns,
    pin_model,
    replay_seed,
)
from training.replay.outcomes import compare_models
from training.replay.outputs import (
    MANIFEST_FILE,
    ReplayResult,
    build_manifest,
    clear_outputs,
    finish_model,
    index_dates,
    write_outputs,
)
from training.replay.summaries import in_canonical_order

# --- the orchestrator -----------------------------------------------------------------------------


def replay(
    tracking: Tracking,
    refs: Sequence[str],
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
) -> ReplayResult:
    """Pin the model(s), replay the cohort through them and write every output into `out`."""
    if not 1 <= len(refs) <= 2:
        raise ValueError(f"replay takes one model, or two for side by side; got {len(refs)}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="triage-replay-") as scratch:
        models = [
            pin_model(tracking, ref, Path(scratch), num_threads=options.num_threads) for ref in refs
        ]
        timings["pin"] = time.perf_counter() - started
        return replay_models(models, options, progress, timings)


def replay_models(
    models: Sequence[ReplayModel],
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> ReplayResult:
    """Replay already pinned models: score -> drift -> evaluate -> compare -> write."""
    timings = dict(timings or {})
    labels = [m.pinned.label for m in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"side by side needs two different versions, got {labels}")
    spec = models[0].predictor.spec  # the cohort is read in the (first) model's terms
    period = options.date_range(spec)
    cohort = open_cohort(options.cohort, options.window_days, options.source, spec, period)
    for model in models:  # before touching `out`: a refused replay leaves it as it was
        check_columns(cohort.columns(), model.predictor.spec)
    options.out.mkdir(parents=True, exist_ok=True)
    clear_outputs(options.out)
    seed = replay_seed(models, options)
    started = time.perf_counter()
    if options.engine == "spark":
        from training.replay.spark import replay_spark

        summaries = replay_spark(models, cohort, options, progress)
    else:
        summaries = replay_local(models, cohort, options, progress)
    for summary in summaries:  # the same row and level order from either engine
        summary.evaluation = in_canonical_order(summary.evaluation)
    timings["score"] = time.perf_counter() - started

    started = time.perf_counter()
    outcomes = [finish_model(m, s, options, seed) for m, s in zip(models, summaries, strict=True)]
    comparison = None
    if len(models) == 2 and all(len(s.evaluation) for s in summaries):  # rows to pair
        comparison = compare_models(
            summaries[0].evaluation, summaries[1].evaluation,
            (labels[0], labels[1]), models[0].predictor.spec.outcome.column,
            n_boot=options.n_boot, seed=seed,
        )  # fmt: skip
    timings["evaluate"] = time.perf_counter() - started
    started = time.perf_counter()
    info = {
        "path": str(options.cohort),
        "format": cohort.kind,
        "files": [p.name for p in cohort.files],
        "sha256": cohort.digest(),
        "rows": outcomes[0].summary.rows,
        "period": None if period is None else {"start": str(period.start), "end": str(period.end)},
        "index_dates": index_dates(outcomes[0].summary.scores_files),
    }
    outputs = [p for o in outcomes for p in o.summary.scores_files]
    outputs += write_outputs(outcomes, models, comparison, info, options, seed)
    timings["report"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    manifest = build_manifest(outcomes, comparison, info, options, seed, outputs, timings)
    write_json(options.out / MANIFEST_FILE, manifest)
    return ReplayResult(options.out, list(outcomes), comparison, manifest)
