"""What the replay found, with outcomes: what would have happened (bands and cancers by year), the
cancers that would have been banded green, the training evaluation on the replayed rows, and
the side-by-side comparison of two versions on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from models.predictor import TriagePredictor
from models.spec import ModelSpec
from models.triage import BANDS
from training.evaluation.metrics import auc_ci
from training.evaluation.model import evaluate_model, pair_predictions
from training.replay.chunks import INELIGIBLE, SCORED
from training.replay.summaries import ROW_ID

# --- what would have happened, evaluation, comparison ---------------------------------------------


def what_would_have_happened(tally: pd.DataFrame) -> pd.DataFrame:
    """Per period (year) and in total: rows, ineligible, scored, how many would have been ruled
    out (green) or expedited (red), and, with outcomes, the cancers in each band."""
    if tally.empty:
        return pd.DataFrame()
    rows = []
    for period, part in [*tally.groupby("period", sort=True), ("total", tally)]:
        scored = part[part["status"] == SCORED]
        cancer = scored[scored["outcome"] == 1]
        known = scored[scored["outcome"] >= 0]["count"].sum()

        def count(frame: pd.DataFrame, band: str) -> int:
            return int(frame.loc[frame["band"] == band, "count"].sum())

        n_scored = int(scored["count"].sum())
        cancers = int(cancer["count"].sum())
        row: dict[str, Any] = {
            "period": str(period),
            "rows": int(part["count"].sum()),
            "ineligible": int(part.loc[part["status"] == INELIGIBLE, "count"].sum()),
            "scored": n_scored,
            "green (ruled out)": count(scored, "green"),
            "amber": count(scored, "amber"),
            "red (expedited)": count(scored, "red"),
            "green share": count(scored, "green") / n_scored if n_scored else math.nan,
            "red share": count(scored, "red") / n_scored if n_scored else math.nan,
        }
        if known:
            row |= {
                "cancers": cancers,
                "cancers green": count(cancer, "green"),
                "cancers red": count(cancer, "red"),
                "cancers missed by rule-out (share)": count(cancer, "green") / cancers
                if cancers
                else math.nan,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def green_cancers(evaluation: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Every cancer that would have been banded green: ids, date, period, site, probability."""
    outcome = spec.outcome.column
    if evaluation.empty or outcome not in evaluation:
        return pd.DataFrame()
    rows = evaluation[(evaluation[outcome] == 1) & (evaluation["band"] == "green")]
    columns = [c for c in ("patient_id", "referral_id", spec.split.date_column, "period",
                           "cancer_site", "pathway", "probability") if c in rows]  # fmt: skip
    out = rows[columns].reset_index(drop=True)
    for column in ("period", "cancer_site", "pathway"):
        if column in out:
            out[column] = out[column].astype("string")
    return out


def green_cancers_by_site(cancers: pd.DataFrame) -> pd.DataFrame:
    """Green-banded cancers counted by period and site (site `unknown` when not recorded)."""
    if cancers.empty:
        return pd.DataFrame(columns=["period", "cancer_site", "cancers banded green"])
    site = (
        cancers["cancer_site"] if "cancer_site" in cancers else pd.Series("unknown", cancers.index)
    )
    frame = pd.DataFrame({"period": cancers["period"], "cancer_site": site.fillna("unknown")})
    counts = frame.groupby(["period", "cancer_site"]).size().rename("cancers banded green")
    return counts.reset_index()


def evaluate_replay(
    evaluation: pd.DataFrame, predictor: TriagePredictor, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """The training evaluation (`evaluation.model.evaluate_model`) on the scored rows with a
    known outcome; None when the cohort has no outcome or only one class."""
    outcome = predictor.spec.outcome.column
    if evaluation.empty or outcome not in evaluation:
        return None
    spec = predictor.spec
    # Only what the evaluation reads: every copy it makes of a national cohort costs memory.
    wanted = ["patient_id", spec.split.date_column, "probability", "true_risk", "age", "sex",
              "matched_set", *(c for c in spec.subgroups if c != "age_band")]  # fmt: skip
    rows = evaluation[[outcome, *(c for c in dict.fromkeys(wanted) if c in evaluation)]]
    known = rows[outcome].notna().to_numpy()
    if not known.all():
        rows = rows[known].reset_index(drop=True)
    if rows.empty or rows[outcome].nunique() < 2:
        return None
    rows = rows.assign(**{outcome: rows[outcome].to_numpy().astype(np.int64)})
    return evaluate_model(
        rows, rows["probability"].to_numpy(np.float64), predictor.thresholds,
        predictor.calibration, predictor.spec, n_boot, seed,
    )  # fmt: skip


def compare_models(
    a: pd.DataFrame,
    b: pd.DataFrame,
    labels: tuple[str, str],
    outcome: str,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Side by side on the rows both models scored: band agreement, and with outcomes the AUC
    of each (patient bootstrap CI), the paired AUC difference A - B and the O/E of each."""
    paired = pair_predictions(
        a[[ROW_ID, "patient_id", outcome, "probability", "band"]],
        b[[ROW_ID, "probability", "band"]],
        key=ROW_ID,
        outcome=outcome,
        n_boot=n_boot,
        seed=seed,
    )
    rows = paired.rows
    cross = pd.crosstab(
        pd.Categorical(rows["band"], categories=list(BANDS)),
        pd.Categorical(rows["band_b"], categories=list(BANDS)),
        dropna=False,
    )
    result: dict[str, Any] = {
        "models": list(labels),
        "paired_rows": len(rows),
        "band_agreement": float((rows["band"] == rows["band_b"]).mean()) if len(rows) else math.nan,
        "bands": {
            str(r): {str(c): int(cross.loc[r, c]) for c in cross.columns} for r in cross.index
        },
    }
    if paired.auc_difference is None:
        return result
    known = paired.known
    y = known[outcome].to_numpy(np.int64)
    groups = known["patient_id"].to_numpy()
    p_a, p_b = known["probability"].to_numpy(), known["probability_b"].to_numpy()
    result |= {
        "rows_with_outcome": len(known),
        "events": int(y.sum()),
        "auc": {
            labels[0]: auc_ci(y, p_a, groups, n_boot=n_boot, seed=seed),
            labels[1]: auc_ci(y, p_b, groups, n_boot=n_boot, seed=seed),
        },
        "auc_difference": paired.auc_difference,
        "observed_expected": {
            labels[0]: float(y.sum() / p_a.sum()),
            labels[1]: float(y.sum() / p_b.sum()),
        },
    }
    return result


def comparison_tables(comparison: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The paired comparison as report tables: metrics side by side, and the band cross-table."""
    a, b = comparison["models"]
    tables: dict[str, pd.DataFrame] = {}
    if "auc" in comparison:
        diff = comparison["auc_difference"]
        rows = [
            {
                "model": label,
                "rows (scored by both, with outcome)": comparison["rows_with_outcome"],
                "cancers": comparison["events"],
                "AUC [95% CI]": _interval_text(comparison["auc"][label]),
                "O/E": f"{comparison['observed_expected'][label]:.3f}",
            }
            for label in (a, b)
        ]
        rows.append(
            {
                "model": f"{a} - {b}",
                "rows (scored by both, with outcome)": comparison["rows_with_outcome"],
                "cancers": comparison["events"],
                "AUC [95% CI]": _interval_text(diff, signed=True)
                + " (paired patient-level bootstrap)",
                "O/E": "",
            }
        )
        tables[f"Side by side: {a} vs {b} (paired)"] = pd.DataFrame(rows)
    cross = pd.DataFrame(comparison["bands"]).T
    cross.index = [f"{a}: {band}" for band in cross.index]
    cross.columns = [f"{b}: {band}" for band in cross.columns]
    agreement = comparison["band_agreement"]
    title = f"Band agreement ({agreement:.1%} of {comparison['paired_rows']:,} rows scored by both)"
    tables[title] = cross.reset_index(names="bands")
    return tables


def _interval_text(block: Mapping[str, float], signed: bool = False) -> str:
    form = "+.4f" if signed else ".3f"
    return f"{block['estimate']:{form}} [{block['low']:{form}}, {block['high']:{form}}]"
