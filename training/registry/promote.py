"""Compare registered candidates with the champion, and promote behind gates.

Gates (defaults in the spec): calibration slope and O/E within their ranges, the lower 95% bound of
rule-out sensitivity no more than a margin below the target, and AUC not significantly worse than
the current champion (the paired-bootstrap 95% CI of candidate minus champion must reach 0). A
failed gate refuses promotion unless an override reason is given; the reason is recorded as a tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.spec import ModelSpec
from training.evaluation.metrics import net_benefit
from training.evaluation.model import pair_predictions
from training.registry.store import (
    CHAMPION,
    RegistryError,
    Tracking,
    read_run_artifact,
    resolve_version,
    run_artifact_json,
    unregistered,
)

KEY = ("referral_id", "patient_id")


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


def load_candidate(tracking: Tracking, name: str, ref: str) -> Candidate:
    """A registered version with its evaluation and evaluation-period predictions."""
    version = resolve_version(tracking.client, name, ref)
    if version.run_id is None:
        raise RegistryError(f"{name} version {version.version} has no training run")
    evaluation = run_artifact_json(tracking.client, version.run_id, "metrics.json")
    predictions = read_run_artifact(
        tracking.client, version.run_id, "evaluation_predictions.parquet", pd.read_parquet
    )
    return Candidate(version, evaluation, predictions)


def champion_of(tracking: Tracking, name: str) -> Candidate | None:
    try:
        return load_candidate(tracking, name, CHAMPION)
    except RegistryError:
        return None


def paired_difference(
    candidate: Candidate, champion: Candidate, outcome: str, n_boot: int, seed: int
) -> dict[str, float] | None:
    """Candidate minus champion AUC on the rows both scored (paired patient-level bootstrap)."""
    key = next((k for k in KEY if k in candidate.predictions and k in champion.predictions), None)
    if key is None:
        return None
    paired = pair_predictions(
        candidate.predictions,
        champion.predictions[[key, "probability"]],
        key=key,
        outcome=outcome,
        n_boot=n_boot,
        seed=seed,
    )
    return paired.auc_difference


def check_gates(
    spec: ModelSpec, candidate: Candidate, champion: Candidate | None, n_boot: int = 200
) -> list[Gate]:
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
    if gates.auc_non_inferior and champion is not None:
        if str(champion.version.version) == str(candidate.version.version):
            result.append(Gate("auc_vs_champion", True, "the candidate is the champion"))
        else:
            diff = paired_difference(candidate, champion, spec.outcome.column, n_boot, spec.seed)
            if diff is None:
                result.append(Gate("auc_vs_champion", False, "no shared evaluation rows to pair"))
            else:
                result.append(
                    Gate(
                        "auc_vs_champion",
                        diff["high"] >= 0.0,
                        f"AUC difference {diff['estimate']:+.4f} "
                        f"[{diff['low']:+.4f}, {diff['high']:+.4f}] vs champion "
                        f"v{champion.version.version}",
                    )
                )
    return result


def promote(
    tracking: Tracking, spec: ModelSpec, version: str, *, override_reason: str | None = None
) -> tuple[bool, list[Gate]]:
    """Move alias `champion` to the version if every gate passes (or an override is given)."""
    candidate = load_candidate(tracking, spec.name, version)
    gates = check_gates(spec, candidate, champion_of(tracking, spec.name))
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


def compare(tracking: Tracking, spec: ModelSpec, n_boot: int = 200) -> pd.DataFrame:
    """One row per registered version: discrimination, calibration, rule-out, net benefit."""
    client = tracking.client
    aliases = aliases_by_version(tracking, spec.name)  # first: an unregistered name says so
    champion = champion_of(tracking, spec.name)
    rows = []
    versions = client.search_model_versions(f"name = '{spec.name}'")
    for mv in sorted(versions, key=lambda v: int(v.version)):
        candidate = load_candidate(tracking, spec.name, str(mv.version))
        ev = candidate.evaluation
        auc, green = ev["auc"], (ev.get("thresholds", {}).get("green") or {})
        sens = green.get("sensitivity") or {}
        diff = (
            paired_difference(candidate, champion, spec.outcome.column, n_boot, spec.seed)
            if champion is not None and str(champion.version.version) != str(mv.version)
            else None
        )
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(aliases.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "auc": auc["estimate"],
                "auc_ci": (auc["low"], auc["high"]),
                "auc_diff_vs_champion": None if diff is None else diff["estimate"],
                "auc_diff_ci": None if diff is None else (diff["low"], diff["high"]),
                "calibration_slope": ev["calibration"]["slope"],
                "observed_expected": ev["calibration"]["observed_expected"],
                "rule_out_sensitivity": sens.get("estimate"),
                "rule_out_sensitivity_ci": (sens.get("low"), sens.get("high")),
                "share_ruled_out": green.get("share_ruled_out"),
                "net_benefit": _net_benefit_at(candidate, spec),
            }
        )
    return pd.DataFrame(rows)


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
