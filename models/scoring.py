"""The frame scorer: every row of a wide frame through one model, the vectorised twin of
`TriagePredictor.score` (the per-request path of the HTTP API).

    column map -> catalogue validation (units, limits, eligibility) -> pathway routing
    -> model inputs of the eligible rows -> probability -> band -> warnings (-> contributions)

Replay (local and Spark) and the MLflow pyfunc score through `score_frame`; the API scores one
record at a time through `TriagePredictor.score`, with the same validation rules, the same routing
policy (`models.routing`), the same model warnings and the same booster call, so both give the
same numbers for the same patient (tested exactly). Nothing is dropped: a row that cannot be
scored keeps its coded reasons (`code:field`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.columns import map_columns
from models.features import stack_columns
from models.frame_validation import FrameValidation, validate_frame
from models.predictor import MODEL_WARNINGS, TriagePredictor, spec_feature_columns
from models.routing import pathway_refusals
from models.triage import band_codes
from models.validation import ISSUE_CODES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Every warning a row can carry: the validation's and the model's, as one sorted vocabulary.
WARNING_CODES: tuple[str, ...] = tuple(
    sorted(
        {*(c for c, (severity, _) in ISSUE_CODES.items() if severity == "warning"), *MODEL_WARNINGS}
    )
)


@dataclass
class FrameScores:
    """One frame through one model. Per-row arrays cover every row; `rows` are the eligible
    rows' positions, and the model inputs and contributions cover those rows only."""

    values: pd.DataFrame  # canonical values (+ the pathway) of every row
    eligible: npt.NDArray[np.bool_]
    rows: IntArray  # positions of the eligible (scored) rows
    inputs: dict[str, FloatArray]  # model inputs of the eligible rows, by feature
    probability: FloatArray  # NaN where not scored
    band_codes: npt.NDArray[np.int8]  # position in BANDS; -1 where not scored
    warning_rows: IntArray  # (row, code) pairs: each warning of each row,
    warning_codes: IntArray  # as positions in WARNING_CODES
    reason_rows: IntArray  # (row, reason) pairs: `code:field` of each error and refusal
    reason_labels: npt.NDArray[np.object_]
    base: FloatArray | None = None  # with `explain`: calibrated log-odds, eligible rows
    contributions: FloatArray | None = None  # with `explain`: eligible rows x features

    def reason_codes(self) -> pd.DataFrame:
        """The refused rows' error codes: one row per distinct (row, code), each `code:field`
        reason cut to its code."""
        codes = pd.Series(self.reason_labels, dtype=object).str.split(":", n=1).str[0]
        return pd.DataFrame({"row": self.reason_rows, "code": codes}).drop_duplicates()


@contextmanager
def timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the seconds the block takes to `timings[stage]` (nothing when `timings` is None)."""
    started = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def validate_rows(
    predictor: TriagePredictor, frame: pd.DataFrame
) -> tuple[FrameValidation, IntArray, npt.NDArray[np.object_]]:
    """The model's column map, catalogue and eligibility on a wide frame, and the rows refused
    for their pathway. The canonical values carry the pathway along (a model input)."""
    spec = predictor.spec
    mapped, units = map_columns(frame, spec)
    checked = validate_frame(
        mapped, catalogue=spec.catalogue, eligibility=spec.eligibility, units=units
    )
    if "pathway" in mapped:  # the cohort's own pathway column too, once mapped
        pathway = mapped["pathway"]
        # A categorical maps its few categories to the model's codes, not every row.
        categorical = isinstance(pathway.dtype, pd.CategoricalDtype)
        checked.values["pathway"] = pathway.array if categorical else pathway.to_numpy(object)
    return checked, *pathway_refusals(mapped, spec)


def model_warning_rows(
    predictor: TriagePredictor, values: pd.DataFrame, eligible: npt.NDArray[np.bool_]
) -> list[tuple[IntArray, str]]:
    """The warnings `TriagePredictor.score` adds, for the eligible rows: analytes missing, and
    values beyond the training range (`TriagePredictor.soft_limits`). Whole columns are
    compared, then the eligible rows kept: cheaper than picking rows per column."""
    n = len(values)
    missing = np.zeros(n, dtype=bool)
    for code in predictor.spec.features.analytes:
        if code not in values:
            missing[:] = True
            break
        missing |= np.isnan(values[code].to_numpy(np.float64))
    outside = np.zeros(n, dtype=bool)
    for code, (low, high) in predictor.soft_limits.items():
        if code in values:
            v = values[code].to_numpy(np.float64)
            with np.errstate(invalid="ignore"):
                outside |= (v < low) | (v > high)
    return [
        (np.flatnonzero(missing & eligible), "analyte_missing"),
        (np.flatnonzero(outside & eligible), "outside_training_range"),
    ]


def score_frame(
    predictor: TriagePredictor,
    frame: pd.DataFrame,
    *,
    explain: bool = False,
    scratch: FloatArray | None = None,
    timings: dict[str, float] | None = None,
) -> FrameScores:
    """Validate, route, score and (optionally) explain every row of a wide frame.

    `frame` has the cohort's columns: analytes by catalogue code (or by the spec's column map),
    optional `{code}_unit` columns, age, sex and, for models that need it, pathway. `scratch`
    (see `stack_columns`) holds the stacked model inputs, so that a pass over many frames fills
    one buffer instead of faulting in a new one of tens of MB each time; `timings` collects the
    seconds spent per stage (validate, predict, warnings, explain).
    """
    n = len(frame)
    with timed(timings, "validate"):
        checked, refused_rows, refused_labels = validate_rows(predictor, frame)
        # Required inputs (models.required): derived in place where exact, else the row refused.
        completion = predictor.required.complete_frame(checked.values, checked.issues)
        refused_rows = np.concatenate([refused_rows, completion.refused_rows])
        refused_labels = np.concatenate([refused_labels, completion.refused_labels])
        eligible = checked.eligible.copy()
        eligible[refused_rows] = False
        rows = np.flatnonzero(eligible).astype(np.int64)
    with timed(timings, "predict"):
        inputs = spec_feature_columns(predictor.spec, checked.values, rows)
        x = stack_columns(inputs, len(rows), scratch)
        probability = np.full(n, np.nan)
        probability[rows] = predictor.probability(x)
        codes = np.full(n, -1, dtype=np.int8)
        codes[rows] = band_codes(probability[rows], predictor.thresholds)
    with timed(timings, "warnings"):
        issues = checked.issues
        errors = issues["severity"].to_numpy() == "error"
        positions = issues["row"].to_numpy(np.int64)
        reason_rows = np.concatenate([positions[errors], refused_rows])
        reason_labels = np.concatenate(
            [
                (issues["code"][errors] + ":" + issues["field"][errors]).to_numpy(dtype=object),
                refused_labels,
            ]
        )
        found = pd.Categorical(issues["code"][~errors], categories=list(WARNING_CODES)).codes
        pairs = [(positions[~errors], found.astype(np.int64))]
        derived = completion.derived_rows
        pairs.append((derived, np.full(len(derived), WARNING_CODES.index("analyte_derived"))))
        for warned, code in model_warning_rows(predictor, checked.values, eligible):
            pairs.append((warned, np.full(len(warned), WARNING_CODES.index(code), np.int64)))
    scores = FrameScores(
        values=checked.values,
        eligible=eligible,
        rows=rows,
        inputs=inputs,
        probability=probability,
        band_codes=codes,
        warning_rows=np.concatenate([r for r, _ in pairs]),
        warning_codes=np.concatenate([c for _, c in pairs]),
        reason_rows=reason_rows,
        reason_labels=reason_labels,
    )
    if explain:
        with timed(timings, "explain"):
            scores.base, scores.contributions = predictor.explain_matrix(x)
    return scores
