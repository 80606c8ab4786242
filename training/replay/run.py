"""Cohort replay: what a pinned model version would have said about past patients, at the time,
and how good it would have been.

    pin the model(s) -> open the cohort -> per chunk: validate -> score (-> explain) -> write
    -> drift against the training reference -> evaluation and what would have happened
    -> side-by-side comparison -> report, metrics, manifest

- **Pinned.** `NAME@ALIAS` or `NAME/VERSION` is resolved once, at the start, to a version number;
  the manifest records name, version, run id, the booster's SHA-256 and the catalogue version.
- **As of the index date.** A long cohort (lab results + index events) goes through
  `training.asof.as_of_wide` (via `train.load_cohort`): per event and analyte, the latest result
  within the window before the index date, never one on or after it.
- **Nothing dropped.** Every cohort row gets one output row per model: `scored` (probability,
  band, warning codes) or `ineligible` with its coded reasons (`code:field`, e.g.
  `missing_required_panel:fbc`). A model that needs the pathway refuses a missing or unknown one
  as the API does (`missing_pathway`, `invalid_pathway`), and a row outside the spec's pathways
  is `outside_population:pathway` (training's population). The exclusion summary counts
  ineligible rows by code.
- **The API's numbers.** Rows go through `validate_frame` with the model's catalogue, eligibility
  and column map, then `TriagePredictor.probability` / `explain_matrix` and `band_codes`: the
  vectorised twins of `TriagePredictor.score`, the per-request path of the HTTP API (tested
  equal exactly).
- **Scale.** A wide Parquet cohort is streamed in chunks (`ParquetFile.iter_batches`) and the
  scores are written chunk by chunk (`ParquetWriter`), so memory stays flat whatever the size;
  what is kept across chunks is small (bin counts for drift, tallies) plus, for the evaluation,
  a slim frame of the scored rows (ids, date, outcome, probability, band, subgroups). A long
  cohort is loaded whole for the as-of join, then scored in chunks. CSV is read in chunks.
- **Deterministic.** Score rows follow the cohort's order; the Parquet files carry no timestamps
  (timings go to the manifest only), so replaying twice gives byte-identical score files.

The Spark engine (`training.spark_replay`) runs the same `score_chunk` per partition.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.predictor import META_FILE, TriagePredictor
from models.scoring import WARNING_CODES, score_frame, timed
from models.spec import ModelSpec
from models.triage import BANDS
from training.cohorts.reader import CohortError, CohortSource, open_cohort
from training.evaluation import drift
from training.evaluation.metrics import auc_ci
from training.evaluation.model import evaluate_model, explanation_sample, pair_predictions
from training.evaluation.report import build_model_card, render_report
from training.json_files import json_safe, write_json
from training.provenance import code_version, files_sha256
from training.registry.store import (
    PREDICTOR_SUBDIR,
    Tracking,
    download_model,
    parse_model_ref,
    resolve_version,
)

FloatArray = npt.NDArray[np.float64]
Engine = Literal["local", "spark"]
Source = Literal["auto", "wide", "long"]
ProgressCallback = Callable[[int], None]

KEY_COLUMNS = ("patient_id", "referral_id")
SCORED, INELIGIBLE = "scored", "ineligible"
CONTRIBUTION_PREFIX = "contrib__"
DEFAULT_CHUNK_ROWS = 200_000
SAMPLE_ROWS = 2000  # rows explained for the report's SHAP plot
ROW_ID = "_row"  # position of a row in the cohort: pairs the models of a side-by-side replay
MANIFEST_FILE = "manifest.json"
DRIFT_FILE = "drift.parquet"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
GREEN_CANCERS_FILE = "green_cancers.parquet"
SEXES = ("female", "male")
SUBGROUP_TEXT = ("deprivation", "ethnicity", "lab", "pathway", "cancer_site")
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}
BAND_TYPE = pd.CategoricalDtype(list(BANDS))


# --- options and the pinned model -----------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how. `seed=None` takes the (first) model spec's seed."""

    cohort: Path
    out: Path
    window_days: int = 90
    source: Source = "auto"  # for a folder holding both a wide table and long tables
    explain: bool = False
    engine: Engine = "local"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    n_boot: int = 200
    seed: int | None = None
    num_threads: int = 0  # 0: all cores for batch scoring
    spark_master: str | None = None  # None: spark-submit's master, else local[*]


@dataclass(frozen=True)
class PinnedModel:
    """A registered model version, resolved once at the start of a replay and used throughout."""

    requested: str
    name: str
    version: str
    run_id: str | None
    model_uri: str
    booster_sha256: str
    catalogue_version: str
    catalogue_checksum: str
    spec_digest: str
    folder: Path  # the local predictor folder (booster.txt + predictor.json)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def stem(self) -> str:
        return f"{self.name}_v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The pin as recorded in the manifest (without the local folder)."""
        return {
            "requested": self.requested,
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "booster_sha256": self.booster_sha256,
            "catalogue_version": self.catalogue_version,
            "catalogue_checksum": self.catalogue_checksum,
            "spec_digest": self.spec_digest,
        }


@dataclass(frozen=True)
class ReplayModel:
    pinned: PinnedModel
    predictor: TriagePredictor


def pin_model(tracking: Tracking, ref: str, dest: Path, *, num_threads: int = 0) -> ReplayModel:
    """Resolve `NAME@ALIAS` or `NAME/VERSION` once, download that version and load it verified."""
    name, alias_or_version = parse_model_ref(ref)
    version = resolve_version(tracking.client, name, alias_or_version)
    local = download_model(tracking.client, version, dest / f"{name}-v{version.version}")
    folder = local / PREDICTOR_SUBDIR
    predictor = TriagePredictor.load(folder, num_threads=num_threads)
    meta = json.loads((folder / META_FILE).read_text())
    pinned = PinnedModel(
        requested=ref,
        name=name,
        version=str(version.version),
        run_id=version.run_id,
        model_uri=f"models:/{name}/{version.version}",
        booster_sha256=str(meta["booster_sha256"]),
        catalogue_version=predictor.catalogue.version,
        catalogue_checksum=predictor.catalogue.checksum,
        spec_digest=predictor.spec.digest,
        folder=folder,
    )
    return ReplayModel(pinned, predictor)


# --- the cohort ---------------------------------------------------------------------------------


def check_columns(columns: Sequence[str], spec: ModelSpec) -> None:
    """Fail early, naming the column, when the cohort cannot be replayed through this model."""
    needed = ["patient_id", spec.split.date_column]
    if spec.cohort.pathways or "pathway" in spec.features.context:
        needed.append("pathway")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise CohortError(f"the cohort lacks columns {missing} needed to replay {spec.name}")


# --- one chunk through one model ------------------------------------------------------------------


@dataclass
class ScoredChunk:
    """One chunk through one model: the score rows and what the summaries need."""

    table: pa.Table  # rows of the score file, in the chunk's order
    values: pd.DataFrame  # canonical values (+ pathway) of every row
    features: pd.DataFrame  # model inputs of the eligible rows
    eligible: npt.NDArray[np.bool_]
    probability: FloatArray  # NaN where ineligible
    band: pd.Categorical[Any]  # of BANDS; missing where ineligible
    exclusions: Counter[str]  # ineligible rows by error code
    warnings: Counter[str]  # rows by warning code
    timings: dict[str, float] = field(default_factory=dict)


def key_type(dtype: Any) -> pa.DataType:
    """Arrow type of a key column: integers stay int64, anything else becomes text."""
    return pa.int64() if pd.api.types.is_integer_dtype(dtype) else pa.string()


def scores_schema(
    predictor: TriagePredictor, *, explain: bool, keys: Mapping[str, pa.DataType]
) -> pa.Schema:
    """The score file's columns: keys, index_date, model, version, status, probability, band,
    warnings (codes), reasons (`code:field`), and with explanations `base` + one column per
    feature of contributions in calibrated log-odds (`contrib__{feature}`)."""
    fields = [pa.field(name, kind) for name, kind in keys.items()]
    fields += [
        pa.field("index_date", pa.date32()),
        pa.field("model", pa.string()),
        pa.field("version", pa.string()),
        pa.field("status", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("band", pa.string()),
        pa.field("warnings", pa.list_(pa.string())),
        pa.field("reasons", pa.list_(pa.string())),
    ]
    if explain:
        fields.append(pa.field("base", pa.float64()))
        fields += [
            pa.field(f"{CONTRIBUTION_PREFIX}{name}", pa.float64())
            for name in predictor.feature_names
        ]
    return pa.schema(fields)


def _code_lists(
    rows: npt.NDArray[np.int64], codes: npt.NDArray[np.int64], n: int
) -> tuple[pa.Array, Counter[str]]:
    """One sorted list of distinct warning codes per row from (row, position in WARNING_CODES)
    pairs, and rows per code: a small boolean matrix instead of sorting strings."""
    present = np.zeros((n, len(WARNING_CODES)), dtype=bool)
    known = codes >= 0  # every warning code is in the vocabulary; never index with -1
    present[rows[known], codes[known]] = True
    code_of = np.nonzero(present)[1]  # row-major: by row, then code
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(present.sum(axis=1))
    dictionary = pa.array(list(WARNING_CODES), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(code_of.astype(np.int32)), dictionary)
    per_code = present.sum(axis=0)
    counts = Counter({WARNING_CODES[i]: int(c) for i, c in enumerate(per_code) if c})
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string())), counts


def _label_lists(
    rows: npt.NDArray[np.int64], labels: npt.NDArray[np.object_], n: int
) -> tuple[pa.Array, Counter[str]]:
    """One sorted list of distinct labels per row from (row, label) pairs, and rows per label."""
    if len(rows) == 0:
        offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array([], pa.string())), Counter()
    codes, vocabulary = pd.factorize(labels, sort=True)
    width = len(vocabulary)
    key = np.unique(rows.astype(np.int64) * width + codes)
    row_of, code_of = np.divmod(key, width)
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.bincount(row_of, minlength=n))
    dictionary = pa.array(np.asarray(vocabulary, dtype=object), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(code_of.astype(np.int32)), dictionary)
    per_label = np.bincount(code_of, minlength=width)
    counts = Counter({str(vocabulary[i]): int(c) for i, c in enumerate(per_label) if c})
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string())), counts


def score_chunk(
    predictor: TriagePredictor,
    frame: pd.DataFrame,
    *,
    explain: bool = False,
    keys: Mapping[str, pa.DataType] | None = None,
    version: str = "",
    scratch: FloatArray | None = None,
) -> ScoredChunk:
    """Score one wide chunk with `models.scoring.score_frame` (ineligible rows are kept) and lay
    the result out as rows of the score file. `scratch` is passed on (see `score_frame`)."""
    spec, n = predictor.spec, len(frame)
    timings: dict[str, float] = {}
    scored = score_frame(predictor, frame, explain=explain, scratch=scratch, timings=timings)
    eligible, rows, codes = scored.eligible, scored.rows, scored.band_codes
    band = pd.Categorical.from_codes(codes, dtype=BAND_TYPE)
    # The columns themselves (no copy), not views of `x`, which the next chunk overwrites.
    features = pd.DataFrame(scored.inputs, index=scored.values.index[rows], copy=False)
    with timed(timings, "assemble"):
        warnings, warning_counts = _code_lists(scored.warning_rows, scored.warning_codes, n)
        reasons, _ = _label_lists(scored.reason_rows, scored.reason_labels, n)
        exclusions = _exclusions(scored.reason_rows, scored.reason_labels)
        if keys is None:
            keys = {k: key_type(frame[k].dtype) for k in KEY_COLUMNS if k in frame}
        columns: dict[str, pa.Array] = {k: _key_array(frame[k], t) for k, t in keys.items()}
        columns |= {
            "index_date": _date_array(frame[spec.split.date_column]),
            "model": _text_array(np.zeros(n, dtype=np.int8), [spec.name]),
            "version": _text_array(np.zeros(n, dtype=np.int8), [version]),
            "status": _text_array(eligible.astype(np.int8), [INELIGIBLE, SCORED]),
            "probability": pa.array(scored.probability, pa.float64(), mask=~eligible),
            "band": _text_array(codes, BANDS),
            "warnings": warnings,
            "reasons": reasons,
        }
        if scored.base is not None and scored.contributions is not None:
            columns |= _explanation_columns(
                predictor, scored.base, scored.contributions, rows, eligible
            )
    schema = scores_schema(predictor, explain=explain, keys=keys)
    return ScoredChunk(
        table=pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema),
        values=scored.values,
        features=features,
        eligible=eligible,
        probability=scored.probability,
        band=band,
        exclusions=exclusions,
        warnings=warning_counts,
        timings=timings,
    )


def _exclusions(rows: npt.NDArray[np.int64], labels: npt.NDArray[np.object_]) -> Counter[str]:
    """Ineligible rows per error code (a row with two reasons of one code counts once)."""
    if len(rows) == 0:
        return Counter()
    codes = pd.Series(labels).str.split(":", n=1).str[0]
    pairs = pd.DataFrame({"row": rows, "code": codes}).drop_duplicates()
    return Counter({str(k): int(v) for k, v in pairs["code"].value_counts().items()})


def _text_array(codes: npt.NDArray[np.int8], names: Sequence[str]) -> pa.Array:
    """A plain string column from codes into `names` (-1: null), built by Arrow in C++."""
    indices = pa.array(codes, pa.int8(), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(names), pa.string())).cast(
        pa.string()
    )


def _key_array(column: pd.Series, kind: pa.DataType) -> pa.Array:
    if pa.types.is_integer(kind):
        return pa.array(column.to_numpy(), pa.int64())
    return pa.array(column.astype("string"), pa.string())


def _date_array(column: pd.Series) -> pa.Array:
    """Dates (date32) from a date or timestamp column; time of day is dropped."""
    stamps = pd.to_datetime(column, errors="coerce")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return pa.array(stamps.to_numpy(dtype="datetime64[ns]")).cast(pa.date32())


def _explanation_columns(
    predictor: TriagePredictor,
    base: FloatArray,
    contributions: FloatArray,
    rows: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> dict[str, pa.Array]:
    """`base` and `contrib__{feature}` (calibrated log-odds), null where not scored; `base` and
    `contributions` cover the eligible rows (at `rows`)."""
    n = len(eligible)
    out: dict[str, pa.Array] = {}
    full = np.full(n, np.nan)
    full[rows] = base
    out["base"] = pa.array(full, pa.float64(), mask=~eligible)
    for j, name in enumerate(predictor.feature_names):
        full = np.full(n, np.nan)
        full[rows] = contributions[:, j]
        out[f"{CONTRIBUTION_PREFIX}{name}"] = pa.array(full, pa.float64(), mask=~eligible)
    return out


# --- what the summaries keep from each chunk ------------------------------------------------------


def lab_labels(frame: pd.DataFrame) -> npt.NDArray[np.object_]:
    """Each row's lab as text (`unknown` when missing; `all` when the cohort has no lab column)."""
    if "lab" not in frame:
        return np.full(len(frame), drift.ALL, dtype=object)
    codes, labs = pd.factorize(frame["lab"])
    names = np.array([*(str(lab) for lab in labs), "unknown"], dtype=object)
    return names[codes]  # code -1 (missing) picks the last name


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
    sample: pd.DataFrame  # canonical values of up to SAMPLE_ROWS scored rows, for the SHAP plot
    timings: dict[str, float]
    scores_files: list[Path]


class _Accumulator:
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
        take = min(len(rows), math.ceil(SAMPLE_ROWS * n / max(total, 1)))
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


def scores_path(out: Path, models: Sequence[ReplayModel]) -> list[Path]:
    """`scores.parquet` for one model; `scores_{name}_v{version}.parquet` for each of two."""
    if len(models) == 1:
        return [out / "scores.parquet"]
    return [out / f"scores_{m.pinned.stem}.parquet" for m in models]


class _ScoreWriter:
    """One model's score file, written in a background thread (pyarrow releases the GIL), one
    table at a time and in order, so that writing overlaps the scoring of the next chunk."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.path, self.pool = path, pool
        self.writer: pq.ParquetWriter | None = None
        self.pending: Future[None] | None = None
        self.waited = 0.0

    def write(self, table: pa.Table) -> None:
        self.wait()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, **PARQUET_OPTIONS)
        self.pending = self.pool.submit(self.writer.write_table, table)

    def wait(self) -> None:
        started = time.perf_counter()
        if self.pending is not None:
            self.pending.result()  # re-raises a failed write here
            self.pending = None
        self.waited += time.perf_counter() - started

    def close(self, schema: pa.Schema) -> None:
        self.wait()
        if self.writer is not None:
            self.writer.close()
        else:  # an empty cohort still gets a (schema-only) score file
            pq.write_table(schema.empty_table(), self.path, **PARQUET_OPTIONS)


def replay_local(
    models: Sequence[ReplayModel],
    cohort: CohortSource,
    options: ReplayOptions,
    progress: ProgressCallback | None = None,
) -> list[PassSummary]:
    """Stream the cohort in chunks through every model, writing each model's scores file."""
    options.out.mkdir(parents=True, exist_ok=True)
    seed = _seed(models, options)
    accumulators = [_Accumulator(m, cohort.n_rows(), seed) for m in models]
    width = max(len(m.predictor.feature_names) for m in models)
    scratch = np.empty(width * options.chunk_rows, dtype=np.float64)  # pages touched on use
    read_seconds, done = 0.0, 0
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as background:
        writers = [_ScoreWriter(path, background) for path in scores_path(options.out, models)]
        chunks = cohort.chunks(options.chunk_rows)
        try:
            started = time.perf_counter()
            frame = next(chunks, None)
            while frame is not None:
                read_seconds += time.perf_counter() - started
                scored = [
                    score_chunk(m.predictor, frame, explain=options.explain,
                                version=m.pinned.version, scratch=scratch)
                    for m in models
                ]  # fmt: skip
                # Read the next chunk and write this one while the summaries are computed (all
                # single-threaded work), not while LightGBM uses every core.
                upcoming = reader.submit(next, chunks, None)
                period = drift.period_labels(frame[models[0].predictor.spec.split.date_column])
                lab = lab_labels(frame)
                for one, accumulator, writer in zip(scored, accumulators, writers, strict=True):
                    writer.write(one.table)
                    accumulator.add(frame, one, period, lab)
                done += len(frame)
                if progress is not None:
                    progress(done)
                started = time.perf_counter()
                frame = upcoming.result()
        finally:
            for model, writer in zip(models, writers, strict=True):
                writer.close(scores_schema(model.predictor, explain=options.explain, keys={}))
    summaries = []
    for accumulator, writer in zip(accumulators, writers, strict=True):
        summary = accumulator.summary([writer.path])
        summary.timings |= {"read": read_seconds, "write": writer.waited}
        summaries.append(summary)
    return summaries


def _seed(models: Sequence[ReplayModel], options: ReplayOptions) -> int:
    return options.seed if options.seed is not None else models[0].predictor.spec.seed


# --- what would have happened, evaluation, comparison ---------------------------------------------


def what_would_have_happened(tally: pd.DataFrame) -> pd.DataFrame:
    """Per period (year) and in total: rows, ineligible, scored, how many would have been ruled
    out (green) or expedited (red), and, with outcomes, the cancers in each band."""
    if tally.empty:
        return pd.DataFrame()
    rows = []
    for period, part in [*tally.groupby("period", sort=True), ("total", tally)]:
        scored = part[part["status"] == SCORED]
        cancer = scored[scored["outcome"] == 1]
        known = scored[scored["outcome"] >= 0]["count"].sum()

        def count(frame: pd.DataFrame, band: str) -> int:
            return int(frame.loc[frame["band"] == band, "count"].sum())

        n_scored = int(scored["count"].sum())
        cancers = int(cancer["count"].sum())
        row: dict[str, Any] = {
            "period": str(period),
            "rows": int(part["count"].sum()),
            "ineligible": int(part.loc[part["status"] == INELIGIBLE, "count"].sum()),
            "scored": n_scored,
            "green (ruled out)": count(scored, "green"),
            "amber": count(scored, "amber"),
            "red (expedited)": count(scored, "red"),
            "green share": count(scored, "green") / n_scored if n_scored else math.nan,
            "red share": count(scored, "red") / n_scored if n_scored else math.nan,
        }
        if known:
            row |= {
                "cancers": cancers,
                "cancers green": count(cancer, "green"),
                "cancers red": count(cancer, "red"),
                "cancers missed by rule-out (share)": count(cancer, "green") / cancers
                if cancers
                else math.nan,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def green_cancers(evaluation: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Every cancer that would have been banded green: ids, date, period, site, probability."""
    outcome = spec.outcome.column
    if evaluation.empty or outcome not in evaluation:
        return pd.DataFrame()
    rows = evaluation[(evaluation[outcome] == 1) & (evaluation["band"] == "green")]
    columns = [c for c in ("patient_id", "referral_id", spec.split.date_column, "period",
                           "cancer_site", "pathway", "probability") if c in rows]  # fmt: skip
    out = rows[columns].reset_index(drop=True)
    for column in ("period", "cancer_site", "pathway"):
        if column in out:
            out[column] = out[column].astype("string")
    return out


def green_cancers_by_site(cancers: pd.DataFrame) -> pd.DataFrame:
    """Green-banded cancers counted by period and site (site `unknown` when not recorded)."""
    if cancers.empty:
        return pd.DataFrame(columns=["period", "cancer_site", "cancers banded green"])
    site = (
        cancers["cancer_site"] if "cancer_site" in cancers else pd.Series("unknown", cancers.index)
    )
    frame = pd.DataFrame({"period": cancers["period"], "cancer_site": site.fillna("unknown")})
    counts = frame.groupby(["period", "cancer_site"]).size().rename("cancers banded green")
    return counts.reset_index()


def evaluate_replay(
    evaluation: pd.DataFrame, predictor: TriagePredictor, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """The training evaluation (`train.evaluate_model`) on the scored rows with a known outcome;
    None when the cohort has no outcome or only one class."""
    outcome = predictor.spec.outcome.column
    if evaluation.empty or outcome not in evaluation:
        return None
    spec = predictor.spec
    # Only what the evaluation reads: every copy it makes of a national cohort costs memory.
    wanted = ["patient_id", spec.split.date_column, "probability", "true_risk", "age",
              *(c for c in spec.subgroups if c != "age_band")]  # fmt: skip
    rows = evaluation[[outcome, *(c for c in dict.fromkeys(wanted) if c in evaluation)]]
    known = rows[outcome].notna().to_numpy()
    if not known.all():
        rows = rows[known].reset_index(drop=True)
    if rows.empty or rows[outcome].nunique() < 2:
        return None
    rows = rows.assign(**{outcome: rows[outcome].to_numpy().astype(np.int64)})
    return evaluate_model(
        rows, rows["probability"].to_numpy(np.float64), predictor.thresholds,
        predictor.calibration, predictor.spec, n_boot, seed,
    )  # fmt: skip


def compare_models(
    a: pd.DataFrame,
    b: pd.DataFrame,
    labels: tuple[str, str],
    outcome: str,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Side by side on the rows both models scored: band agreement, and with outcomes the AUC
    of each (patient bootstrap CI), the paired AUC difference A - B and the O/E of each."""
    paired = pair_predictions(
        a[[ROW_ID, "patient_id", outcome, "probability", "band"]],
        b[[ROW_ID, "probability", "band"]],
        key=ROW_ID,
        outcome=outcome,
        n_boot=n_boot,
        seed=seed,
    )
    rows = paired.rows
    cross = pd.crosstab(
        pd.Categorical(rows["band"], categories=list(BANDS)),
        pd.Categorical(rows["band_b"], categories=list(BANDS)),
        dropna=False,
    )
    result: dict[str, Any] = {
        "models": list(labels),
        "paired_rows": len(rows),
        "band_agreement": float((rows["band"] == rows["band_b"]).mean()) if len(rows) else math.nan,
        "bands": {
            str(r): {str(c): int(cross.loc[r, c]) for c in cross.columns} for r in cross.index
        },
    }
    if paired.auc_difference is None:
        return result
    known = paired.known
    y = known[outcome].to_numpy(np.int64)
    groups = known["patient_id"].to_numpy()
    p_a, p_b = known["probability"].to_numpy(), known["probability_b"].to_numpy()
    result |= {
        "rows_with_outcome": len(known),
        "events": int(y.sum()),
        "auc": {
            labels[0]: auc_ci(y, p_a, groups, n_boot=n_boot, seed=seed),
            labels[1]: auc_ci(y, p_b, groups, n_boot=n_boot, seed=seed),
        },
        "auc_difference": paired.auc_difference,
        "observed_expected": {
            labels[0]: float(y.sum() / p_a.sum()),
            labels[1]: float(y.sum() / p_b.sum()),
        },
    }
    return result


def comparison_tables(comparison: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The paired comparison as report tables: metrics side by side, and the band cross-table."""
    a, b = comparison["models"]
    tables: dict[str, pd.DataFrame] = {}
    if "auc" in comparison:
        diff = comparison["auc_difference"]
        rows = [
            {
                "model": label,
                "rows (scored by both, with outcome)": comparison["rows_with_outcome"],
                "cancers": comparison["events"],
                "AUC [95% CI]": _interval_text(comparison["auc"][label]),
                "O/E": f"{comparison['observed_expected'][label]:.3f}",
            }
            for label in (a, b)
        ]
        rows.append(
            {
                "model": f"{a} - {b}",
                "rows (scored by both, with outcome)": comparison["rows_with_outcome"],
                "cancers": comparison["events"],
                "AUC [95% CI]": _interval_text(diff, signed=True)
                + " (paired patient-level bootstrap)",
                "O/E": "",
            }
        )
        tables[f"Side by side: {a} vs {b} (paired)"] = pd.DataFrame(rows)
    cross = pd.DataFrame(comparison["bands"]).T
    cross.index = [f"{a}: {band}" for band in cross.index]
    cross.columns = [f"{b}: {band}" for band in cross.columns]
    agreement = comparison["band_agreement"]
    title = f"Band agreement ({agreement:.1%} of {comparison['paired_rows']:,} rows scored by both)"
    tables[title] = cross.reset_index(names="bands")
    return tables


def _interval_text(block: Mapping[str, float], signed: bool = False) -> str:
    form = "+.4f" if signed else ".3f"
    return f"{block['estimate']:{form}} [{block['low']:{form}}, {block['high']:{form}}]"


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
    kinds |= {name: "derived" for name in f.derived}
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


def report_tables(
    outcome: ModelOutcome, comparison: Mapping[str, Any] | None, cohort: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """The replay's own tables for the report: pin, what would have happened, green cancers by
    site, exclusions, drift (flagged rows and the score), and the side-by-side comparison."""
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
        "What would have happened, by year": outcome.what_if,
        "Cancers that would have been banded green, by year and site": green_cancers_by_site(
            outcome.green_cancers
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
        tables |= comparison_tables(comparison)
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
        extra_tables=report_tables(outcome, comparison, cohort),
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
    cohort = open_cohort(options.cohort, options.window_days, options.source)
    options.out.mkdir(parents=True, exist_ok=True)
    clear_outputs(options.out)
    for model in models:
        check_columns(cohort.columns(), model.predictor.spec)
    seed = _seed(models, options)
    started = time.perf_counter()
    if options.engine == "spark":
        from training.replay.spark import replay_spark

        summaries = replay_spark(models, cohort, options, progress)
    else:
        summaries = replay_local(models, cohort, options, progress)
    timings["score"] = time.perf_counter() - started

    started = time.perf_counter()
    outcomes = [finish_model(m, s, options, seed) for m, s in zip(models, summaries, strict=True)]
    comparison = None
    if len(models) == 2:
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
    }
    outputs = [p for o in outcomes for p in o.summary.scores_files]
    outputs += write_outputs(outcomes, models, comparison, info, options, seed)
    timings["report"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    manifest = build_manifest(outcomes, comparison, info, options, seed, outputs, timings)
    write_json(options.out / MANIFEST_FILE, manifest)
    return ReplayResult(options.out, list(outcomes), comparison, manifest)


def clear_outputs(out: Path) -> None:
    """Remove a previous replay's files from `out` (score files, drift, reports, manifest)."""
    for pattern in ("scores*.parquet", "report*.html", DRIFT_FILE, METRICS_FILE, MANIFEST_FILE,
                    GREEN_CANCERS_FILE):  # fmt: skip
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
