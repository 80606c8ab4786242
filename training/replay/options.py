"""What a replay is asked to do (`ReplayOptions`) and the model versions it pins: each reference
(`NAME@ALIAS` or `NAME/VERSION`) is resolved once, downloaded and loaded verified, and recorded
by name, version, run id, booster SHA-256 and catalogue version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from models.predictor import META_FILE, TriagePredictor
from models.spec import DateRange, ModelSpec
from training.cohorts.reader import CohortError, Source
from training.registry.store import (
    PREDICTOR_SUBDIR,
    Tracking,
    download_model,
    parse_model_ref,
    resolve_version,
)

FloatArray = npt.NDArray[np.float64]
Engine = Literal["local", "spark"]
ProgressCallback = Callable[[int], None]
DEFAULT_CHUNK_ROWS = 200_000
PERIOD_NAMES = ("train", "calibrate", "evaluate")


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
    period: str | None = None  # a spec period (train | calibrate | evaluate) to restrict to
    start: date | None = None  # only index days on or after this (with `end`: a custom period)
    end: date | None = None  # only index days on or before this

    def date_range(self, spec: ModelSpec) -> DateRange | None:
        """The index days to replay: a period of the (first) model's spec, or `start`..`end`
        (either open), or None for every row."""
        if self.period is not None:
            if self.period not in PERIOD_NAMES:
                raise CohortError(
                    f"unknown period {self.period!r}; the spec's periods are {list(PERIOD_NAMES)}"
                )
            return cast(DateRange, getattr(spec.split, self.period))
        if self.start is None and self.end is None:
            return None
        try:
            return DateRange(start=self.start or date.min, end=self.end or date.max)
        except ValueError:
            raise CohortError(f"--from {self.start} is after --to {self.end}") from None


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
    folder: Path  # the local predictor folder (booster.txt or spline.json + predictor.json)

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
    return pin_folder(
        local / PREDICTOR_SUBDIR,
        requested=ref,
        name=name,
        version=str(version.version),
        run_id=version.run_id,
        model_uri=f"models:/{name}/{version.version}",
        num_threads=num_threads,
    )


def pin_folder(
    folder: Path,
    *,
    requested: str,
    name: str,
    version: str,
    run_id: str | None,
    model_uri: str,
    num_threads: int = 0,
) -> ReplayModel:
    """A saved predictor folder loaded verified and pinned: its booster's SHA-256 (from the
    folder's metadata), catalogue and spec digest beside where it came from."""
    predictor = TriagePredictor.load(folder, num_threads=num_threads)
    meta = json.loads((folder / META_FILE).read_text())
    pinned = PinnedModel(
        requested=requested,
        name=name,
        version=version,
        run_id=run_id,
        model_uri=model_uri,
        booster_sha256=str(meta["booster_sha256"]),
        catalogue_version=predictor.catalogue.version,
        catalogue_checksum=predictor.catalogue.checksum,
        spec_digest=predictor.spec.digest,
        folder=folder,
    )
    return ReplayModel(pinned, predictor)


# --- the cohort ---------------------------------------------------------------------------------


def check_columns(columns: Sequence[str], spec: ModelSpec) -> None:
    """Fail early, naming the column, when the cohort cannot be replayed through this model: the
    patient id, the index date, the model's demographics (without one, no row is eligible) and
    the pathway when the model needs it."""
    needed = ["patient_id", spec.split.date_column, *spec.features.demographics]
    if spec.cohort.pathways or "pathway" in spec.features.context:
        needed.append("pathway")
    missing = [c for c in needed if c not in columns]
    if missing:
        hints = ", ".join(f"YOUR_COLUMN: {{code: {c}}}" for c in missing)
        raise CohortError(
            f"the cohort lacks columns {missing} needed to replay {spec.name}; if yours have "
            f"other names, map them in the spec: column_map: {{{hints}}}"
        )


def replay_seed(models: Sequence[ReplayModel], options: ReplayOptions) -> int:
    """The seed of a replay's bootstraps and samples: the option, else the first model's spec's."""
    return options.seed if options.seed is not None else models[0].predictor.spec.seed
