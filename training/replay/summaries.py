"""What a scoring pass keeps from each chunk, whatever the engine: row tallies by period, status,
band and outcome; exclusions and warnings; drift bin counts; a slim frame of the scored rows
(ids, date, outcome, probability, band, subgroups) for the evaluation; and a sample of canonical
values for the report's SHAP plot.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from models.reference import lab_names
from models.spec import ModelSpec
from models.triage import BANDS
from training.evaluation import drift
from training.evaluation.model import EXPLAINED_SAMPLE_ROWS
from training.replay.chunks import INELIGIBLE, SCORED, ScoredChunk
from training.replay.options import FloatArray, ReplayModel

ROW_ID = "_row"  # position of a row in the cohort: pairs the models of a side-by-side replay
SEXES = ("female", "male")
SUBGROUP_TEXT = ("deprivation", "ethnicity", "lab", "pathway", "cancer_site")


# --- what the summaries keep from each chunk ------------------------------------------------------


def lab_labels(frame: pd.DataFrame) -> npt.NDArray[np.object_]:
    """Each row's lab as text (`unknown` when missing; `all` when the cohort has no lab column)."""
    if "lab" not in frame:
        return np.full(len(frame), drift.ALL, dtype=object)
    return lab_names(frame["lab"])


def subgroup_columns(columns: Sequence[str], spec: ModelSpec) -> list[str]:
    """The cohort's columns kept as text for subgroups and the what-if tables."""
    wanted = [*SUBGROUP_TEXT, *(s for s in spec.subgroups if s not in {"sex", "age_band"})]
    return [c for c in dict.fromkeys(wanted) if c in columns]


def evaluation_columns(frame: pd.DataFrame, scored: ScoredChunk, spec: ModelSpec) -> pd.DataFrame:
    """Per row of a chunk: period, outcome (NaN when the cohort has none), canonical sex and age,
    true risk (simulated cohorts) and the subgroup columns as text."""
    date_column, outcome = spec.split.date_column, spec.outcome.column
    n = len(frame)
    out = pd.DataFrame(
        {
            "period": drift.period_categories(frame[date_column]),
            outcome: pd.to_numeric(frame[outcome], errors="coerce").to_numpy(np.float32)
            if outcome in frame
            else np.full(n, np.nan, dtype=np.float32),
            "sex": few_categories(scored.values["sex"].to_numpy(dtype=object), SEXES),
            "age": scored.values["age"].to_numpy(np.float32),
        }
    )
    if "true_risk" in frame:
        out["true_risk"] = pd.to_numeric(frame["true_risk"], errors="coerce").to_numpy(np.float64)
    for column in subgroup_columns(list(frame.columns), spec):
        out[column] = text_categories(frame[column]).array
    return out


def few_categories(
    values: npt.NDArray[np.object_], categories: Sequence[str]
) -> pd.Categorical[Any]:
    """A categorical from an object array with a handful of known values (anything else is
    missing): one comparison per category instead of hashing every string."""
    codes = np.full(len(values), -1, dtype=np.int8)
    for i, category in enumerate(categories):
        codes[values == category] = i
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(list(categories)))


def text_categories(column: pd.Series) -> pd.Series:
    """A column as a categorical of text (missing stays missing), without a per-row conversion."""
    categorical = (
        column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    )
    names = [str(c) for c in categorical.cat.categories]
    if len(set(names)) < len(names):  # e.g. 1 and "1": fall back to converting every row
        return column.astype("string").astype("category")
    return categorical.cat.rename_categories(names)


def evaluation_rows(
    frame: pd.DataFrame, scored: ScoredChunk, spec: ModelSpec, first_row: int
) -> pd.DataFrame:
    """A slim frame of the scored rows for the evaluation and the comparison: row id, patient,
    date, probability, band, then `evaluation_columns`."""
    rows = np.flatnonzero(scored.eligible)
    ids = [c for c in ("patient_id", "referral_id") if c in frame]
    pick = frame[[*ids, spec.split.date_column]].iloc[rows]
    head = pd.DataFrame(
        {
            ROW_ID: rows.astype(np.int64) + first_row,
            "patient_id": pick["patient_id"].to_numpy(),
            spec.split.date_column: pd.to_datetime(pick[spec.split.date_column], errors="coerce")
            .dt.normalize()
            .to_numpy(),
            "probability": scored.probability[rows],
            "band": scored.band[rows],
        }
    )
    if "referral_id" in frame:
        head.insert(2, "referral_id", pick["referral_id"].to_numpy())
    extras = evaluation_columns(frame, scored, spec).iloc[rows].reset_index(drop=True)
    return pd.concat([head, extras], axis=1)


def level_order(levels: Sequence[Any]) -> list[Any]:
    """Subgroup levels in the order every output lists them: numerically when every level is a
    number (deprivation deciles 1, 2, ..., 10, as numbers or text), else as text."""
    try:
        return sorted(levels, key=float)
    except (TypeError, ValueError):
        return sorted(levels, key=str)


def in_canonical_order(evaluation: pd.DataFrame) -> pd.DataFrame:
    """The scored rows in cohort order (`ROW_ID`) with every subgroup's categories in
    `level_order`, whichever engine produced them and however its chunks or partitions fell:
    the one place that fixes the order of rows, subgroups and levels in metrics.json and the
    report (the columns follow the spec's subgroups, see `evaluation.model.evaluate_model`).
    Columns are replaced in place rather than the frame copied: it can hold a national cohort."""
    if evaluation.empty:
        return evaluation
    if not evaluation[ROW_ID].is_monotonic_increasing:
        evaluation = evaluation.sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    for name in evaluation.columns:
        column = evaluation[name]
        if isinstance(column.dtype, pd.CategoricalDtype) and name != "band":
            order = level_order(list(column.cat.categories))
            if order != list(column.cat.categories):
                evaluation[name] = column.cat.reorder_categories(order)
    return evaluation


def tally_rows(
    period: npt.NDArray[np.object_],
    eligible: npt.NDArray[np.bool_],
    band: pd.Categorical[Any],
    outcome: FloatArray,
) -> pd.DataFrame:
    """Row counts by period, status, band (`none` when ineligible) and outcome (-1: unknown)."""
    period_codes, periods = pd.factorize(period)
    band_position = band.codes.astype(np.int64) + 1
    outcome_codes = np.where(np.isnan(outcome), -1, outcome).astype(np.int64) + 1
    key = ((period_codes * 2 + eligible) * 4 + band_position) * 3 + outcome_codes
    counts = np.bincount(key, minlength=len(periods) * 24)
    found = np.flatnonzero(counts)
    rest, outcome_found = np.divmod(found, 3)
    rest, band_found = np.divmod(rest, 4)
    period_found, scored = np.divmod(rest, 2)
    return pd.DataFrame(
        {
            "period": np.asarray(periods, dtype=object)[period_found],
            "status": np.where(scored == 1, SCORED, INELIGIBLE).astype(object),
            "band": np.asarray(["none", *BANDS], dtype=object)[band_found],
            "outcome": outcome_found - 1,
            "count": counts[found],
        }
    )


@dataclass
class PassSummary:
    """What one scoring pass leaves for the finishing steps, whatever the engine."""

    rows: int
    tally: pd.DataFrame  # period, status, band, outcome, count
    exclusions: Counter[str]
    warnings: Counter[str]
    drift_counts: pd.DataFrame
    evaluation: pd.DataFrame  # slim frame of scored rows (evaluation_rows)
    sample: pd.DataFrame  # canonical values of some scored rows, for the report's SHAP plot
    timings: dict[str, float]
    scores_files: list[Path]


class Accumulator:
    """Per-model running summaries of a local replay."""

    def __init__(self, model: ReplayModel, expected_rows: int | None, seed: int) -> None:
        self.model = model
        self.expected_rows = expected_rows
        self.rng = np.random.default_rng(seed)
        self.rows = 0
        self.tallies: list[pd.DataFrame] = []
        self.exclusions: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.counts: list[pd.DataFrame] = []
        self.evaluation: list[pa.Table] = []
        self.samples: list[pd.DataFrame] = []
        self.timings: dict[str, float] = {}

    def add(
        self,
        frame: pd.DataFrame,
        scored: ScoredChunk,
        period: npt.NDArray[np.object_],
        lab: npt.NDArray[np.object_],
    ) -> None:
        started = time.perf_counter()
        spec = self.model.predictor.spec
        eligible = scored.eligible
        outcome = (
            pd.to_numeric(frame[spec.outcome.column], errors="coerce").to_numpy(np.float64)
            if spec.outcome.column in frame
            else np.full(len(frame), np.nan)
        )
        self.tallies.append(tally_rows(period, eligible, scored.band, outcome))
        self.exclusions.update(scored.exclusions)
        self.warnings.update(scored.warnings)
        if len(self.counts) >= 16:  # keep the running counts small
            self.counts = [drift.combine_counts(self.counts)]
        self.counts.append(
            drift.bin_counts(
                scored.features,
                self.model.predictor.reference,
                period[eligible],
                lab[eligible],
                score=scored.probability[eligible],
            )
        )
        slim = evaluation_rows(frame, scored, spec, self.rows)
        self.evaluation.append(pa.Table.from_pandas(slim, preserve_index=False))
        self.samples.append(self._sample(scored, len(frame)))
        self.rows += len(frame)
        scored.timings["summaries"] = time.perf_counter() - started
        for stage, seconds in scored.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def _sample(self, scored: ScoredChunk, n: int) -> pd.DataFrame:
        rows = np.flatnonzero(scored.eligible)
        total = self.expected_rows or n
        take = min(len(rows), math.ceil(EXPLAINED_SAMPLE_ROWS * n / max(total, 1)))
        chosen = np.sort(self.rng.choice(rows, size=take, replace=False)) if take else rows[:0]
        return scored.values.iloc[chosen].reset_index(drop=True)

    def summary(self, scores_files: list[Path]) -> PassSummary:
        evaluation = pd.DataFrame()
        if self.evaluation:
            table = pa.concat_tables(self.evaluation, promote_options="permissive")
            self.evaluation = []  # convert without holding both copies
            evaluation = table.to_pandas(self_destruct=True, split_blocks=True)
            del table
        tally = (
            pd.concat(self.tallies, ignore_index=True)
            .groupby(["period", "status", "band", "outcome"])["count"]
            .sum()
            .reset_index()
            if self.tallies
            else pd.DataFrame(columns=["period", "status", "band", "outcome", "count"])
        )
        samples = [s for s in self.samples if len(s)]
        return PassSummary(
            rows=self.rows,
            tally=tally,
            exclusions=self.exclusions,
            warnings=self.warnings,
            drift_counts=drift.combine_counts(self.counts),
            evaluation=evaluation,
            sample=pd.concat(samples, ignore_index=True) if samples else pd.DataFrame(),
            timings=dict(self.timings),
            scores_files=scores_files,
        )
