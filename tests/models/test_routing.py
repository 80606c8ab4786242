"""The routing policy: which model answers a request, and which rows a model refuses for their
pathway. One policy for the API (`route`) and for frames (`pathway_refusals`)."""

from __future__ import annotations

import pandas as pd
import pytest

from models.routing import DEFAULT_MODEL, RoutingError, pathway_refusals, route
from models.spec import PATHWAYS, load_spec

SERVED = {name: load_spec(name) for name in ("any_cancer", "lower_gi", "myeloma")}


def test_a_named_model_answers_and_a_pathway_model_takes_its_own_pathway() -> None:
    assert route(SERVED, "lower_gi", None) == ("lower_gi", "lower_gi"), (
        "a pathway model asked by name without a pathway scores as its own pathway"
    )
    assert route(SERVED, "myeloma", None) == ("myeloma", None), "myeloma needs no pathway"


def test_without_a_model_the_pathway_picks_its_own_model_else_the_default() -> None:
    assert route(SERVED, None, "lower_gi") == ("lower_gi", "lower_gi"), "a served pathway model"
    assert route(SERVED, None, "breast") == (DEFAULT_MODEL, "breast"), (
        "no breast model is served: any_cancer answers, with the pathway as context"
    )


@pytest.mark.parametrize(
    ("model", "pathway", "code", "issue"),
    [
        (None, "lungs", "invalid_request", "invalid_pathway"),
        ("any_cancer", None, "invalid_request", "missing_pathway"),
        (None, None, "invalid_request", "missing_pathway"),
        ("pancreas", None, "unknown_model", None),
    ],
)
def test_requests_no_model_can_take_are_refused_with_a_code(
    model: str | None, pathway: str | None, code: str, issue: str | None
) -> None:
    with pytest.raises(RoutingError) as raised:
        route(SERVED, model, pathway)
    assert raised.value.code == code, "the refusal's code decides the HTTP status"
    assert [i.code for i in raised.value.issues] == ([issue] if issue else []), (
        "the field-level reason"
    )


def test_frames_are_refused_for_their_pathway_as_requests_are() -> None:
    frame = pd.DataFrame({"pathway": ["lower_gi", None, "colonoscopy", "breast"]})
    rows, labels = pathway_refusals(frame, load_spec("any_cancer"))
    assert dict(zip(rows.tolist(), labels.tolist(), strict=True)) == {
        1: "missing_pathway:pathway",
        2: "invalid_pathway:pathway",
    }, "any_cancer scores every known pathway and refuses a missing or unknown one"
    rows, labels = pathway_refusals(frame, load_spec("lower_gi"))
    assert dict(zip(rows.tolist(), labels.tolist(), strict=True))[3] == (
        "outside_population:pathway"
    ), "a pathway model keeps other pathways' rows, labelled outside its population"
    for pathway in PATHWAYS:  # the two policies agree on every known pathway for any_cancer
        assert route(SERVED, "any_cancer", pathway) == ("any_cancer", pathway)


def test_a_frame_without_a_pathway_column() -> None:
    frame = pd.DataFrame({"age": [60, 70]})
    rows, labels = pathway_refusals(frame, load_spec("any_cancer"))
    assert labels.tolist() == ["missing_pathway:pathway"] * 2, (
        "a model that uses the pathway as an input refuses rows without one"
    )
    rows, _ = pathway_refusals(frame, load_spec("lower_gi"))
    assert len(rows) == 0, "choosing lower_gi chose its population, as the API assumes"
    rows, _ = pathway_refusals(frame, load_spec("myeloma"))
    assert len(rows) == 0, "myeloma does not use the pathway"
