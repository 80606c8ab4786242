"""Which model answers, and with which referral pathway: the routing policy of every scorer.

One request (the HTTP API): a named model, else the pathway's own model when one is served, else
`any_cancer` with the pathway as context. An unknown pathway is refused (`invalid_pathway`);
a model that uses the pathway as an input refuses a request without one (`missing_pathway`); a
pathway model asked without a pathway takes its own (the caller chose it by name).

A frame of rows (replay, the MLflow pyfunc): the model is given, and each row's pathway is
checked the same way, plus the training population: a row outside the spec's pathways is
`outside_population` (as training selects its rows). A frame without a pathway column is
refused only by a model that uses the pathway as an input.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.spec import PATHWAYS, ModelSpec
from models.validation import Issue

DEFAULT_MODEL = "any_cancer"  # answers for a pathway without a model of its own
OUTSIDE_POPULATION = "outside_population"


class RoutingError(LookupError):
    """A request no served model can take: `unknown_model`, or `invalid_request` with issues."""

    def __init__(self, code: str, message: str, issues: tuple[Issue, ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.issues = code, message, issues


def needs_pathway(spec: ModelSpec) -> bool:
    """Whether rows need a pathway: as an input, or to select the training population."""
    return bool(spec.cohort.pathways) or "pathway" in spec.features.context


def route(
    specs: Mapping[str, ModelSpec], model: str | None, pathway: str | None
) -> tuple[str, str | None]:
    """The served model (name) for one request and the pathway to pass it as context.

    `specs` are the served models' specs by name. Raises RoutingError as described above."""
    if pathway is not None and pathway not in PATHWAYS:
        issue = Issue(
            "error",
            "invalid_pathway",
            "pathway",
            f"pathway {pathway!r} is not one of {', '.join(PATHWAYS)}",
        )
        raise RoutingError("invalid_request", f"unknown pathway {pathway!r}", (issue,))
    name = model or (pathway if pathway is not None and pathway in specs else DEFAULT_MODEL)
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        raise RoutingError("unknown_model", f"no model {name!r} is served (served: {known})")
    if "pathway" in spec.features.context and pathway is None:
        issue = Issue(
            "error",
            "missing_pathway",
            "pathway",
            f"{name} uses the referral pathway; give one of {', '.join(PATHWAYS)}",
        )
        raise RoutingError("invalid_request", "this model needs the referral pathway", (issue,))
    if spec.cohort.pathways and pathway is None:
        pathway = spec.cohort.pathways[0]
    return name, pathway


def pathway_refusals(
    frame: pd.DataFrame, spec: ModelSpec
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_]]:
    """Rows of `frame` refused for their pathway, with a `code:pathway` reason each (the frame
    twin of `route`, plus the training population)."""
    none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    if not needs_pathway(spec):
        return none
    if "pathway" not in frame:
        if "pathway" not in spec.features.context:
            return none  # the caller chose the population by choosing the model
        pathway = pd.Series(np.full(len(frame), np.nan, dtype=object), index=frame.index)
    else:
        pathway = frame["pathway"]
    missing = pathway.isna().to_numpy(dtype=bool)
    known = pathway.isin(PATHWAYS).to_numpy(dtype=bool)
    outside = known & ~pathway.isin(spec.cohort.pathways or PATHWAYS).to_numpy(dtype=bool)
    parts = [
        (missing, "missing_pathway"),
        (~missing & ~known, "invalid_pathway"),
        (outside, OUTSIDE_POPULATION),
    ]
    rows = np.concatenate([np.flatnonzero(mask) for mask, _ in parts]).astype(np.int64)
    labels = np.concatenate(
        [np.full(int(mask.sum()), f"{code}:pathway", dtype=object) for mask, code in parts]
    )
    return rows, labels
