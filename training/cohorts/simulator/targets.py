"""What a simulated cohort must look like, measured: the realism targets of the data card §3a
(each with its published anchor), computed from the wide table as a lab would report it.

`measure_referrals` and `measure_myeloma` return plain numbers (the manifest records them under
`counts.realism`);
`TARGETS` gives each one's accepted range and source. Tests hold the ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.analytes import CATALOGUE
from training.cohorts.simulator.bloods import reference_limit
from training.cohorts.simulator.outcomes import oracle_auc

WHO_ANAEMIA_G_PER_L = {"male": 130.0, "female": 120.0}


@dataclass(frozen=True)
class Target:
    low: float
    high: float
    source: str
    what: str


TARGETS: dict[str, Target] = {
    "lower_gi_anaemic": Target(0.25, 0.45, "[LGI-A] 38.2% of 1,015 referrals",
                               "lower-GI referrals anaemic by WHO limits (<130 men, <120 women)"),
    "lower_gi_cancers_hb_below_90": Target(0.04, 0.12, "[BJC-HB] 5.2% men, 7.5% women",
                                           "lower-GI cancers with Hb < 90 g/L"),
    "lower_gi_anaemia_odds_ratio": Target(2.0, 5.0, "[LGI-A] OR 3.2",
                                          "odds ratio of cancer, anaemic vs not, lower GI"),
    "crp_above_10": Target(0.15, 0.35, "[IM][J]", "referrals with CRP > 10 mg/L, where measured"),
    "crp_max": Target(150.0, 500.0, "[J]", "highest CRP (mg/L): acute infection"),
    "platelets_above_400": Target(0.03, 0.10, "[PLT][J]", "referrals with platelets > 400"),
    "myeloma_oracle_auc": Target(0.82, 0.88, "[MY1] C 0.85; [S17] AUC 0.84-0.87",
                                 "myeloma population: AUC of true_risk"),
    "myeloma_lr_normal_hb": Target(0.39, 0.45, "[MY2] 0.42 (0.39-0.45)",
                                   "myeloma LR- of a normal Hb"),
    "myeloma_lr_raised_pv": Target(1.7, 2.3, "[MY2] 2.0 (1.7-2.3)",
                                   "myeloma LR+ of a raised plasma viscosity"),
}  # fmt: skip

# Sick people's values a real lab reports: each analyte's simulated range must reach these.
RANGE_CHECKS: dict[str, tuple[str, float]] = {
    "haemoglobin": ("min", 75.0),
    "crp": ("max", 200.0),
    "platelets": ("max", 700.0),
    "neutrophils": ("max", 15.0),
    "alt": ("max", 300.0),
    "bilirubin": ("max", 100.0),
    "creatinine": ("max", 400.0),
    "calcium_adjusted": ("max", 3.0),
    "ferritin": ("min", 8.0),
    "albumin": ("min", 25.0),
}


def canonical_hb(wide: pd.DataFrame) -> pd.Series:
    """Hb in g/L: g/dL reports converted; a g/dL value labelled g/L (< 30) left out."""
    hb = wide["haemoglobin"].where(wide["haemoglobin_unit"] != "g/dL", wide["haemoglobin"] * 10)
    return hb.where(hb >= 30)


def _raised(wide: pd.DataFrame, code: str, side: str = "high") -> pd.Series:
    male = (wide["sex"] == "male").to_numpy()
    age = wide["age"].to_numpy(np.float64)
    limit = reference_limit(CATALOGUE[code], side, male, age)  # type: ignore[arg-type]
    x = wide[code].to_numpy(np.float64)
    out = x > limit if side == "high" else x < limit
    return pd.Series(np.where(np.isnan(x), np.nan, out), index=wide.index)


def likelihood_ratio(test: pd.Series, cancer: pd.Series) -> float:
    """P(test | case) / P(test | non-case) among rows where the test was done (test not NaN)."""
    done = test.notna()
    t, y = test[done].astype(bool), cancer[done].astype(bool)
    controls = float(t[~y].mean()) if (~y).any() else 0.0
    return float(t[y].mean() / controls) if controls > 0 and y.any() else float("nan")


def measure_referrals(wide: pd.DataFrame) -> dict[str, float]:
    """The referral targets, from the wide table."""
    hb = canonical_hb(wide)
    limit = wide["sex"].astype(str).map(WHO_ANAEMIA_G_PER_L).astype(float)
    anaemic = (hb < limit).where(hb.notna())
    lgi = wide["pathway"] == "lower_gi"
    cancer = wide["cancer"] == 1
    a = anaemic[lgi].dropna().astype(bool).to_numpy()
    y = cancer[lgi & hb.notna()].to_numpy()
    both, anaemic_only = int((a & y).sum()), int((a & ~y).sum())
    cancer_only, neither = int((~a & y).sum()), int((~a & ~y).sum())
    denominator = anaemic_only * cancer_only
    odds_ratio = both * neither / denominator if denominator else float("nan")
    crp = wide["crp"].dropna()
    platelets = wide["platelets"].dropna()
    out = {
        "lower_gi_anaemic": float(a.mean()),
        "lower_gi_cancers_hb_below_90": float((hb[lgi & cancer].dropna() < 90).mean()),
        "lower_gi_anaemia_odds_ratio": float(odds_ratio),
        "crp_above_10": float((crp > 10).mean()),
        "crp_max": float(crp.max()),
        "platelets_above_400": float((platelets > 400).mean()),
    }
    for code, (side, _) in RANGE_CHECKS.items():
        x = hb if code == "haemoglobin" else wide[code]
        out[f"{code}_{side}"] = float(x.min() if side == "min" else x.max())
    return out


def measure_myeloma(population: pd.DataFrame) -> dict[str, float]:
    """The myeloma targets, from the whole population's wide table."""
    cancer = population["cancer"]
    hb = population.assign(haemoglobin=canonical_hb(population))
    return {
        "myeloma_oracle_auc": oracle_auc(cancer, population["true_risk"]),
        "myeloma_lr_normal_hb": likelihood_ratio(1 - _raised(hb, "haemoglobin", "low"), cancer),
        "myeloma_lr_raised_pv": likelihood_ratio(_raised(population, "plasma_viscosity"), cancer),
        "myeloma_lr_raised_esr": likelihood_ratio(_raised(population, "esr"), cancer),
        "myeloma_lr_raised_crp": likelihood_ratio(_raised(population, "crp"), cancer),
        "myeloma_lr_normal_calcium": likelihood_ratio(
            1 - _raised(population, "calcium_adjusted"), cancer
        ),
        "myeloma_lr_normal_creatinine": likelihood_ratio(
            1 - _raised(population, "creatinine"), cancer
        ),
    }


def recorded(measured: dict[str, float]) -> dict[str, float | None]:
    """The measured numbers for a manifest: rounded, None where not defined (a tiny cohort)."""
    return {k: round(v, 4) if np.isfinite(v) else None for k, v in measured.items()}


def outside(measured: dict[str, float]) -> dict[str, str]:
    """Targets (and range checks) the measured numbers miss, with why."""
    misses = {}
    for name, target in TARGETS.items():
        value = measured.get(name)
        if value is not None and not target.low <= value <= target.high:
            misses[name] = f"{value:.3f} not in [{target.low}, {target.high}]"
    for code, (side, bound) in RANGE_CHECKS.items():
        value = measured.get(f"{code}_{side}")
        if value is None:
            continue
        if (side == "min" and value > bound) or (side == "max" and value < bound):
            misses[f"{code}_{side}"] = f"{value} does not reach {bound}"
    return misses
