"""Required inputs: the analytes a model (almost) never saw missing in training.

LightGBM sends a missing value down whichever branch training chose, and for a value that was
never missing that choice is arbitrary: on `lower_gi`, haematocrit had a 0% missing rate, and its
absence moved a patient's log-odds by +0.41. So an analyte missing in under
`features.required_below_missing` (default 1%) of the training rows is required at scoring: a
record without it is refused (`missing_required_analyte`), unless `models.derive` fills it
exactly from what the record has (`analyte_derived`, a warning; the derived value is what the
model uses and what the explanation shows). An absence can then only be a driver for an input the
model learned real absences of.

The record path (`complete_record`, per API request) and the frame path (`complete_frame`, replay
and the pyfunc) apply the same rule and give the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import PANEL_CORE, Catalogue
from models.derive import Derived, derivations_for, derive_column, derive_record, derived_message
from models.spec import ModelSpec
from models.validation import Issue, RecordValidation

IntArray = npt.NDArray[np.int64]


def eligibility_inputs(spec: ModelSpec) -> frozenset[str]:
    """The analytes the spec's eligibility requires (named, or in a required panel's core): a
    record without them is refused by the validation itself."""
    e = spec.eligibility
    return frozenset(e.required_analytes) | {c for p in e.required_panels for c in PANEL_CORE[p]}


def training_required(spec: ModelSpec, missing_rate: Mapping[str, float] | None) -> tuple[str, ...]:
    """The analytes missing in under `features.required_below_missing` of the training rows, in
    the spec's order (none when the rates are unknown: a predictor saved before they were
    recorded)."""
    if missing_rate is None:
        return ()
    below = spec.features.required_below_missing
    return tuple(c for c in spec.features.analytes if missing_rate.get(c, 1.0) < below)


@dataclass(frozen=True)
class FrameCompletion:
    """What `RequiredInputs.complete_frame` did to a frame: rows refused for a required input
    (`missing_required_analyte:code` labels) and rows where one was derived."""

    refused_rows: IntArray
    refused_labels: npt.NDArray[np.object_]
    derived_rows: IntArray  # one entry per derived input (a row may repeat)


@dataclass(frozen=True)
class CompletedRecord:
    """One record's canonical values with its derived inputs filled in, the issues that says
    (`analyte_derived` warnings, `missing_required_analyte` errors), and what was derived."""

    values: dict[str, float]
    issues: tuple[Issue, ...]
    derived: dict[str, Derived]


@dataclass(frozen=True)
class RequiredInputs:
    """The inputs a model requires because of its training data (`codes`; the eligibility's own
    are refused by the validation and not repeated here), and how to complete a record."""

    codes: tuple[str, ...]
    catalogue: Catalogue
    required_below_missing: float

    @classmethod
    def of(cls, spec: ModelSpec, missing_rate: Mapping[str, float] | None) -> RequiredInputs:
        own = eligibility_inputs(spec)
        codes = tuple(c for c in training_required(spec, missing_rate) if c not in own)
        return cls(codes, spec.catalogue, spec.features.required_below_missing)

    def message(self, code: str) -> str:
        """The `missing_required_analyte` text: which analyte, why, and what would derive it."""
        analyte, share = self.catalogue[code], 1.0 - self.required_below_missing
        text = (
            f"{analyte.name} is required: it was measured in >= {share:.0%} of this model's "
            "training patients, so the model cannot score its absence"
        )
        alternatives = [
            " and ".join(self.catalogue[c].name if c in self.catalogue else c for c in d.inputs)
            for d in derivations_for(code)
        ]
        if alternatives:
            text += f"; give it, or {' or '.join(alternatives)} to derive it"
        return text

    def complete_record(self, validation: RecordValidation) -> CompletedRecord:
        """The record's canonical values with each absent required input derived where
        `models.derive` can, and the issues that says: an `analyte_derived` warning for each
        derived one, a `missing_required_analyte` error for each one neither given nor
        derivable. An input given but refused (e.g. an unknown unit) has its own error already
        and is left alone."""
        values = dict(validation.values)
        issues: list[Issue] = []
        done: dict[str, Derived] = {}
        in_error = {i.field for i in validation.errors}
        for code in self.codes:
            if code in values or code in in_error:
                continue
            derived = derive_record(
                code, validation.values, validation.age, validation.sex, self.catalogue
            )
            if derived is None:
                issues.append(Issue("error", "missing_required_analyte", code, self.message(code)))
            else:
                values[code], done[code] = derived.value, derived
                message = derived_message(derived, self.catalogue)
                issues.append(Issue("warning", "analyte_derived", code, message))
        return CompletedRecord(values, tuple(issues), done)

    def complete_frame(self, values: pd.DataFrame, issues: pd.DataFrame) -> FrameCompletion:
        """`complete_record` for every row of a frame of canonical values (`validate_frame`'s
        values and issues): derived inputs are written into `values` in place."""
        errors = issues[issues["severity"] == "error"]
        n = len(values)
        refused: list[tuple[IntArray, str]] = []
        derived_rows: list[IntArray] = []
        for code in self.codes:
            column = values.get(code)
            original = np.full(n, np.nan) if column is None else column.to_numpy(np.float64)
            absent = np.isnan(original)
            absent[errors.loc[errors["field"] == code, "row"].to_numpy(np.int64)] = False
            if not absent.any():
                continue
            filled, which = derive_column(code, values, self.catalogue)
            which[~absent] = -1  # a value given in error stays absent, as in the record path
            values[code] = np.where(which >= 0, filled, original)
            derived_rows.append(np.flatnonzero(which >= 0))
            refused.append((np.flatnonzero(absent & (which < 0)), code))
        empty = np.zeros(0, np.int64)
        return FrameCompletion(
            refused_rows=np.concatenate([r for r, _ in refused] or [empty]).astype(np.int64),
            refused_labels=np.array(
                [f"missing_required_analyte:{c}" for r, c in refused for _ in r], dtype=object
            ),
            derived_rows=np.concatenate(derived_rows or [empty]).astype(np.int64),
        )
