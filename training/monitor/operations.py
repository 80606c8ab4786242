"""What the audit trail says without outcomes: volumes and band shares by week, refusal and
warning rates by code, input and score drift against the version's training reference, and how
each shadow version agrees with the answers served. Each check carries the threshold that
counts as an alert (`models.spec_policy.MonitoringPolicy`) and whether it fired.

Drift reuses replay's drift table (`training.evaluation.drift`), by calendar month of receipt:
PSI of the observed values and the missing-rate change per input, PSI of the probability, each
flagged only beyond sampling noise (Bonferroni over the table); an alert needs the flag and the
policy's size as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from models.spec_policy import MonitoringPolicy
from models.triage import BANDS
from training.evaluation import drift
from training.monitor.audit_rows import INPUT_PREFIX


def weekly_volumes(served: pd.DataFrame) -> list[dict[str, Any]]:
    """Per week received (Monday's date) and version: requests, scored, refused, the refusal
    rate, and each band's count and share of the scores."""
    rows = []
    for (week, version), part in served.groupby(["week", "model_version"], sort=True):
        scored = part["outcome"] == "scored"
        row: dict[str, Any] = {
            "week": week,
            "version": version,
            "requests": len(part),
            "scored": int(scored.sum()),
            "refused": int((~scored).sum()),
            "refusal_rate": float((~scored).mean()),
        }
        for band in BANDS:
            count = int((part["band"] == band).sum())
            row[band] = count
            row[f"{band}_share"] = count / row["scored"] if row["scored"] else float("nan")
        rows.append(row)
    return rows


def _code_rates(codes: pd.DataFrame, weeks: pd.Series, totals: pd.Series) -> pd.DataFrame:
    """Per week and code: how many rows carry the code and their share of `totals[week]`
    (`weeks`: each seq's week)."""
    if codes.empty:
        return pd.DataFrame(columns=["week", "code", "count", "rate"])
    found = codes.assign(week=codes["seq"].map(weeks))
    counts = found.groupby(["week", "code"]).size().rename("count").reset_index()
    counts["rate"] = counts["count"] / counts["week"].map(totals)
    return counts.sort_values(["week", "code"], kind="stable").reset_index(drop=True)


def code_rates(
    served: pd.DataFrame, codes: pd.DataFrame, policy: MonitoringPolicy
) -> dict[str, Any]:
    """Refusal codes per week (share of the week's requests) and warning codes (share of the
    week's scores), with the weeks that cross the policy's rates (given enough requests)."""
    requests = served.groupby("week").size()
    scored = served.loc[served["outcome"] == "scored"]
    weeks = served.set_index("seq")["week"]
    refusals = _code_rates(codes.loc[codes["kind"] == "refusal"], weeks, requests)
    warned = codes.loc[(codes["kind"] == "warning") & codes["seq"].isin(scored["seq"])]
    warnings = _code_rates(warned, weeks, scored.groupby("week").size())
    busy = set(requests[requests >= policy.min_week_requests].index)
    refusal_weeks = served.assign(refused=served["outcome"] == "refused").groupby("week")["refused"]
    alerts = [
        {
            "check": "refusal rate",
            "week": week,
            "value": float(rate),
            "threshold": f"> {policy.refusal_rate:g} of a week's requests "
            f"(weeks with >= {policy.min_week_requests})",
            "fired": bool(week in busy and rate > policy.refusal_rate),
        }
        for week, rate in refusal_weeks.mean().items()
    ]
    alerts += [
        {
            "check": "warning rate",
            "week": row["week"],
            "code": row["code"],
            "value": float(row["rate"]),
            "threshold": f"> {policy.warning_rate:g} of a week's scores",
            "fired": bool(
                row["week"] in busy
                and row["rate"] > policy.warning_rate
                and row["code"] not in policy.warning_codes_not_alerting
            ),
        }
        for row in warnings.to_dict(orient="records")
    ]
    return {
        "refusals": refusals.to_dict(orient="records"),
        "warnings": warnings.to_dict(orient="records"),
        "alerts": alerts,
    }


def input_drift(
    scored: pd.DataFrame, reference: Mapping[str, Any], kinds: Mapping[str, str]
) -> pd.DataFrame:
    """The drift table of one version's scored rows by month received (lab: all)."""
    features = scored.filter(like=INPUT_PREFIX)
    features = features.rename(columns=lambda c: c.removeprefix(INPUT_PREFIX))
    for name in reference.get("features", {}):
        if name in ("age",) and name not in features:
            features[name] = scored["age"].to_numpy(np.float64)
    month = scored["received_at"].dt.strftime("%Y-%m").to_numpy(object)
    counts = drift.bin_counts(
        features,
        reference,
        month,
        np.full(len(scored), drift.ALL, dtype=object),
        score=scored["probability"].to_numpy(np.float64),
    )
    return drift.drift_table(counts, reference, kinds=kinds)


def drift_alerts(table: pd.DataFrame, policy: MonitoringPolicy, label: str) -> list[dict[str, Any]]:
    """The drift rows that fire: flagged beyond noise and larger than the policy allows."""
    alerts = []
    for row in table.to_dict(orient="records"):
        is_score = row["feature"] == drift.SCORE
        limit = policy.score_psi if is_score else policy.analyte_psi
        psi_fired = bool(row["psi_flag"]) and float(row["psi"]) > limit
        change = float(row["missing_change"])
        missing_fired = bool(row["missingness_flag"]) and abs(change) > policy.missingness_change
        if psi_fired or missing_fired:
            alerts.append(
                {
                    "check": "score drift" if is_score else "input drift",
                    "model": label,
                    "feature": row["feature"],
                    "period": row["period"],
                    "psi": float(row["psi"]),
                    "missing_change": change,
                    "threshold": f"PSI > {limit:g} or missing-rate change > "
                    f"{policy.missingness_change:g}, beyond sampling noise",
                    "fired": True,
                }
            )
    return alerts


def shadow_agreement(
    served: pd.DataFrame, shadow: pd.DataFrame, policy: MonitoringPolicy
) -> list[dict[str, Any]]:
    """Per shadow version (against the version that answered): the band cross-table, how often
    the bands agree, the probability differences (shadow minus served), and the rows only one
    of them scored."""
    out = []
    answered = served[["seq", "model_version", "outcome", "probability", "band"]]
    for version, part in shadow.groupby("model_version", sort=True):
        pairs = part.merge(answered, on="seq", suffixes=("", "_served"))
        both = pairs.loc[(pairs["outcome"] == "scored") & (pairs["outcome_served"] == "scored")]
        table = pd.crosstab(
            pd.Categorical(both["band_served"], BANDS),
            pd.Categorical(both["band"], BANDS),
            dropna=False,
        )
        counts = table.to_numpy(np.int64)
        difference = (both["probability"] - both["probability_served"]).to_numpy(np.float64)
        agreement = float((both["band"] == both["band_served"]).mean()) if len(both) else np.nan
        enough = len(both) >= policy.min_week_requests
        out.append(
            {
                "shadow_version": str(version),
                "served_versions": sorted(
                    map(str, pairs["model_version_served"].dropna().unique())
                ),
                "pairs": len(pairs),
                "both_scored": len(both),
                "only_served_scored": int(
                    ((pairs["outcome_served"] == "scored") & (pairs["outcome"] != "scored")).sum()
                ),
                "only_shadow_scored": int(
                    ((pairs["outcome"] == "scored") & (pairs["outcome_served"] != "scored")).sum()
                ),
                "bands": {
                    r: dict(zip(BANDS, map(int, counts[i]), strict=True))
                    for i, r in enumerate(BANDS)
                },
                "band_agreement": agreement,
                "difference": _distribution(difference),
                "alert": {
                    "check": "shadow band agreement",
                    "model": f"shadow v{version}",
                    "value": agreement,
                    "threshold": f"< {policy.shadow_band_agreement:g} "
                    f"(with >= {policy.min_week_requests} pairs)",
                    "fired": bool(enough and agreement < policy.shadow_band_agreement),
                },
            }
        )
    return out


def _distribution(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {
        "mean": float(values.mean()),
        "mean_absolute": float(np.abs(values).mean()),
        "p5": float(p5),
        "median": float(p50),
        "p95": float(p95),
        "max_absolute": float(np.abs(values).max()),
    }
