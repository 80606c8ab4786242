"""`triage monitor`: post-market surveillance of one model from the audit trail.

    read the model's audited rows (served and shadow) in the window -> weekly volumes, band
    shares, refusal and warning codes -> input and score drift per version against its training
    reference -> shadow agreement -> with outcomes: link, then realised performance per version
    (served and shadow) on the scores whose horizon has elapsed -> alerts -> monitor.json and
    monitor.html

Every number is on the deployed population's scale (the rows the server scored, unweighted),
per model version; the alert thresholds come from the spec's `monitoring` block
(`models.spec_policy.MonitoringPolicy`) and are written beside each check.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from models.predictor import TriagePredictor
from models.spec import ModelSpec
from training.json_files import json_safe, write_json
from training.monitor.audit_rows import AuditFrames, Window, key_problem, read_audit
from training.monitor.operations import (
    code_rates,
    drift_alerts,
    input_drift,
    shadow_agreement,
    weekly_volumes,
)
from training.monitor.outcomes import Outcomes, OutcomesError, link_outcomes, read_outcomes
from training.monitor.realised import (
    evaluation_frame,
    monthly_table,
    realised_alerts,
    realised_evaluation,
)
from training.registry.store import Tracking
from training.replay.options import pin_model
from training.replay.outputs import feature_kinds

JSON_FILE = "monitor.json"
LINKED_COLUMNS = [
    "seq", "index_date", "patient_pseudonym", "outcome", "age", "sex", "pathway", "probability",
    "band",
]  # fmt: skip
HTML_FILE = "monitor.html"


@dataclass(frozen=True)
class MonitorOptions:
    model: str
    out: Path
    audit_url: str
    hmac_key: str | None  # the server's (needed with outcomes)
    window: Window
    policy: ModelSpec  # the spec whose `monitoring` block sets the alert thresholds
    outcomes: Path | None = None
    follow_up_end: date | None = None  # the day the outcomes are complete to (default: today)
    n_boot: int = 200
    seed: int = 20261201


@dataclass
class MonitorResult:
    report: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def fired(self) -> list[dict[str, Any]]:
        return [a for a in self.report.get("alerts", []) if a.get("fired")]

    @property
    def nothing_audited(self) -> bool:
        return bool(self.report.get("nothing_audited"))


def input_names(options: MonitorOptions) -> list[str]:
    """The inputs read from the trail: every catalogue analyte and the spec's derived ones."""
    spec = options.policy
    return [
        *spec.catalogue.codes,
        *(d.name for d in spec.derived if d.name not in spec.catalogue),
    ]


def _versions(frames: AuditFrames) -> tuple[list[str], list[str]]:
    """The versions that answered (scored at least once) and the shadow versions."""
    served = frames.served.loc[frames.served["outcome"] == "scored", "model_version"]
    served_versions = sorted({str(v) for v in served.dropna()}, key=_number)
    shadows = sorted({str(v) for v in frames.shadow["model_version"].dropna()}, key=_number)
    return served_versions, shadows


def _number(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _load(tracking: Tracking, name: str, versions: list[str], scratch: Path) -> dict[str, Any]:
    return {v: pin_model(tracking, f"{name}/{v}", scratch).predictor for v in versions}


def _version_block(
    label: str,
    rows: pd.DataFrame,
    predictor: TriagePredictor,
    options: MonitorOptions,
    linked: pd.DataFrame | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One version's drift and (with outcomes) realised performance, and its alerts."""
    policy = options.policy.monitoring
    scored = rows.loc[rows["outcome"] == "scored"]
    table = input_drift(scored, predictor.reference, feature_kinds(predictor.spec))
    alerts = drift_alerts(table, policy, label)
    block: dict[str, Any] = {
        "label": label,
        "scored": len(scored),
        "thresholds": predictor.thresholds.to_dict(),
        "drift": table.to_dict(orient="records"),
    }
    if linked is not None:
        frame = evaluation_frame(linked, predictor.spec)
        block["realised_rows"] = len(frame)
        if len(frame) and 0 < frame[predictor.spec.outcome.column].sum() < len(frame):
            evaluation = realised_evaluation(frame, predictor, options.n_boot, options.seed)
            block["realised"] = evaluation
            block["monthly"] = monthly_table(frame, predictor.spec)
            alerts += realised_alerts(evaluation, predictor.spec, options.policy, label)
        else:
            block["realised"] = None
            block["realised_note"] = (
                f"{len(frame):,} scores with elapsed horizons and "
                f"{int(frame[predictor.spec.outcome.column].sum()) if len(frame) else 0} cancers:"
                " realised performance needs both cancers and non-cancers"
            )
    return block, alerts


def _outcome_summary(outcomes: Outcomes, linked: list[pd.DataFrame], end: date) -> dict[str, Any]:
    scores = pd.concat(linked, ignore_index=True) if linked else pd.DataFrame()
    return {
        "rows": outcomes.rows,
        "used": len(outcomes.frame) - outcomes.excluded.get("no_audited_score", 0),
        "excluded": outcomes.counts(),
        "example_rows": {k: v[:5] for k, v in outcomes.examples.items()},
        "follow_up_end": str(end),
        "scores_elapsed": int(scores["elapsed"].sum()) if len(scores) else 0,
        "scores_open": int((~scores["elapsed"]).sum()) if len(scores) else 0,
    }


def monitor(tracking: Tracking, options: MonitorOptions) -> MonitorResult:
    """Run every check for `options.model` and write monitor.json and monitor.html."""
    from training.monitor.report import render_monitor

    frames = read_audit(options.audit_url, options.model, options.window, input_names(options))
    options.out.mkdir(parents=True, exist_ok=True)
    head: dict[str, Any] = {
        "model": options.model,
        "window": options.window.describe(),
        "audit_store": _masked(options.audit_url),
        "policy": options.policy.monitoring.model_dump(mode="json"),
        "policy_source": f"spec {options.policy.name} (monitoring block)",
        "bootstrap": {"n_boot": options.n_boot, "seed": options.seed},
    }
    if frames.served.empty:
        empty = {
            **head,
            "nothing_audited": True,
            "alerts": [],
            "reason": f"no audited request for {options.model} in {options.window.describe()}",
        }
        return _write(options, MonitorResult(json_safe(empty)), render_monitor)
    served_versions, shadow_versions = _versions(frames)
    policy = options.policy.monitoring
    codes = code_rates(frames.served, frames.codes, policy)
    agreement = shadow_agreement(frames.served, frames.shadow, policy)
    alerts = [*codes["alerts"], *(a["alert"] for a in agreement)]
    outcomes: Outcomes | None = None
    end = options.follow_up_end or date.today()
    if options.outcomes is not None:
        problem = (
            "no HMAC key: linking outcomes needs the server's (TRIAGE_HMAC_KEY, or the work "
            "folder's serving/hmac.key)"
            if options.hmac_key is None
            else key_problem(options.audit_url, options.hmac_key)
        )
        if problem is not None:
            raise OutcomesError(problem)
        assert options.hmac_key is not None
        outcomes = read_outcomes(
            options.outcomes, options.hmac_key, end, options.policy.split.time_zone
        )
    versions: list[dict[str, Any]] = []
    linked_frames: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="triage-monitor-") as scratch:
        predictors = _load(
            tracking,
            options.model,
            sorted({*served_versions, *shadow_versions}, key=_number),
            Path(scratch),
        )
    horizon = None
    for role, frame, listed in (
        ("served", frames.served, served_versions),
        ("shadow", frames.shadow, shadow_versions),
    ):
        for version in listed:
            predictor = predictors[version]
            horizon = predictor.spec.outcome.horizon_days
            rows = frame.loc[frame["model_version"] == version]
            linked = None
            if outcomes is not None:
                result = link_outcomes(
                    rows[LINKED_COLUMNS],
                    outcomes,
                    horizon,
                    end,
                    predictor.spec.outcome.column,
                    count_unmatched=False,
                )
                linked = result.frame
                linked_frames.append(linked.loc[linked["outcome"] == "scored"])
            label = f"{'shadow ' if role == 'shadow' else ''}v{version}"
            block, found = _version_block(label, rows, predictor, options, linked)
            versions.append({"role": role, "version": version, **block})
            alerts += found
    report: dict[str, Any] = {
        **head,
        "nothing_audited": False,
        "requests": len(frames.served),
        "shadow_rows": len(frames.shadow),
        "served_versions": served_versions,
        "shadow_versions": shadow_versions,
        "weekly": weekly_volumes(frames.served),
        "refusals": codes["refusals"],
        "warnings": codes["warnings"],
        "shadow_agreement": agreement,
        "versions": versions,
        "alerts": alerts,
    }
    if outcomes is not None:
        scored = frames.served.loc[frames.served["outcome"] == "scored"]
        link_outcomes(scored[LINKED_COLUMNS], outcomes, horizon, end, count_unmatched=True)
        report["outcomes"] = _outcome_summary(outcomes, linked_frames[: len(served_versions)], end)
    return _write(options, MonitorResult(json_safe(report)), render_monitor)


def _write(options: MonitorOptions, result: MonitorResult, render: Any) -> MonitorResult:
    json_path, html_path = options.out / JSON_FILE, options.out / HTML_FILE
    write_json(json_path, result.report)
    html_path.write_text(render(result.report))
    result.files = [json_path, html_path]
    return result


def _masked(url: str) -> str:
    """The store's URL without its password (it parsed: the store was read through it)."""
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)
