"""JSON the pipeline writes (metrics, model cards, manifests): one sanitiser and one writer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def json_safe(value: Any, *, nan_as_null: bool = False) -> Any:
    """`value` as plain JSON types: mappings as dicts with text keys, sequences, sets and arrays
    as lists, numpy scalars as Python numbers, pandas' missing values as None, anything else as
    its text. Non-finite floats stay (`allow_nan` JSON, as MLflow logs them) unless
    `nan_as_null`, which makes them None (strict JSON, as the replay's files hold them)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, nan_as_null=nan_as_null) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        items = value.tolist() if isinstance(value, np.ndarray) else value
        return [json_safe(v, nan_as_null=nan_as_null) for v in items]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and nan_as_null and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON (NaN allowed; anything else unknown as its text)."""
    path.write_text(json.dumps(data, indent=1, allow_nan=True, default=str))
    return path
