"""People: referrals (pathway, age, sex, deprivation, ethnicity, lab, dates, repeat referrals) and
the myeloma source population.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.spec import PATHWAYS
from training.cohorts.simulator.conditions import low_threshold_share, ramp
from training.cohorts.simulator.world import (
    DUFFY_NULL_SHARE_BLACK,
    ETHNICITY_SHARES,
    LAB_SHARES,
    LABS,
    LOW_THRESHOLD_YOUNGER,
    MIN_REPEAT_GAP_DAYS,
    NG12_DATE,
    NG12_RAMP_DAYS,
    NG12_VOLUME,
    PATHWAY_TABLE,
    POPULATION_AGE,
    POPULATION_FEMALE,
    PRIMARY_CARE,
    REPEAT_REFERRALS,
    BoolArray,
    FloatArray,
    IntArray,
    MyelomaParams,
    ReferralParams,
)

# --- people -----------------------------------------------------------------------------------


def draw_referrals(params: ReferralParams, rng: np.random.Generator) -> pd.DataFrame:
    """One row per referral, sorted by index date: patient and referral ids, index date,
    pathway, lab, age (years), sex, deprivation quintile, ethnicity, Duffy-null phenotype."""
    counts = _referrals_per_patient(params.n, rng)
    patient = np.repeat(np.arange(len(counts)), counts)
    days = _repeat_dates(patient, params, rng)
    first = np.r_[True, patient[1:] != patient[:-1]]
    pathway = np.empty(params.n, dtype=np.int64)
    profiles = [PATHWAY_TABLE[p] for p in PATHWAYS]
    shares = np.array([p.share for p in profiles])
    female_share = np.array([p.female for p in profiles])
    pathway[first] = rng.choice(len(PATHWAYS), size=int(first.sum()), p=shares)
    female_patient = rng.random(len(counts)) < female_share[pathway[first]]
    female = female_patient[patient]
    # Later referrals: a pathway that suits the patient's sex, P(pathway | sex).
    later = ~first
    for is_female, weights in ((True, shares * female_share), (False, shares * (1 - female_share))):
        rows = later & (female == is_female)
        pathway[rows] = rng.choice(len(PATHWAYS), size=int(rows.sum()), p=weights / weights.sum())
    # A low-threshold referral (more of them after NG12) is younger and healthier [J].
    low = rng.random(params.n) < low_threshold_share(
        days.astype("datetime64[D]"), pathway == PATHWAYS.index("lower_gi"), params.practice
    )
    mean = np.array([p.age_mean for p in profiles])[pathway[first]]
    mean = mean - LOW_THRESHOLD_YOUNGER * low[first]
    sd = np.array([p.age_sd for p in profiles])[pathway[first]]
    first_age = _truncated_normal(mean, sd, 18.0, 99.0, rng)
    birth = days[first].astype(np.float64) - first_age * 365.25  # days since epoch
    age = np.floor((days.astype(np.float64) - birth[patient]) / 365.25).astype(np.int64)
    ids = rng.permutation(len(counts)).astype(np.int64) + 100_001
    frame = _people_frame(
        patient_id=ids[patient],
        index_date=days,
        pathway=categorical_from_codes(pathway, list(PATHWAYS)),
        age=age,
        female=female,
        patient_traits=_patient_traits(len(counts), rng),
        patient=patient,
        low_threshold=low,
    )
    return frame


def draw_population(params: MyelomaParams, rng: np.random.Generator) -> pd.DataFrame:
    """The myeloma source population: one index blood test per adult aged `min_age`+."""
    n = params.n
    days = _draw_days(n, params.start, params.end, params.volume_growth, rng)
    female = rng.random(n) < POPULATION_FEMALE
    mean, sd = (np.full(n, x) for x in POPULATION_AGE)
    age = np.floor(_truncated_normal(mean, sd, params.min_age, 100.0, rng))
    return _people_frame(
        patient_id=np.arange(1, n + 1, dtype=np.int64) + 5_000_000,
        index_date=days,
        pathway=categorical_from_codes(np.zeros(n, dtype=np.int8), [PRIMARY_CARE]),
        age=age.astype(np.int64),
        female=female,
        patient_traits=_patient_traits(n, rng),
        patient=np.arange(n),
    )


def _people_frame(
    *,
    patient_id: IntArray,
    index_date: npt.NDArray[np.datetime64],
    pathway: pd.Categorical[str],
    age: IntArray,
    female: BoolArray,
    patient_traits: dict[str, Any],
    patient: IntArray,
    low_threshold: BoolArray | None = None,
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "patient_id": patient_id,
            "index_date": index_date.astype("datetime64[ns]"),
            "pathway": pathway,
            "lab": categorical_from_codes(patient_traits["lab"][patient], list(LABS)),
            "age": age,
            "sex": categorical_from_codes((~female).astype(np.int8), categories=["female", "male"]),
            "deprivation": patient_traits["deprivation"][patient],
            "ethnicity": categorical_from_codes(
                patient_traits["ethnicity"][patient], categories=list(ETHNICITY_SHARES)
            ),
            "duffy_null": patient_traits["duffy_null"][patient],
        }
    )
    if low_threshold is not None:
        frame["low_threshold"] = low_threshold
    frame = frame.sort_values(["index_date", "patient_id"], kind="stable", ignore_index=True)
    frame.insert(1, "referral_id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def _patient_traits(n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Per-patient lab (region), deprivation quintile (1 most deprived), ethnicity, Duffy-null."""
    ethnicity = rng.choice(len(ETHNICITY_SHARES), size=n, p=list(ETHNICITY_SHARES.values()))
    black = ethnicity == list(ETHNICITY_SHARES).index("black")
    return {
        "lab": rng.choice(len(LABS), size=n, p=LAB_SHARES),
        "deprivation": rng.integers(1, 6, size=n).astype(np.int8),
        "ethnicity": ethnicity,
        "duffy_null": black & (rng.random(n) < DUFFY_NULL_SHARE_BLACK),
    }


def _referrals_per_patient(n: int, rng: np.random.Generator) -> IntArray:
    counts = rng.choice(np.arange(1, len(REPEAT_REFERRALS) + 1), size=n, p=REPEAT_REFERRALS)
    total = np.cumsum(counts)
    keep = int(np.searchsorted(total, n)) + 1
    counts = counts[:keep].astype(np.int64)
    counts[-1] -= int(total[keep - 1]) - n
    return counts


def _draw_days(
    n: int, start: date, end: date, growth: float, rng: np.random.Generator, step: float = 1.0
) -> npt.NDArray[np.datetime64]:
    """Dates with volume rising linearly by year (weight 1 + growth x (year - start year)),
    times `step` once NG12 has taken hold (ramped over NG12_RAMP_DAYS)."""
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    year = days.astype("datetime64[Y]").astype(np.int64)
    weight = (1.0 + growth * (year - year[0])) * (
        1.0 + (step - 1.0) * ramp(days, NG12_DATE, NG12_RAMP_DAYS)
    )
    return days[rng.choice(len(days), size=n, p=weight / weight.sum())]


def _repeat_dates(
    patient: IntArray, params: ReferralParams, rng: np.random.Generator
) -> npt.NDArray[np.datetime64]:
    """Referral dates, ascending within patient, with repeats at least MIN_REPEAT_GAP_DAYS apart
    (redrawn until they are: a handful of vectorised passes)."""
    step = NG12_VOLUME if params.practice.ng12 else 1.0
    days = _draw_days(len(patient), params.start, params.end, params.volume_growth, rng, step)
    for _ in range(1000):
        order = np.lexsort((days, patient))
        days = days[order]
        gap = np.diff(days).astype(np.int64)
        same = patient[1:] == patient[:-1]
        bad_patient = np.unique(patient[1:][same & (gap < MIN_REPEAT_GAP_DAYS)])
        if len(bad_patient) == 0:
            return days
        redraw = np.isin(patient, bad_patient)
        days[redraw] = _draw_days(
            int(redraw.sum()), params.start, params.end, params.volume_growth, rng, step
        )
    raise RuntimeError("could not space repeat referrals; is the date range too short?")


def _truncated_normal(
    mean: FloatArray, sd: FloatArray, low: float, high: float, rng: np.random.Generator
) -> FloatArray:
    values = rng.normal(mean, sd)
    bad = (values < low) | (values > high)
    while bad.any():
        values[bad] = rng.normal(mean[bad], sd[bad])
        bad = (values < low) | (values > high)
    return values


def categorical_from_codes(codes: npt.ArrayLike, categories: Sequence[str]) -> pd.Categorical[str]:
    """A categorical from integer codes (-1: missing) and its categories."""
    return pd.Categorical.from_codes(
        np.asarray(codes, dtype=np.int64), categories=pd.Index(list(categories))
    )
