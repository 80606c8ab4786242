"""Shadow (silent-run) models: released non-champion versions that score the same records as
their model's champion, for the audit trail only.

`TRIAGE_SHADOW` names them (`NAME@ALIAS` or `NAME/VERSION`, comma-separated); each is resolved
against the loaded release (an alias as it stood at release time). A ref the release lacks, or
one that is the champion itself, keeps the server not ready with the reason (`resolve_shadows`;
`triage serve` checks the same before starting). When a request is answered by NAME's champion
(not pinned by the client), every shadow of NAME scores the same record with the same pathway
(`score_shadows`); only the champion's answer is returned. A shadow that refuses gets a refused
row with its own codes; one that raises never fails the request: it is logged and gets a refused
row with the code `shadow_error`.

Cost: a shadow is scored without the wording of its drivers or panels (unused by its row), so
it costs its validation, one prediction and one contribution call (`shadow_score`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from serving.audit_shadow import SHADOW_ERROR, ShadowRecord

if TYPE_CHECKING:  # serving.release loads LightGBM: in the workers only (as serving/triage.py)
    from models.predictor import Score, TriagePredictor
    from serving.release import Release, Served

logger = logging.getLogger("triage.shadow")


class ShadowConfigError(ValueError):
    """A `TRIAGE_SHADOW` ref that cannot be served as a shadow (the message says how to fix)."""


def resolve_shadows(release: Release, refs: Sequence[str]) -> dict[str, tuple[Served, ...]]:
    """Model name -> its shadow versions (each once), or ShadowConfigError naming the first ref
    that is not a released non-champion version of a released model."""
    from serving.release import CHAMPION, parse_ref

    found: dict[str, dict[str, Served]] = {}
    for ref in refs:
        name, version, alias = parse_ref(ref)
        if version is None and alias is None:
            raise ShadowConfigError(
                f"TRIAGE_SHADOW {ref!r}: name a version (NAME/VERSION) or an alias (NAME@ALIAS)"
            )
        champion = release.get(name)
        if champion is None:
            raise ShadowConfigError(
                f"TRIAGE_SHADOW {ref!r}: no champion of {name} is released, so nothing to shadow"
            )
        served = release.find(name, version=version, alias=alias)
        if served is None:
            raise ShadowConfigError(
                f"TRIAGE_SHADOW {ref!r} is not in the release; release it with "
                f"`triage release --pin {ref}`"
            )
        if served.version == champion.version or alias == CHAMPION:
            raise ShadowConfigError(
                f"TRIAGE_SHADOW {ref!r} is {name}'s champion (v{champion.version}) itself; "
                "shadow another version (release it with `triage release --pin NAME/VERSION`)"
            )
        found.setdefault(name, {})[served.version] = served
    return {name: tuple(versions.values()) for name, versions in found.items()}


def is_pinned(model: str | None) -> bool:
    """Whether the client asked for a version or an alias (then no shadow runs)."""
    from serving.release import parse_ref

    if model is None:
        return False
    _, version, alias = parse_ref(model)
    return version is not None or alias is not None


def shadow_score(
    predictor: TriagePredictor, record: Mapping[str, Any], pathway: str | None
) -> Score:
    """`predictor.score(record, pathway=pathway)` without drivers or panels: the same
    eligibility, probability, band, base and contributions (the same calls on the same model
    inputs), at about half the cost."""
    score = predictor.score(record, pathway=pathway, explain=False)
    if not score.eligible:
        return score
    assert score.validation is not None
    validation = score.validation
    x = predictor.feature_row(score.values, validation.age, validation.sex, pathway)
    base, contributions = predictor.explain_matrix(x)
    named = zip(predictor.feature_names, (float(c) for c in contributions[0]), strict=True)
    return replace(score, base=float(base[0]), contributions=dict(named))


def shadow_record(served: Served, record: Mapping[str, Any], pathway: str | None) -> ShadowRecord:
    """One shadow's row for a record: its score, its refusal, or `shadow_error` if it raised."""
    build = partial(ShadowRecord.build, model_name=served.name, model_version=served.version,
                    run_id=served.run_id)  # fmt: skip
    try:
        score = shadow_score(served.predictor, record, pathway)
    except Exception:  # a shadow must never fail the champion's answer
        logger.exception("shadow %s v%s failed; audited as %s", served.name, served.version,
                         SHADOW_ERROR)  # fmt: skip
        return build(reason_codes=[SHADOW_ERROR])
    warnings = [i.code for i in score.issues if i.severity == "warning"]
    if not score.eligible:
        errors = [i.code for i in score.issues if i.severity == "error"]
        return build(reason_codes=["ineligible", *errors], warnings=warnings)
    return build(
        warnings=warnings, inputs=score.values, probability=score.probability, band=score.band,
        base=score.base, contributions=score.contributions,
    )  # fmt: skip
