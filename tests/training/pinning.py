"""A trained model pinned for replay from a saved predictor folder, without a registry: the same
pinning step (`training.replay.options.pin_folder`) as a registered version's."""

from __future__ import annotations

from pathlib import Path

from training.fit.train import TrainResult
from training.replay.options import ReplayModel, pin_folder


def pinned(result: TrainResult, folder: Path, version: str = "7") -> ReplayModel:
    """`result`'s served predictor saved to `folder`, loaded back and pinned as `version`."""
    saved = result.predictor.save(folder)
    name = result.spec.name
    return pin_folder(
        saved,
        requested=f"{name}/{version} (test)",
        name=name,
        version=version,
        run_id=None,
        model_uri=str(saved),
    )
