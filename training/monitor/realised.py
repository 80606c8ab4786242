"""Realised performance: the audited scores whose horizon has elapsed, with their linked outcomes,
judged exactly as training and replay judge a model (`training.evaluation.model.evaluate_model`:
realised rule-out sensitivity of the green band, the cancer rate in it, PPV of the red band, AUC,
O/E and calibration, by period and by subgroup, with CIs), plus a table by month of the index
date built from the bands as they were served.

Monthly intervals: Wilson 95% for the proportions; for O/E, the exact Poisson 95% interval of
the observed count divided by the expected count (the sum of the probabilities).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2

from models.predictor import TriagePredictor
from models.spec import ModelSpec
from training.evaluation.basics import wilson_interval
from training.evaluation.model import evaluate_model

NAN = float("nan")


def evaluation_frame(linked: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The scored, elapsed rows in the evaluation's terms: `patient_id` (the pseudonym: the
    bootstrap draws whole patients), the spec's date column (the index date), the outcome, age,
    sex, pathway and the probability, in audit order."""
    rows = linked.loc[(linked["outcome"] == "scored") & linked["elapsed"]]
    return pd.DataFrame(
        {
            "patient_id": rows["patient_pseudonym"].fillna("unknown").to_numpy(),
            spec.split.date_column: rows["index_date"].to_numpy(),
            spec.outcome.column: rows[spec.outcome.column].to_numpy(np.int8),
            "age": rows["age"].to_numpy(np.float64),
            "sex": rows["sex"].astype("category").to_numpy(),
            "pathway": rows["pathway"].astype("category").to_numpy(),
            "probability": rows["probability"].to_numpy(np.float64),
            "band": rows["band"].to_numpy(),
        }
    )


def realised_evaluation(
    frame: pd.DataFrame, predictor: TriagePredictor, n_boot: int, seed: int
) -> dict[str, Any]:
    """`evaluate_model` on the realised rows with the version's own thresholds and calibration
    (rows of the deployed population: no case-control weighting). Subgroups: those of the spec
    the audit trail can give (sex, age band), and the pathway; the others (deprivation,
    ethnicity, lab) are not in a request and are listed as skipped."""
    spec = predictor.spec
    subgroups = (*spec.subgroups, *(["pathway"] if "pathway" not in spec.subgroups else []))
    return evaluate_model(
        frame.drop(columns=["band"]),
        frame["probability"].to_numpy(np.float64),
        predictor.thresholds,
        predictor.calibration,
        spec.model_copy(update={"subgroups": subgroups}),
        n_boot=n_boot,
        seed=seed,
        case_control_sample=False,
    )


def poisson_ratio(observed: int, expected: float) -> dict[str, float]:
    """O/E with the exact Poisson 95% interval of O, divided by E."""
    if expected <= 0:
        return {"estimate": NAN, "low": NAN, "high": NAN}
    low = 0.0 if observed == 0 else chi2.ppf(0.025, 2 * observed) / 2
    high = chi2.ppf(0.975, 2 * (observed + 1)) / 2
    return {"estimate": observed / expected, "low": low / expected, "high": high / expected}


def _proportion(successes: int, total: int) -> dict[str, float]:
    return (
        wilson_interval(successes, total) if total else {"estimate": NAN, "low": NAN, "high": NAN}
    )


def monthly_table(frame: pd.DataFrame, spec: ModelSpec) -> list[dict[str, Any]]:
    """By month of the index date: scores, cancers, expected cancers, O/E, rule-out
    sensitivity of the green band, the cancer rate in green and the PPV of red, each with its
    95% interval (module docstring), from the bands as served."""
    outcome, when = spec.outcome.column, spec.split.date_column
    months = pd.to_datetime(frame[when]).dt.strftime("%Y-%m")
    rows = []
    for month, part in frame.groupby(months, sort=True):
        y = part[outcome].to_numpy(np.int64)
        green, red = (part["band"] == "green").to_numpy(), (part["band"] == "red").to_numpy()
        cancers = int(y.sum())
        rows.append(
            {
                "month": str(month),
                "n": len(part),
                "cancers": cancers,
                "expected": float(part["probability"].sum()),
                "observed_expected": poisson_ratio(cancers, float(part["probability"].sum())),
                "green": int(green.sum()),
                "cancers_green": int(y[green].sum()),
                "rule_out_sensitivity": _proportion(cancers - int(y[green].sum()), cancers),
                "risk_in_green": _proportion(int(y[green].sum()), int(green.sum())),
                "red": int(red.sum()),
                "ppv_red": _proportion(int(y[red].sum()), int(red.sum())),
            }
        )
    return rows


def realised_alerts(
    evaluation: dict[str, Any], spec: ModelSpec, policy_spec: ModelSpec, label: str
) -> list[dict[str, Any]]:
    """Alerts on the realised metrics: the green band's rule-out sensitivity (its upper 95%
    bound below the target) and O/E (its 95% CI outside the acceptable range), each only with
    `min_events` realised cancers."""
    policy = policy_spec.monitoring
    events = int(evaluation.get("events", 0))
    target = policy.rule_out_sensitivity or spec.triage.rule_out_sensitivity
    alerts: list[dict[str, Any]] = []
    enough = events >= policy.min_events
    green = (evaluation.get("thresholds") or {}).get("green")
    if green is not None:
        sensitivity = green["sensitivity"]
        fired = enough and math.isfinite(sensitivity["high"]) and sensitivity["high"] < target
        alerts.append(
            {
                "check": "realised rule-out sensitivity",
                "model": label,
                "value": sensitivity,
                "threshold": f"upper 95% bound below {target:g} (with >= {policy.min_events} "
                f"cancers; {events} realised)",
                "fired": bool(fired),
            }
        )
    oe = evaluation["calibration"]["ci"]["observed_expected"]
    low, high = policy.observed_expected
    outside = oe["high"] < low or oe["low"] > high
    alerts.append(
        {
            "check": "realised O/E",
            "model": label,
            "value": oe,
            "threshold": f"95% CI outside {low:g}-{high:g} (with >= {policy.min_events} cancers; "
            f"{events} realised)",
            "fired": bool(enough and outside),
        }
    )
    return alerts
