"""Compare registered candidates with the champion, and promote behind gates.

Gates (defaults in the spec's `promotion`): calibration slope and O/E within their ranges, the lower
95% bound of rule-out sensitivity no more than a margin below the target, no flagged subgroup
(`subgroups`: rule-out sensitivity or O/E of a level with enough events, as the evaluation flags
them), and AUC non-inferior to the current champion: the champion's registered predictor re-scores
the candidate's own evaluation rows (the same patients, through the frame scorer, as the API would
score them), and the lower 95% bound of the paired bootstrap difference (candidate - champion) must
reach `-auc_margin`. Models are never paired by id across cohorts. A failed gate refuses promotion
unless an override reason is given; the reason is recorded as a tag.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.predictor import ArtifactError, TriagePredictor
from models.scoring import score_frame
from models.spec import ModelSpec
from training.evaluation.metrics import auc, net_benefit, paired_auc_difference
from training.registry.runs import EVALUATION_ROWS
from training.registry.store import (
    CHAMPION,
    RegistryError,
    Tracking,
    load_predictor,
    read_run_artifact,
    resolve_version,
    run_artifact_json,
    unregistered,
)

PROBABILITY = "probability"  # the candidate's own probability in its evaluation rows


class ComparisonError(ValueError):
    """Two models that cannot be compared on the candidate's evaluation rows (and why)."""


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Candidate:
    version: ModelVersion
    evaluation: dict[str, Any]
    predictions: pd.DataFrame
    rows: pd.DataFrame | None = None  # evaluation rows; None for runs logged before them


@dataclass(frozen=True)
class Champion:
    version: ModelVersion
    predictor: TriagePredictor | None  # loaded from the registered artifact
    problem: str = ""  # why the predictor did not load (then None)


@dataclass(frozen=True)
class PairedAuc:
    """Candidate minus champion AUC on the candidate's evaluation rows both models scored."""

    estimate: float
    low: float
    high: float
    candidate_auc: float
    champion_auc: float
    n_rows: int
    n_patients: int
    events: int
    refused_by_champion: int  # candidate rows the champion's spec refused (not compared)
    n_boot: int
    grouped_by: str  # what the bootstrap resamples: patient_id, or matched_set
    champion_version: str
    candidate_version: str

    def describe(self) -> str:
        return (
            f"candidate - champion v{self.champion_version} AUC {self.estimate:+.4f} "
            f"[95% CI {self.low:+.4f}, {self.high:+.4f}] (candidate {self.candidate_auc:.3f}, "
            f"champion {self.champion_auc:.3f}) on {self.n_rows:,} rows of {self.n_patients:,} "
            f"patients ({self.events:,} events) of v{self.candidate_version}'s evaluation period, "
            f"re-scored by the champion ({self.refused_by_champion:,} refused by it); "
            f"{self.n_boot:,} paired bootstrap resamples by {self.grouped_by}"
        )


def load_candidate(tracking: Tracking, name: str, ref: str) -> Candidate:
    """A registered version with its evaluation, evaluation-period predictions and rows."""
    version = resolve_version(tracking.client, name, ref)
    if version.run_id is None:
        raise RegistryError(f"{name} version {version.version} has no training run")
    client = tracking.client
    evaluation = run_artifact_json(client, version.run_id, "metrics.json")
    predictions = read_run_artifact(
        client, version.run_id, "evaluation_predictions.parquet", pd.read_parquet
    )
    logged = {artifact.path for artifact in client.list_artifacts(version.run_id)}
    rows = (
        read_run_artifact(client, version.run_id, EVALUATION_ROWS, pd.read_parquet)
        if EVALUATION_ROWS in logged
        else None
    )
    return Candidate(version, evaluation, predictions, rows)


def champion_of(tracking: Tracking, name: str) -> Champion | None:
    """The champion with its predictor, loaded from the registry (None without a champion)."""
    try:
        version = resolve_version(tracking.client, name, CHAMPION)
    except RegistryError:
        return None
    with tempfile.TemporaryDirectory(prefix="triage-champion-") as tmp:
        try:
            predictor, _ = load_predictor(tracking.client, name, str(version.version), Path(tmp))
        except (ArtifactError, MlflowException, OSError) as error:
            return Champion(version, None, f"its registered model does not load: {error}")
    return Champion(version, predictor)


def canonical_view(predictor: TriagePredictor) -> TriagePredictor:
    """The predictor reading canonical rows (catalogue codes, canonical units, meanings): its
    spec's `column_map`, which reads a cohort's own columns and units, is set aside."""
    spec = predictor.spec
    if not spec.column_map:
        return predictor
    return TriagePredictor(
        spec=spec.model_copy(update={"column_map": {}}), booster=predictor.booster,
        calibration=predictor.calibration, thresholds=predictor.thresholds,
        reference=predictor.reference, metadata=predictor.metadata,
        num_threads=predictor.num_threads,
    )  # fmt: skip


def paired_difference(
    candidate: Candidate, champion: Champion, outcome: str, n_boot: int, seed: int
) -> PairedAuc:
    """Candidate minus champion AUC on the candidate's evaluation rows: the champion re-scores
    them through the frame scorer; rows it refuses are counted and left out; the bootstrap
    resamples patients (matched sets when the rows have them), the same draws for both models.
    Raises ComparisonError when the rows are missing or the models cannot be compared."""
    number = str(candidate.version.version)
    rows = candidate.rows
    if rows is None:
        raise ComparisonError(
            f"v{number}'s run has no evaluation rows ({EVALUATION_ROWS}; it was logged before "
            "they were): retrain it to compare it with the champion on its own patients"
        )
    if champion.predictor is None:
        raise ComparisonError(f"champion v{champion.version.version}: {champion.problem}")
    missing = [c for c in (outcome, "patient_id", PROBABILITY) if c not in rows]
    if missing:
        raise ComparisonError(f"v{number}'s evaluation rows lack {missing}")
    try:
        scored = score_frame(canonical_view(champion.predictor), rows.drop(columns=[PROBABILITY]))
    except (KeyError, ValueError) as error:
        raise ComparisonError(
            f"champion v{champion.version.version} cannot score v{number}'s evaluation rows: "
            f"{error}"
        ) from None
    both = scored.eligible & rows[outcome].notna().to_numpy()
    kept = rows.loc[both]
    y = kept[outcome].to_numpy(np.int64)
    events = int(y.sum())
    if events == 0 or events == len(y):
        raise ComparisonError(
            f"the {len(y):,} rows both models scored hold {events:,} events: no AUC to compare"
        )
    group = "matched_set" if "matched_set" in kept else "patient_id"
    p_candidate = kept[PROBABILITY].to_numpy(np.float64)
    p_champion = scored.probability[both]
    diff = paired_auc_difference(
        y, p_candidate, p_champion, kept[group].to_numpy(), n_boot=n_boot, seed=seed
    )
    return PairedAuc(
        estimate=diff["estimate"], low=diff["low"], high=diff["high"],
        candidate_auc=auc(y, p_candidate), champion_auc=auc(y, p_champion),
        n_rows=len(kept), n_patients=int(kept["patient_id"].nunique()), events=events,
        refused_by_champion=int((~scored.eligible).sum()), n_boot=n_boot, grouped_by=group,
        champion_version=str(champion.version.version), candidate_version=number,
    )  # fmt: skip


def auc_gate(spec: ModelSpec, candidate: Candidate, champion: Champion | None) -> Gate:
    """Non-inferiority of AUC to the champion on the candidate's evaluation patients."""
    margin = spec.promotion.auc_margin
    if champion is None:
        return Gate("auc_vs_champion", True, "no champion yet: nothing to compare with")
    if str(champion.version.version) == str(candidate.version.version):
        return Gate("auc_vs_champion", True, "the candidate is the champion")
    try:
        diff = paired_difference(
            candidate, champion, spec.outcome.column, spec.promotion.n_boot, spec.seed
        )
    except ComparisonError as error:
        return Gate("auc_vs_champion", False, f"not compared: {error}")
    passed = bool(np.isfinite(diff.low)) and diff.low >= -margin
    return Gate(
        "auc_vs_champion",
        passed,
        f"{diff.describe()}; non-inferior when the lower bound >= -{margin:g}",
    )


def subgroup_gate(spec: ModelSpec, evaluation: dict[str, Any]) -> Gate | None:
    """No flagged level among the gated subgroups' levels with enough events (the evaluation
    flags a level whose rule-out sensitivity upper 95% bound is below the target, or whose O/E
    95% CI lies wholly outside the allowed range). None when the spec gates no subgroup."""
    gates = spec.promotion
    if not gates.subgroups:
        return None
    names = ", ".join(gates.subgroups)
    block = evaluation.get("subgroups") or {}
    rows = [r for r in block.get("rows") or [] if r.get("column") in gates.subgroups]
    absent = [c for c in gates.subgroups if not any(r.get("column") == c for r in rows)]
    note = f"; not in the evaluation: {', '.join(absent)}" if absent else ""
    enough = [r for r in rows if (r.get("events") or 0) >= gates.subgroup_min_events]
    if not enough:
        return Gate(
            "subgroups",
            True,
            f"not assessed: no level of {names} has >= {gates.subgroup_min_events} events{note}",
        )
    if not any("flags" in r for r in rows):
        return Gate(
            "subgroups",
            True,
            f"not assessed: this run's evaluation has no subgroup flags (logged before they "
            f"were; retrain to assess {names}){note}",
        )
    flagged = [r for r in enough if r.get("flags")]
    if flagged:
        listed = "; ".join(
            f"{r['column']} {r.get('level')} ({', '.join(map(str, r['flags']))}, "
            f"{r.get('events')} events)"
            for r in flagged
        )
        detail = f"flagged: {listed}"
    else:
        detail = "no level flagged"
    return Gate(
        "subgroups",
        not flagged,
        f"{detail}; {len(enough)} levels of {names} with >= {gates.subgroup_min_events} "
        f"events assessed (rule-out sensitivity upper 95% bound below target, or O/E 95% CI "
        f"wholly outside the allowed range){note}",
    )


def check_gates(spec: ModelSpec, candidate: Candidate, champion: Champion | None) -> list[Gate]:
    """Every promotion gate for a candidate, passed or not, with the figures behind it."""
    gates = spec.promotion
    calibration = candidate.evaluation["calibration"]
    slope, oe = calibration["slope"], calibration["observed_expected"]
    green = candidate.evaluation.get("thresholds", {}).get("green") or {}
    sensitivity = (green.get("sensitivity") or {}).get("low", float("nan"))
    floor = spec.triage.rule_out_sensitivity - gates.rule_out_sensitivity_margin
    result = [
        Gate(
            "calibration_slope",
            gates.calibration_slope[0] <= slope <= gates.calibration_slope[1],
            f"slope {slope:.3f}, allowed {gates.calibration_slope[0]}-{gates.calibration_slope[1]}",
        ),
        Gate(
            "observed_expected",
            gates.observed_expected[0] <= oe <= gates.observed_expected[1],
            f"O/E {oe:.3f}, allowed {gates.observed_expected[0]}-{gates.observed_expected[1]}",
        ),
        Gate(
            "rule_out_sensitivity",
            bool(np.isfinite(sensitivity)) and sensitivity >= floor,
            f"lower 95% bound {sensitivity:.3f}, needs >= {floor:.3f} (target "
            f"{spec.triage.rule_out_sensitivity} - margin {gates.rule_out_sensitivity_margin})",
        ),
    ]
    subgroups = subgroup_gate(spec, candidate.evaluation)
    if subgroups is not None:
        result.append(subgroups)
    if gates.auc_non_inferior:
        result.append(auc_gate(spec, candidate, champion))
    return result


def promote(
    tracking: Tracking, spec: ModelSpec, version: str, *, override_reason: str | None = None
) -> tuple[bool, list[Gate]]:
    """Move alias `champion` to the version if every gate passes (or an override is given)."""
    candidate = load_candidate(tracking, spec.name, version)
    champion = champion_of(tracking, spec.name) if spec.promotion.auc_non_inferior else None
    gates = check_gates(spec, candidate, champion)
    failed = [g for g in gates if not g.passed]
    if failed and not override_reason:
        return False, gates
    client = tracking.client
    client.set_registered_model_alias(spec.name, CHAMPION, candidate.version.version)
    tags = {
        "validation_status": "approved" if not failed else "overridden",
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gates": "; ".join(f"{g.name}={'pass' if g.passed else 'FAIL'}" for g in gates),
    }
    if failed:
        tags["promotion_override_reason"] = str(override_reason)
    for key, value in tags.items():
        client.set_model_version_tag(spec.name, candidate.version.version, key, value)
    return True, gates


def compare(tracking: Tracking, spec: ModelSpec, n_boot: int | None = None) -> pd.DataFrame:
    """One row per registered version: discrimination, calibration, rule-out, net benefit, and
    AUC against the champion on that version's own evaluation patients (the champion re-scores
    them): `auc_diff_rows` rows compared, `n_boot` resamples (default: the spec's gates')."""
    n_boot = spec.promotion.n_boot if n_boot is None else n_boot
    client = tracking.client
    aliases = aliases_by_version(tracking, spec.name)  # first: an unregistered name says so
    champion = champion_of(tracking, spec.name)
    rows = []
    versions = client.search_model_versions(f"name = '{spec.name}'")
    for mv in sorted(versions, key=lambda v: int(v.version)):
        candidate = load_candidate(tracking, spec.name, str(mv.version))
        ev = candidate.evaluation
        auc_block, green = ev["auc"], (ev.get("thresholds", {}).get("green") or {})
        sens = green.get("sensitivity") or {}
        diff, note = None, ""
        if champion is None:
            note = "no champion"
        elif str(champion.version.version) == str(mv.version):
            note = "champion"
        else:
            try:
                diff = paired_difference(
                    candidate, champion, spec.outcome.column, n_boot, spec.seed
                )
            except ComparisonError as error:
                note = str(error)
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(aliases.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "auc": auc_block["estimate"],
                "auc_ci": (auc_block["low"], auc_block["high"]),
                "auc_diff_vs_champion": None if diff is None else diff.estimate,
                "auc_diff_ci": None if diff is None else (diff.low, diff.high),
                "champion_auc_on_rows": None if diff is None else diff.champion_auc,
                "auc_diff_rows": None if diff is None else diff.n_rows,
                "auc_diff_patients": None if diff is None else diff.n_patients,
                "auc_diff_refused": None if diff is None else diff.refused_by_champion,
                "auc_diff_note": note,
                "n_boot": n_boot,
                "calibration_slope": ev["calibration"]["slope"],
                "observed_expected": ev["calibration"]["observed_expected"],
                "rule_out_sensitivity": sens.get("estimate"),
                "rule_out_sensitivity_ci": (sens.get("low"), sens.get("high")),
                "share_ruled_out": green.get("share_ruled_out"),
                "net_benefit": _net_benefit_at(candidate, spec),
            }
        )
    counts = {c: "Int64" for c in ("auc_diff_rows", "auc_diff_patients", "auc_diff_refused")}
    return pd.DataFrame(rows).astype(counts) if rows else pd.DataFrame(rows)


def aliases_by_version(tracking: Tracking, name: str) -> dict[str, list[str]]:
    """Version number (as text) -> its aliases (search results do not carry them)."""
    try:
        model = tracking.client.get_registered_model(name)
    except MlflowException:
        raise unregistered(tracking.client, name) from None
    out: dict[str, list[str]] = {}
    for alias, number in model.aliases.items():
        out.setdefault(str(number), []).append(alias)
    return out


def _net_benefit_at(candidate: Candidate, spec: ModelSpec) -> float | None:
    stored = candidate.evaluation.get("net_benefit_at") or {}
    if "model" in stored:
        return float(stored["model"])
    preds = candidate.predictions
    threshold = float(stored.get("threshold", 0.03))
    table = net_benefit(
        preds[spec.outcome.column].to_numpy(),
        preds["probability"].to_numpy(),
        np.array([threshold]),
    )
    return float(table["model"].iloc[0])
