"""Disease in everyone: benign conditions and cancer-like blood patterns, each with a prevalence
by age, sex and pathway and a severity that moves the bloods it moves in real life; and the
changes in referral practice over 2011-2019 (NICE NG12 in 2015, FIT triage in lower GI).

Heavy tails come from these mixtures (an iron-deficient patient's Hb, an infected patient's
CRP), not from a fatter noise term. Conditions change who has which values (P(x)) and which
tests are requested; they never enter the outcome directly: cancer is drawn afterwards from what
a model can see, so `true_risk` stays exactly P(cancer | visible data). A person with a
cancer-like pattern (occult bleeding, marrow infiltration, a paraprotein with end-organ damage)
therefore has cancer with the probability the site models give those values; the site terms
rise steeply across these patterns, so cancers carry them in the shares the targets require
(docs/data-card.md §3a).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from models.calibration import expit, logit
from training.cohorts.simulator.world import (
    FIT_DATE,
    FIT_LOW_THRESHOLD_SHARE,
    LOW_THRESHOLD_SHARE,
    NG12_DATE,
    NG12_RAMP_DAYS,
    PRIMARY_CARE,
    FloatArray,
    Practice,
)


@dataclass(frozen=True)
class Condition:
    """One condition. Severity s is gamma-distributed (mean 1, coefficient of variation
    `spread`) where present, 0 where absent; each effect is a shift of s x the given amount
    (log units for analytes simulated on the log scale, canonical units otherwise; see `effect`
    for how rises combine), `latent` shifts the four normal latent factors (inflammation, iron
    deficiency, renal, frailty) the same way, and `testing` adds log-odds to a panel's request
    (symptoms make clinicians test)."""

    name: str
    prevalence: float  # at age 60, men, on a pathway without its own entry
    age: float = 0.0  # log-odds per decade from 60
    female: float = 0.0  # log-odds, women vs men
    premenopausal: float = 0.0  # extra log-odds in women under 50
    pathway: Mapping[str, float] = field(default_factory=dict)  # log-odds by pathway
    spread: float = 0.4
    latent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    effects: Mapping[str, float] = field(default_factory=dict)
    testing: Mapping[str, float] = field(default_factory=dict)
    acute: bool = False  # comes and goes: older draws do not share it
    low_threshold: float = -1.0  # log-odds in a low-threshold referral (NG12, see Practice)
    fit_triage: float = 0.0  # log-odds in lower-GI referrals once FIT triage selects them
    source: str = "[J]"


# Judgement [J] anchored where the data card says so. Pathway entries are the referral reason:
# iron-deficiency anaemia is itself a lower-GI (and upper-GI) referral criterion [NG12].
CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "iron_deficiency", 0.035, age=0.1, female=0.5, premenopausal=1.0, spread=0.4,
        pathway={"lower_gi": 2.3, "upper_gi": 1.5, "gynaecological": 0.7, "haematological": 1.0,
                 PRIMARY_CARE: -0.3},
        latent=(0.0, 1.5, 0.0, 0.0),
        effects={"haemoglobin": -0.13, "mcv": -0.06, "mchc": -0.02, "rdw": 0.14,
                 "platelets": 0.14, "ferritin": -1.6},
        testing={"ferritin": 2.0, "liver": 0.5}, fit_triage=0.6, source="[HB4][LGI-A][BJC-HB]",
    ),
    Condition(
        "occult_bleeding", 0.002, age=0.3, spread=0.5,
        pathway={"lower_gi": 3.0, "upper_gi": 2.5, PRIMARY_CARE: 0.5},
        latent=(0.3, 2.0, 0.0, 0.0),
        effects={"haemoglobin": -0.14, "mcv": -0.08, "mchc": -0.03, "rdw": 0.18,
                 "platelets": 0.2, "ferritin": -1.8, "albumin": -1.5},
        testing={"ferritin": 2.0, "cea": 1.0}, low_threshold=-1.5, fit_triage=1.0,
        source="[HB][HB4][PLT]",
    ),
    Condition(
        "chronic_inflammation", 0.10, age=0.15, female=0.2, spread=0.4,
        pathway={"haematological": 0.5, "lung": 0.3},
        latent=(1.3, 0.0, 0.0, 0.5),
        effects={"haemoglobin": -0.03, "crp": 1.4, "albumin": -2.5, "globulin": 0.5,
                 "platelets": 0.1, "ferritin": 0.5},
        testing={"crp": 1.0, "esr": 1.2}, source="[IM]",
    ),
    Condition(
        "acute_infection", 0.055, spread=0.25,
        pathway={"lung": 1.2, "urological": 0.6, "upper_gi": 0.3, "lower_gi": 0.4,
                 "head_and_neck": 0.4, PRIMARY_CARE: -0.5},
        latent=(1.2, 0.0, 0.0, 0.0),
        effects={"crp": 2.2, "neutrophils": 0.55, "lymphocytes": -0.2, "platelets": 0.08,
                 "albumin": -3.0, "haemoglobin": -0.03, "ferritin": 0.6},
        testing={"crp": 2.0, "esr": 1.5}, acute=True, low_threshold=-0.5, source="[IM]",
    ),
    Condition(
        "ckd", 0.05, age=0.5, spread=0.5,
        pathway={"urological": 0.5, "haematological": 0.3},
        latent=(0.0, 0.0, 2.2, 0.3),
        effects={"creatinine": 0.35, "urea": 0.35, "haemoglobin": -0.06, "potassium": 0.25,
                 "phosphate": 0.12},
        testing={"renal": 2.0, "bone": 1.0}, source="[J]",
    ),
    Condition(
        "liver_disease", 0.04, female=-0.4, spread=0.5,
        pathway={"upper_gi": 0.8, PRIMARY_CARE: -0.3},
        effects={"alt": 0.9, "ggt": 1.2, "bilirubin": 0.35, "albumin": -2.0, "platelets": -0.15,
                 "mcv": 0.04},
        testing={"liver": 2.0, "ggt": 1.5}, source="[J]",
    ),
    Condition(
        "cholestasis", 0.003, age=0.3, spread=0.5,
        pathway={"upper_gi": 2.3, PRIMARY_CARE: -0.7},
        effects={"bilirubin": 1.6, "alp": 1.0, "ggt": 1.4, "alt": 0.8, "albumin": -2.0},
        testing={"liver": 3.0, "ggt": 2.0}, low_threshold=-1.5, source="[J]",
    ),
    Condition(
        "marrow_infiltration", 0.002, age=0.3, spread=0.5,
        pathway={"haematological": 2.8, PRIMARY_CARE: 0.0},
        latent=(0.3, 0.0, 0.0, 0.5),
        effects={"haemoglobin": -0.2, "platelets": -0.6, "neutrophils": -0.5, "mcv": 0.05,
                 "rdw": 0.1},
        low_threshold=-1.5, source="[MY3][J]",
    ),
    Condition(
        "hypercalcaemia", 0.008, age=0.2, female=0.5, spread=0.4,
        pathway={"lung": 0.8, "breast": 0.3, "urological": 0.4},
        effects={"calcium_adjusted": 0.22, "alp": 0.2, "phosphate": -0.12},
        testing={"bone": 1.5}, source="[CA3][J]",
    ),
    Condition(
        "plasma_cell_disorder", 0.0015, age=0.5, female=-0.3, spread=0.35,
        pathway={"haematological": 2.0, PRIMARY_CARE: 0.0},
        latent=(0.3, 0.0, 1.0, 0.3),
        effects={"globulin": 14.0, "albumin": -3.0, "haemoglobin": -0.17, "calcium_adjusted": 0.2,
                 "creatinine": 0.18, "neutrophils": -0.25, "platelets": -0.2, "mcv": 0.06},
        testing={"esr": 1.2, "bone": 1.0, "crp": 0.3}, source="[MY2][MY3][MY5][MY6]",
    ),
)  # fmt: skip
CONDITION_NAMES: tuple[str, ...] = tuple(c.name for c in CONDITIONS)
BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}


# --- practice over time -------------------------------------------------------------------------


def ramp(days: np.ndarray, start: date, length_days: int) -> FloatArray:
    """0 before `start`, rising linearly to 1 over `length_days`."""
    since = (days - np.datetime64(start, "D")).astype(np.int64)
    return np.asarray(np.clip(since / length_days, 0.0, 1.0), dtype=np.float64)


def low_threshold_share(days: np.ndarray, lower_gi: np.ndarray, practice: Practice) -> FloatArray:
    """P(a referral is a low-threshold one) per referral date: NG12 raises it; FIT triage
    lowers it again in lower GI."""
    before, after = LOW_THRESHOLD_SHARE
    share = before + (after - before) * ramp(days, NG12_DATE, NG12_RAMP_DAYS) * practice.ng12
    fit = fit_share(days, lower_gi, practice)
    return np.asarray(share * (1 - fit) + FIT_LOW_THRESHOLD_SHARE * fit)


def fit_share(days: np.ndarray, lower_gi: np.ndarray, practice: Practice) -> FloatArray:
    """How far FIT triage has replaced direct referral, per referral (0 outside lower GI)."""
    return np.asarray(ramp(days, FIT_DATE, NG12_RAMP_DAYS) * lower_gi * practice.fit_triage)


def per_category(column: pd.Series, mapping: Mapping[str, float], default: float) -> FloatArray:
    """A per-row number looked up by a categorical column's category (no per-row Python)."""
    lookup = np.array([mapping.get(str(c), default) for c in column.cat.categories] + [default])
    return np.asarray(lookup[column.cat.codes.to_numpy()], dtype=np.float64)


# --- drawing ------------------------------------------------------------------------------------


def draw_conditions(
    people: pd.DataFrame, rng: np.random.Generator, practice: Practice | None = None
) -> dict[str, FloatArray]:
    """Severity per condition and row (0: absent). A low-threshold referral (`low_threshold`,
    from `people`) has fewer conditions; FIT triage selects lower-GI referrals with more
    bleeding. The same random numbers are drawn whatever the practice switches say."""
    n = len(people)
    age = people["age"].to_numpy(np.float64)
    female = (people["sex"] == "female").to_numpy()
    u = rng.random((n, len(CONDITIONS)))
    shapes = np.array([1.0 / c.spread**2 for c in CONDITIONS])
    gamma = rng.standard_gamma(shapes, (n, len(CONDITIONS))) / shapes
    low = people["low_threshold"].to_numpy() if "low_threshold" in people else np.zeros(n, bool)
    fit = np.zeros(n)
    if practice is not None:
        days = people["index_date"].to_numpy().astype("datetime64[D]")
        fit = fit_share(days, (people["pathway"] == "lower_gi").to_numpy(), practice)
    out = {}
    for k, c in enumerate(CONDITIONS):
        log_odds = (
            logit(c.prevalence)
            + c.age * (age - 60.0) / 10.0
            + c.female * female
            + c.premenopausal * (female & (age < 50))
            + per_category(people["pathway"], c.pathway, 0.0)
            + c.low_threshold * low
            + c.fit_triage * fit
        )
        present = u[:, k] < expit(log_odds)
        out[c.name] = np.where(present, gamma[:, k], 0.0)
    return out


def with_conditions(latent: FloatArray, severity: Mapping[str, FloatArray]) -> FloatArray:
    """The latent factors (n x 5) with the conditions' shifts of the four normal ones."""
    shifted = latent.copy()
    for c in CONDITIONS:
        shifted[:, :4] += severity[c.name][:, None] * np.asarray(c.latent)[None, :]
    return shifted


def effect(code: str, severity: Mapping[str, FloatArray], log: bool) -> FloatArray | float:
    """The conditions' combined shift of one analyte (0.0 when none moves it). Shifts add,
    except rises of an analyte simulated on the log scale: there each condition's excess output
    adds on the natural scale (two sources of inflammation add their CRP), so the shift is
    log(1 + sum(e^a - 1)) rather than sum(a), and co-existing conditions do not multiply."""
    falls: FloatArray | float = 0.0
    excess: FloatArray | float = 0.0
    for c in CONDITIONS:
        amount = c.effects.get(code)
        if amount is None:
            continue
        shift = amount * severity[c.name]
        if log and amount > 0:
            excess = excess + np.expm1(shift)
        else:
            falls = falls + shift
    return falls + np.asarray(np.log1p(excess), dtype=np.float64)


def testing_log_odds(panel: str, severity: Mapping[str, FloatArray]) -> FloatArray | float:
    """Extra log-odds that `panel` (a TestingProfile field or an analyte code) is requested."""
    total: FloatArray | float = 0.0
    for c in CONDITIONS:
        if panel in c.testing:
            total = total + c.testing[panel] * (severity[c.name] > 0).astype(np.float64)
    return total


def chronic_only(severity: Mapping[str, FloatArray], rows: np.ndarray) -> dict[str, FloatArray]:
    """The given rows' conditions for an older or later draw: chronic ones persist, acute ones
    (infection) do not."""
    return {
        name: (np.zeros(len(rows)) if BY_NAME[name].acute else s[rows])
        for name, s in severity.items()
    }


def condition_columns(severity: Mapping[str, FloatArray]) -> pd.DataFrame:
    """One boolean column per condition (`condition_<name>`), for the wide table."""
    return pd.DataFrame({f"condition_{name}": severity[name] > 0 for name in CONDITION_NAMES})
