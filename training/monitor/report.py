"""monitor.html: the monitor's JSON as one self-contained page (inline CSS, PNG plots, all text
escaped), alerts first, for the clinical safety officer; the JSON is for machines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.triage import BANDS
from training.evaluation.formatting import escape, interval_text, number_text
from training.evaluation.plots import GREEN, RED, figure_png
from training.evaluation.report import REPORT_CSS
from training.evaluation.report_tables import frame_table, note, table

AMBER, GREY = "#fdae61", "#999999"
COLOURS = {"green": GREEN, "amber": AMBER, "red": RED, "refused": GREY}


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _alerts(report: Mapping[str, Any]) -> str:
    fired = [a for a in report.get("alerts", []) if a.get("fired")]
    checked = len(report.get("alerts", []))
    if not fired:
        return f'<div class="findings"><h2>No alert fired</h2>{note(f"{checked:,} checks.")}</div>'
    rows = [
        [
            a.get("check", ""),
            a.get("model", ""),
            a.get("week") or a.get("period") or "",
            a.get("feature") or a.get("code") or "",
            _value(a),
            a.get("threshold", ""),
        ]
        for a in fired
    ]
    header = ["check", "model", "week / period", "input / code", "value", "alert when"]
    return (
        f'<div class="findings"><h2 class="flag">{len(fired):,} alert(s) fired</h2>'
        f"{table(header, rows)}{note(f'{checked:,} checks in all.')}</div>"
    )


def _value(alert: Mapping[str, Any]) -> str:
    value = alert.get("value")
    if isinstance(value, Mapping):
        return interval_text(value)
    if "psi" in alert:
        return f"PSI {number_text(alert['psi'])}, missing {number_text(alert['missing_change'])}"
    return number_text(value)


def _weekly_plot(weekly: pd.DataFrame) -> str:
    totals = weekly.groupby("week")[[*BANDS, "refused"]].sum()

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(totals))
        bottom = np.zeros(len(totals))
        for column in (*BANDS, "refused"):
            values = totals[column].to_numpy(np.float64)
            ax.bar(x, values, bottom=bottom, color=COLOURS[column], label=column, width=0.8)
            bottom += values
        step = max(1, len(x) // 12)
        ax.set_xticks(x[::step], list(totals.index[::step]), rotation=45, ha="right")
        ax.set_ylabel("requests")
        ax.set_xlabel("week received (Monday)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, frameon=False)

    return figure_png(draw, (8.0, 3.6))


def _volumes(report: Mapping[str, Any]) -> str:
    weekly = pd.DataFrame(report.get("weekly", []))
    if weekly.empty:
        return ""
    shown = weekly[
        [
            "week",
            "version",
            "requests",
            "scored",
            "refused",
            "refusal_rate",
            *(f"{b}_share" for b in BANDS),
        ]
    ]
    return _section("Volumes and bands by week", _weekly_plot(weekly) + frame_table(shown))


def _codes(report: Mapping[str, Any]) -> str:
    parts = []
    for key, title, share in (
        ("refusals", "Refusal codes", "share of the week's requests"),
        ("warnings", "Warning codes", "share of the week's scores"),
    ):
        frame = pd.DataFrame(report.get(key, []))
        body = frame_table(frame) if len(frame) else note("none")
        parts.append(f"<h3>{escape(title)} ({escape(share)})</h3>{body}")
    return _section("Refusals and warnings", "".join(parts))


def _psi_plot(rows: pd.DataFrame, limit: float) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        values = rows["psi"].astype(float).fillna(0.0).to_numpy()
        colours = [RED if f else "#4575b4" for f in rows["flagged"].astype(bool)]
        ax.barh(np.arange(len(rows)), values, color=colours)
        ax.set_yticks(np.arange(len(rows)), list(rows["feature"]))
        ax.axvline(limit, color=RED, linestyle="--", linewidth=1, label=f"alert PSI {limit:g}")
        ax.set_xlabel("PSI against the training reference (all months)")
        ax.invert_yaxis()
        ax.legend(loc="lower right", frameon=False)

    return figure_png(draw, (7.0, 1.0 + 0.22 * len(rows)))


def _drift(block: Mapping[str, Any], policy: Mapping[str, Any]) -> str:
    table_ = pd.DataFrame(block.get("drift", []))
    if table_.empty:
        return note("No drift table: no scored rows with inputs.")
    overall = table_.loc[table_["period"] == "all"]
    columns = [
        "feature",
        "kind",
        "n",
        "missing_rate",
        "reference_missing_rate",
        "missing_change",
        "psi",
        "psi_flag",
        "missingness_flag",
    ]
    by_month = table_.loc[(table_["period"] != "all") & table_["flagged"].astype(bool)]
    return (
        _psi_plot(overall, float(policy["analyte_psi"]))
        + "<h4>All months</h4>"
        + frame_table(overall[columns])
        + "<h4>Months flagged beyond noise</h4>"
        + (frame_table(by_month[["period", *columns]]) if len(by_month) else note("none"))
    )


def _realised_rows(ev: Mapping[str, Any]) -> list[list[str]]:
    green = (ev.get("thresholds") or {}).get("green") or {}
    red = (ev.get("thresholds") or {}).get("red") or {}
    rows = [
        ["scores with elapsed horizons", number_text(ev.get("n"))],
        ["cancers", number_text(ev.get("events"))],
        ["AUC", interval_text(ev.get("auc"))],
        ["O/E", interval_text(ev["calibration"]["ci"]["observed_expected"])],
        ["calibration slope", interval_text(ev["calibration"]["ci"]["slope"])],
    ]
    if green:
        rows += [
            ["green: rule-out sensitivity", interval_text(green.get("sensitivity"))],
            ["green: cancers in green", number_text(green.get("cancers_ruled_out"))],
            ["green: cancer rate in green", interval_text(green.get("risk_in_green"))],
        ]
    if red:
        rows += [
            ["red: PPV", interval_text(red.get("ppv"))],
            ["red: cancers expedited", number_text(red.get("cancers_expedited"))],
        ]
    return rows


def _monthly_plot(monthly: Sequence[Mapping[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(monthly))
        oe = np.array([m["observed_expected"]["estimate"] for m in monthly], dtype=float)
        low = np.array([m["observed_expected"]["low"] for m in monthly], dtype=float)
        high = np.array([m["observed_expected"]["high"] for m in monthly], dtype=float)
        ax.errorbar(x, oe, yerr=[oe - low, high - oe], fmt="o", color="#4575b4", capsize=2)
        ax.axhline(1.0, color=GREY, linewidth=1)
        step = max(1, len(x) // 12)
        ax.set_xticks(x[::step], [m["month"] for m in monthly][::step], rotation=45, ha="right")
        ax.set_ylabel("observed / expected (95% CI)")
        ax.set_xlabel("month of the index date")

    return figure_png(draw, (8.0, 3.2))


def _realised(block: Mapping[str, Any]) -> str:
    ev = block.get("realised")
    if not ev:
        return note(str(block.get("realised_note") or "No outcomes given."))
    monthly = block.get("monthly") or []
    months = pd.DataFrame(
        [
            {
                "month": m["month"],
                "n": m["n"],
                "cancers": m["cancers"],
                "expected": m["expected"],
                "O/E (95% CI)": interval_text(m["observed_expected"]),
                "rule-out sensitivity": interval_text(m["rule_out_sensitivity"]),
                "cancer rate in green": interval_text(m["risk_in_green"]),
                "PPV red": interval_text(m["ppv_red"]),
            }
            for m in monthly
        ]
    )
    subgroups = pd.DataFrame((ev.get("subgroups") or {}).get("rows") or [])
    keep = [
        c
        for c in (
            "column",
            "level",
            "n",
            "events",
            "auc",
            "observed_expected",
            "observed_expected_ci",
            "rule_out_sensitivity",
        )
        if c in subgroups
    ]
    return (
        table(["realised metric", "value (95% CI)"], _realised_rows(ev))
        + "<h4>By month of the index date</h4>"
        + _monthly_plot(monthly)
        + frame_table(months)
        + "<h4>By subgroup</h4>"
        + (frame_table(subgroups[keep].map(_cell)) if len(subgroups) else note("none"))
    )


def _cell(value: Any) -> Any:
    return interval_text(value) if isinstance(value, Mapping) else value


def _versions(report: Mapping[str, Any]) -> str:
    parts = []
    policy = report.get("policy", {})
    for block in report.get("versions", []):
        title = f"{block['label']} ({block['role']}): {block['scored']:,} scored"
        parts.append(
            f"<h3>{escape(title)}</h3><h4>Input and score drift</h4>{_drift(block, policy)}"
            f"<h4>Realised performance</h4>{_realised(block)}"
        )
    return _section("By model version", "".join(parts))


def _agreement(report: Mapping[str, Any]) -> str:
    found = report.get("shadow_agreement") or []
    if not found:
        return _section("Shadow models", note("No shadow scores in this window."))
    parts = []
    for entry in found:
        cross = [[f"served {r}", *(f"{entry['bands'][r][c]:,}" for c in BANDS)] for r in BANDS]
        diff = entry.get("difference") or {}
        text = (
            f"shadow v{entry['shadow_version']} against served "
            f"{', '.join('v' + v for v in entry['served_versions'])}: "
            f"{entry['both_scored']:,} pairs both scored, bands agree in "
            f"{number_text(entry['band_agreement'])}; only the served version scored "
            f"{entry['only_served_scored']:,}, only the shadow {entry['only_shadow_scored']:,}"
        )
        parts.append(
            f"<h3>{escape(text)}</h3>"
            + table(["", *(f"shadow {c}" for c in BANDS)], cross)
            + table(
                ["probability difference (shadow - served)", "value"],
                [[k, number_text(v, 4)] for k, v in diff.items()],
            )
        )
    return _section("Shadow models: agreement with the served answers", "".join(parts))


def _outcomes(report: Mapping[str, Any]) -> str:
    found = report.get("outcomes")
    if not found:
        return ""
    rows = [[reason, f"{count:,}"] for reason, count in found["excluded"].items()]
    text = (
        f"{found['rows']:,} outcome rows; {found['used']:,} linked to audited scores. "
        f"Outcomes complete to {found['follow_up_end']}: {found['scores_elapsed']:,} served "
        f"scores have elapsed horizons and count; {found['scores_open']:,} are still open."
    )
    return _section("Outcome linkage", note(text) + table(["left out", "rows"], rows))


def render_monitor(report: Mapping[str, Any]) -> str:
    """The page for one monitor run."""
    title = f"Monitor: {report['model']}"
    facts = [
        ["window", report["window"]],
        ["audit store", report["audit_store"]],
        ["alert thresholds", report.get("policy_source", "")],
    ]
    if report.get("nothing_audited"):
        body = f'<div class="findings"><h2>Nothing audited</h2>{note(report["reason"])}</div>'
    else:
        facts += [
            ["requests", f"{report['requests']:,}"],
            ["shadow scores", f"{report['shadow_rows']:,}"],
        ]
        body = (
            _alerts(report)
            + _volumes(report)
            + _codes(report)
            + _agreement(report)
            + _outcomes(report)
            + _versions(report)
        )
    policy = [[k, str(v)] for k, v in (report.get("policy") or {}).items()]
    thresholds = table(["threshold", "value"], policy)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{REPORT_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"{table(['run', ''], facts)}{body}"
        f"{_section('Alert thresholds (spec monitoring block)', thresholds)}"
        "</body></html>"
    )
