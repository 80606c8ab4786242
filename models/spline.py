"""The restricted-cubic-spline logistic model: the served alternative to LightGBM.

`SplineModel` takes the spec's feature matrix (float64, spec order, NaN = missing) and answers the
calls `TriagePredictor` makes of a `lightgbm.Booster`: `predict(x, raw_score=True)` (the margin,
in log-odds), `predict(x, pred_contrib=True)` (per-input contributions plus a last bias column,
adding up to the margin), `feature_name()` and `save_model(path)`; `SplineModel.load(path)` reads
it back. Prediction is plain numpy on coefficients and knots kept as JSON: nothing is pickled.
It is fitted by `training.fit.baseline.fit_spline_model`, which documents the choices.

The model, per input (all of it recorded in the JSON document, `to_dict`):

* a continuous input (analytes, derived features, age; sex, coded 0/1, takes the same path and
  stays linear) is winsorised to [low, high]; when `log`, replaced by log(max(x, floor)); a
  missing value (NaN) then takes `median` (of the transformed training values);
* its terms: `linear` (the transformed value), `spline` number i (Harrell's i-th non-linear
  restricted cubic spline term on its `knots`, `rcs_basis`), `missing` (1 when it was NaN);
* the pathway input: `level` v (1 when the pathway code is v; an unknown or missing pathway has
  none) and `interaction` of level v with a continuous input (level v's indicator times the
  input's transformed value minus its median).

margin = intercept + sum_t coefficient_t * term_t. The contribution of input j is the sum over
its terms of coefficient_t * (term_t - mean_t), mean_t the term's training mean; an interaction
is split half to the pathway and half to the other input; the bias column is intercept +
sum_t coefficient_t * mean_t. They add up to the margin to rounding (~1e-12), so the affine
calibration keeps `base + sum == logit(p)`.

Prediction folds each input's spline terms into its cubes (x - t_i)+^3, one per knot, so it
never builds the term matrix: a row scores in ~30-40 microseconds, a million in 1-2 seconds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

FORMAT = "spline-logistic"
FORMAT_VERSION = 1
PATHWAY = "pathway"
TERM_KINDS = ("linear", "spline", "missing", "level", "interaction")
BLOCK_ROWS = 2048  # rows scored at a time: the temporaries of a block stay in cache


class SplineModelError(ValueError):
    """A spline model document that is corrupt or incompatible, or inputs of the wrong shape."""


def rcs_weights(knots: Sequence[float] | FloatArray) -> FloatArray:
    """(k - 2, k): the weight of each cube (x - t_i)+^3 in each of Harrell's k - 2 non-linear
    restricted cubic spline terms for knots t_1 < ... < t_k, the whole divided by
    (t_k - t_1)^2 so that a term has the units of x. Term j is linear beyond the outer knots."""
    t = np.asarray(knots, np.float64)
    k = len(t)
    weights = np.zeros((max(k - 2, 0), k))
    for j in range(k - 2):
        weights[j, j] = 1.0
        weights[j, k - 2] = -(t[k - 1] - t[j]) / (t[k - 1] - t[k - 2])
        weights[j, k - 1] = (t[k - 2] - t[j]) / (t[k - 1] - t[k - 2])
    if k >= 3:
        weights /= (t[k - 1] - t[0]) ** 2
    return weights


def cubes(z: FloatArray, knots: FloatArray) -> FloatArray:
    """(z - t)+^3 elementwise, z and knots broadcast against each other."""
    u = z - knots
    np.maximum(u, 0.0, out=u)
    out: FloatArray = u * u * u
    return out


def rcs_basis(x: FloatArray, knots: Sequence[float] | FloatArray) -> FloatArray:
    """Harrell's k - 2 non-linear restricted cubic spline terms of x, as (n, k - 2)."""
    x = np.asarray(x, np.float64)
    out: FloatArray = cubes(x[:, None], np.asarray(knots, np.float64)) @ rcs_weights(knots).T
    return out


class SplineModel:
    """A restricted-cubic-spline logistic model answering the Booster calls TriagePredictor
    makes. Construct it from its JSON document (checked; SplineModelError when invalid), with
    `SplineModel.load`, or fit one with `training.fit.baseline.fit_spline_model`."""

    classes_ = np.array([0, 1])  # scikit-learn's calibration wrappers look for it

    def __init__(self, document: dict[str, Any]) -> None:
        document = copy.deepcopy(document)  # what is scored is what is saved
        try:
            self._compile(document)
        except SplineModelError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise SplineModelError(f"not a valid spline model document: {error!r}") from None
        self.document = document

    # --- the Booster interface ------------------------------------------------------------------

    def feature_name(self) -> list[str]:
        return list(self.feature_names)

    def num_feature(self) -> int:
        return len(self.feature_names)

    def predict(
        self,
        data: FloatArray | pd.DataFrame,
        *,
        raw_score: bool = False,
        pred_contrib: bool = False,
        num_threads: int = 0,
        **_: Any,
    ) -> FloatArray:
        """As `lightgbm.Booster.predict`: the probability (uncalibrated), the margin with
        `raw_score`, or (n, k + 1) contributions with the bias last with `pred_contrib`.
        `num_threads` is accepted for the Booster's signature; the work is numpy's."""
        x = self._matrix(data)
        if pred_contrib:
            return self._blocks(x, self._contributions, len(self.feature_names) + 1)
        margin = self._blocks(x, self._margin, 0)
        if raw_score:
            return margin
        out: FloatArray = 1.0 / (1.0 + np.exp(-margin))
        return out

    def decision_function(self, data: FloatArray | pd.DataFrame) -> FloatArray:
        """The margin (log-odds), for Platt scaling."""
        return self.predict(data, raw_score=True)

    def predict_proba(self, data: FloatArray | pd.DataFrame) -> FloatArray:
        p = self.predict(data)
        return np.column_stack([1.0 - p, p])

    def save_model(self, filename: str | Path) -> SplineModel:
        """Write the document as JSON (Python writes floats so that they read back exactly)."""
        Path(filename).write_text(json.dumps(self.document, indent=1, allow_nan=False))
        return self

    @classmethod
    def load(cls, filename: str | Path) -> SplineModel:
        """Read a model written by `save_model`; SplineModelError when corrupt or incompatible."""
        try:
            document = json.loads(Path(filename).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SplineModelError(f"{filename}: not a readable spline model ({error})") from None
        if not isinstance(document, dict):
            raise SplineModelError(f"{filename}: not a spline model document")
        try:
            return cls(document)
        except SplineModelError as error:
            raise SplineModelError(f"{filename}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """A copy of the JSON document."""
        return copy.deepcopy(self.document)

    @property
    def terms(self) -> list[dict[str, Any]]:
        """The terms in design order (grouped by kind, `TERM_KINDS`)."""
        return [dict(t) for t in self._terms]

    def design(self, data: FloatArray | pd.DataFrame) -> FloatArray:
        """Every term's value for rows of inputs, one column per term in `terms` order (what the
        coefficients multiply; fitting builds its design with it)."""
        x = self._matrix(data)
        z, missing = self._transformed(x)
        parts = [z[:, self._lin]]
        for p, i in self._spline:
            knots = self._knots[p]
            weights: FloatArray = rcs_weights(knots)[i : i + 1].T
            parts.append(cubes(z[:, p : p + 1], knots) @ weights)
        parts.append(missing[:, self._miss].astype(np.float64))
        parts.append(self._pathway_terms(x, z))
        return np.concatenate(parts, axis=1)

    # --- compiling the document -----------------------------------------------------------------

    def _compile(self, doc: dict[str, Any]) -> None:
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise SplineModelError(
                f"format {doc.get('format')!r} version {doc.get('format_version')!r}; this code "
                f"reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        names = [str(n) for n in doc["feature_names"]]
        features = doc["features"]
        if [f["name"] for f in features] != names or len(set(names)) != len(names):
            raise SplineModelError("`features` do not match `feature_names` (or repeat a name)")
        self.feature_names = tuple(names)
        kinds = [f["kind"] for f in features]
        if set(kinds) - {"continuous", "pathway"} or kinds.count("pathway") > 1:
            raise SplineModelError(f"feature kinds {kinds}: continuous, and at most one pathway")
        continuous = [j for j, kind in enumerate(kinds) if kind == "continuous"]
        self._cols = np.asarray(continuous, np.intp)
        self._pw = kinds.index("pathway") if "pathway" in kinds else -1
        cont = [features[j] for j in continuous]
        self._low, self._high = _numbers(cont, "low"), _numbers(cont, "high")
        self._median = _numbers(cont, "median")
        logged = [p for p, f in enumerate(cont) if _flag(f["log"])]
        self._log = np.asarray(logged, np.intp)
        self._floor = _numbers([cont[p] for p in logged], "floor")
        self._knots = [np.asarray(_numbers([{"v": v} for v in f["knots"]], "v")) for f in cont]
        if np.any(self._low > self._high) or np.any(self._floor <= 0):
            raise SplineModelError("limits out of order, or a log floor not above 0")
        for f, knots in zip(cont, self._knots, strict=True):
            if len(knots) in (1, 2) or np.any(np.diff(knots) <= 0):
                raise SplineModelError(f"{f['name']}: knots {knots} (none, or 3+ increasing)")
        self._compile_terms(doc["terms"], names, {j: p for p, j in enumerate(continuous)})
        self._intercept = float(_numbers([doc], "intercept")[0])
        self._fold()

    def _compile_terms(
        self, terms: list[dict[str, Any]], names: list[str], position: dict[int, int]
    ) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in TERM_KINDS}
        for term in terms:
            by_kind[term["kind"]].append(term)  # KeyError: an unknown kind
        self._terms = [t for kind in TERM_KINDS for t in by_kind[kind]]
        keys = [(t["kind"], t["feature"], t.get("index"), t.get("level")) for t in self._terms]
        if len(set(keys)) != len(keys):
            raise SplineModelError("a term is listed twice")

        def pos(term: dict[str, Any]) -> int:
            if term["feature"] not in names or names.index(term["feature"]) not in position:
                raise SplineModelError(f"{term}: not on a continuous input")
            return position[names.index(term["feature"])]

        self._lin = np.asarray([pos(t) for t in by_kind["linear"]], np.intp)
        self._spline = [(pos(t), int(t["index"])) for t in by_kind["spline"]]
        for (p, i), term in zip(self._spline, by_kind["spline"], strict=True):
            if not 0 <= i < len(self._knots[p]) - 2 or isinstance(term["index"], bool):
                raise SplineModelError(f"{term}: no such term for knots {self._knots[p]}")
        self._miss = np.asarray([pos(t) for t in by_kind["missing"]], np.intp)
        for term in by_kind["level"]:
            if self._pw < 0 or term["feature"] != names[self._pw]:
                raise SplineModelError(f"{term}: a level of no pathway input")
        self._levels = _numbers(by_kind["level"], "level")
        self._int = np.asarray([pos(t) for t in by_kind["interaction"]], np.intp)
        if len(self._int) and self._pw < 0:
            raise SplineModelError("interaction terms without a pathway input")
        self._int_level = _numbers(by_kind["interaction"], "level")
        self._beta = _numbers(self._terms, "coefficient")
        self._mean = _numbers(self._terms, "mean")
        self._n_lin_spline = len(self._lin) + len(self._spline)

    def _fold(self) -> None:
        """The prediction arrays: weights per transformed value, per cube, per missing indicator
        and per pathway term, and each input's share of sum_t coefficient_t * mean_t."""
        beta, p = self._beta, len(self._cols)
        self._lin_w = np.zeros(p)
        np.add.at(self._lin_w, self._lin, beta[: len(self._lin)])
        cube_w = [np.zeros(len(k)) for k in self._knots]
        for (q, i), b in zip(self._spline, beta[len(self._lin) : self._n_lin_spline], strict=True):
            cube_w[q] += b * rcs_weights(self._knots[q])[i]
        bent = [q for q in range(p) if len(self._knots[q]) and cube_w[q].any()]
        self._cube_pos = np.asarray([q for q in bent for _ in self._knots[q]], np.intp)
        self._cube_knot = np.concatenate([self._knots[q] for q in bent]) if bent else np.zeros(0)
        self._cube_w = np.concatenate([cube_w[q] for q in bent]) if bent else np.zeros(0)
        self._cube_owner = np.asarray(bent, np.intp)
        self._cube_starts = np.cumsum([0] + [len(self._knots[q]) for q in bent[:-1]]).astype(int)
        n_miss = len(self._miss)
        self._miss_w = beta[self._n_lin_spline : self._n_lin_spline + n_miss]
        self._fold_pathway(beta[self._n_lin_spline + n_miss :])
        k = len(self.feature_names)
        owner = np.zeros((len(self._terms), k))  # term -> input shares, for the centring
        own = [*self._lin, *(q for q, _ in self._spline), *self._miss]
        owner[np.arange(len(own)), self._cols[np.asarray(own, np.intp)]] = 1.0
        owner[len(own) : len(own) + len(self._levels), self._pw] = 1.0
        for t, q in enumerate(self._int, start=len(own) + len(self._levels)):
            owner[t, self._pw] = owner[t, self._cols[q]] = 0.5
        self._centre = (beta * self._mean) @ owner
        self._bias = self._intercept + float(self._centre.sum())

    def _fold_pathway(self, beta: FloatArray) -> None:
        """Lookup tables by pathway code: the level's weight, and its slope on each interacting
        input; a last all-zero row for a code no term names (unknown or missing)."""
        self._codes = np.unique(np.concatenate([self._levels, self._int_level]))
        self._keys = np.unique(self._int)  # positions among the continuous inputs
        self._level_table = np.zeros(len(self._codes) + 1)
        self._slope_table = np.zeros((len(self._codes) + 1, len(self._keys)))
        n_levels = len(self._levels)
        np.add.at(self._level_table, np.searchsorted(self._codes, self._levels), beta[:n_levels])
        rows = np.searchsorted(self._codes, self._int_level)
        columns = np.searchsorted(self._keys, self._int)
        np.add.at(self._slope_table, (rows, columns), beta[n_levels:])
        self._key_cols = self._cols[self._keys]
        self._key_median = self._median[self._keys]

    # --- scoring --------------------------------------------------------------------------------

    def _matrix(self, data: FloatArray | pd.DataFrame) -> FloatArray:
        if isinstance(data, pd.DataFrame):
            if list(data.columns) != list(self.feature_names):
                raise SplineModelError(
                    f"columns {list(data.columns)} differ from the model's {self.feature_names}"
                )
            data = data.to_numpy(np.float64)
        x = np.asarray(data, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise SplineModelError(
                f"expected rows of {len(self.feature_names)} inputs, got shape {x.shape}"
            )
        return x

    def _transformed(self, x: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Continuous inputs winsorised, logged where skewed, missing ones imputed."""
        z = x[:, self._cols]
        missing = np.isnan(z)
        np.clip(z, self._low, self._high, out=z)
        if len(self._log):
            z[:, self._log] = np.log(np.maximum(z[:, self._log], self._floor))
        if missing.any():
            z = np.where(missing, self._median, z)
        return z, missing

    def _pathway_terms(self, x: FloatArray, z: FloatArray) -> FloatArray:
        """The level indicators, then the interactions, as (n, levels + interactions)."""
        if self._pw < 0:
            return np.zeros((len(x), 0))
        code = x[:, self._pw : self._pw + 1]
        centred = z[:, self._int] - self._median[self._int]
        return np.concatenate([code == self._levels, (code == self._int_level) * centred], axis=1)

    def _pathway_parts(self, x: FloatArray, z: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Each row's level weight (n,) and interaction terms times their weights (n, keys)."""
        code = x[:, self._pw]
        row = np.minimum(np.searchsorted(self._codes, code), len(self._codes) - 1)
        row = np.where(self._codes[row] == code, row, len(self._codes))
        slopes = self._slope_table[row] * (z[:, self._keys] - self._key_median)
        return self._level_table[row], slopes

    def _margin(self, x: FloatArray) -> FloatArray:
        """Row sums (`row_sums`), never a BLAS product: a row's margin must not depend on the rows
        scored with it (the API scores one, replay thousands: their probabilities are equal)."""
        z, missing = self._transformed(x)
        out = row_sums(z * self._lin_w) + self._intercept
        if len(self._cube_pos):
            out += row_sums(cubes(z[:, self._cube_pos], self._cube_knot) * self._cube_w)
        if len(self._miss):
            out += row_sums(missing[:, self._miss] * self._miss_w)
        if len(self._codes):
            level, slopes = self._pathway_parts(x, z)
            out += level + row_sums(slopes)
        return out

    def _contributions(self, x: FloatArray) -> FloatArray:
        z, missing = self._transformed(x)
        per_input = z * self._lin_w
        if len(self._cube_pos):
            weighted = cubes(z[:, self._cube_pos], self._cube_knot) * self._cube_w
            per_input[:, self._cube_owner] += np.add.reduceat(weighted, self._cube_starts, axis=1)
        if len(self._miss):
            per_input[:, self._miss] += missing[:, self._miss] * self._miss_w
        k = len(self.feature_names)
        out = np.zeros((len(x), k + 1))
        out[:, self._cols] = per_input
        if len(self._codes):
            level, slopes = self._pathway_parts(x, z)
            out[:, self._key_cols] += 0.5 * slopes  # an interaction: half to its input,
            out[:, self._pw] += level + 0.5 * row_sums(slopes)  # half to the pathway
        out[:, :k] -= self._centre
        out[:, k] = self._bias
        return out

    def _blocks(self, x: FloatArray, step: Any, width: int) -> FloatArray:
        if len(x) <= BLOCK_ROWS:
            return np.asarray(step(x), dtype=np.float64)
        out = np.empty((len(x), width) if width else len(x))
        for start in range(0, len(x), BLOCK_ROWS):
            out[start : start + BLOCK_ROWS] = step(x[start : start + BLOCK_ROWS])
        return out


def row_sums(a: FloatArray) -> FloatArray:
    """Each row's sum, added in the same order whatever the number of rows (`ndarray.sum` and
    BLAS products are not: a row alone and the same row in a batch could differ in the last
    bit). Rows without columns sum to 0."""
    if a.shape[1] == 0:
        return np.zeros(len(a))
    out: FloatArray = np.add.reduceat(a, [0], axis=1)[:, 0]
    return out


def _numbers(entries: Sequence[dict[str, Any]], key: str) -> FloatArray:
    """entry[key] for each entry, as float64; SplineModelError unless each is a finite number."""
    values = [entry[key] for entry in entries]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise SplineModelError(f"`{key}`: expected numbers, got {values[:5]}")
    out = np.asarray(values, dtype=np.float64)
    if not np.isfinite(out).all():
        raise SplineModelError(f"`{key}`: expected finite numbers, got {values[:5]}")
    return out


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SplineModelError(f"expected true or false, got {value!r}")
    return value
