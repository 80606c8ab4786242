"""Bloods: latent factors, physiology (every analyte in its canonical unit, derived analytes from
the rounded primaries), tumour markers, and which panels were tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import CATALOGUE, Analyte
from models.calibration import expit, logit
from models.derive import ckd_epi_2021  # one implementation: the scorer derives eGFR with it
from models.features import (
    CALCIUM_ALBUMIN_COEFFICIENT,
    CALCIUM_ALBUMIN_REFERENCE_G_PER_L,
)
from training.cohorts.simulator.conditions import effect, per_category, testing_log_odds
from training.cohorts.simulator.world import (
    BONE,
    DIFFERENTIAL,
    DUFFY_NEUTROPHIL_FACTOR,
    ESR_SD,
    ESR_UPPER_QUANTILE_Z,
    FBC,
    LIVER,
    LIVER_BOOST,
    MARKER_BOUNDS,
    MARKER_NORMAL,
    MARKER_RAISED,
    MARKER_SEX,
    MARKER_TESTING,
    MCHC_PER_LOG_MCV,
    PARAPROTEIN_G_PER_L,
    PARAPROTEIN_SHARE,
    PRIMARIES,
    PV_LAB,
    PV_MODEL,
    RENAL,
    SIMULATED,
    WBC_REMAINDER,
    BoolArray,
    FloatArray,
    Primary,
    TestingProfile,
)

# --- bloods -----------------------------------------------------------------------------------


def draw_latent(n: int, rng: np.random.Generator) -> FloatArray:
    """Latent factors (n x 5, see LATENT): four standard normal, and a paraprotein."""
    normal = rng.standard_normal((n, 4))
    carrier = rng.random(n) < PARAPROTEIN_SHARE
    paraprotein = np.where(carrier, rng.exponential(1.0, n), 0.0)
    return np.column_stack([normal, paraprotein])


def draw_bloods(
    people: pd.DataFrame,
    latent: FloatArray,
    rng: np.random.Generator,
    severity: Mapping[str, FloatArray],
    *,
    duffy_effect: bool = True,
) -> dict[str, FloatArray]:
    """Complete canonical values (rounded to the catalogue's decimals) for every simulated
    analyte, moved by each row's conditions (`severity`; `latent` already carries their shift,
    `conditions.with_conditions`); tumour markers depend on pathway and are NaN in the sex that
    lacks the organ."""
    age = people["age"].to_numpy(np.float64)
    male = (people["sex"] == "male").to_numpy()
    duffy = people["duffy_null"].to_numpy() & duffy_effect
    values = draw_physiology(age, male, duffy, latent, rng, severity)
    values.update(draw_markers(people["pathway"].astype(str).to_numpy(), age, male, latent, rng))
    return {code: values[code] for code in SIMULATED}


def draw_physiology(
    age: FloatArray,
    male: BoolArray,
    duffy_null: BoolArray,
    latent: FloatArray,
    rng: Any,
    severity: Mapping[str, FloatArray],
) -> dict[str, FloatArray]:
    """Primary analytes from PRIMARIES plus their conditions' shifts, then the derived ones from
    the rounded primaries."""
    raw = {
        code: _primary(p, age, male, latent, rng, effect(code, severity, p.log))
        for code, p in PRIMARIES.items()
    }
    raw["globulin"] = np.clip(raw["globulin"] + PARAPROTEIN_G_PER_L * latent[:, 4],
                              *PRIMARIES["globulin"].bounds)  # fmt: skip
    mcv_excess = np.log(raw["mcv"] / PRIMARIES["mcv"].centre[0])
    raw["mchc"] = np.clip(raw["mchc"] * np.exp(MCHC_PER_LOG_MCV * mcv_excess),
                          *PRIMARIES["mchc"].bounds)  # fmt: skip
    raw["neutrophils"] = np.where(duffy_null, raw["neutrophils"] * DUFFY_NEUTROPHIL_FACTOR,
                                  raw["neutrophils"])  # fmt: skip
    values = {code: round_as_reported(code, x) for code, x in raw.items() if code != "haemoglobin"}
    values.update(_red_cells(raw["haemoglobin"], values["mcv"], values["mchc"]))
    shape, scale = WBC_REMAINDER
    remainder = round_as_reported("wbc", rng.gamma(shape, scale, len(age)))
    values["wbc"] = round_as_reported("wbc", sum(values[c] for c in DIFFERENTIAL[1:]) + remainder)
    values["egfr"] = round_as_reported(
        "egfr", np.clip(ckd_epi_2021(values["creatinine"], age, male), 2, 200)
    )
    values["total_protein"] = values["albumin"] + values["globulin"]
    values["calcium"] = round_as_reported("calcium", adjusted_to_total(values["calcium_adjusted"],
                                                            values["albumin"]))  # fmt: skip
    values["esr"] = _esr(age, male, values["globulin"], latent, rng)
    mean, per_globulin, per_inflammation, noise = PV_MODEL
    pv = (
        mean
        + per_globulin * (values["globulin"] - PRIMARIES["globulin"].centre[0])
        + per_inflammation * latent[:, 0]
        + rng.normal(0.0, noise, len(age))
    )
    values["plasma_viscosity"] = round_as_reported("plasma_viscosity", np.clip(pv, 1.3, 3.5))
    return values


def _primary(
    p: Primary,
    age: FloatArray,
    male: BoolArray,
    latent: FloatArray,
    rng: Any,
    condition_shift: FloatArray | float = 0.0,
) -> Any:
    centre = np.where(male, p.centre[0], p.centre[1])
    sd = np.where(male, p.sd[0], p.sd[1])
    shift = p.age * (age - 60.0) / 10.0 + latent[:, :4] @ np.asarray(p.loadings) + condition_shift
    noise = rng.standard_normal(len(age)) * sd
    value = np.exp(np.log(centre) + shift + noise) if p.log else centre + shift + noise
    return np.clip(value, *p.bounds)


def round_as_reported(code: str, values: FloatArray) -> FloatArray:
    """Round to the catalogue's reporting precision (what a lab report shows)."""
    return np.round(values, CATALOGUE[code].decimals)


def _red_cells(hb_target: FloatArray, mcv: FloatArray, mchc: FloatArray) -> dict[str, FloatArray]:
    """RBC from the Hb target; Hct = RBC x MCV / 1000 (L/L), Hb = Hct x MCHC (g/L) and
    MCH = MCV x MCHC / 1000 (pg), so MCH = Hb / RBC up to rounding."""
    hb_target = np.minimum(hb_target, 0.70 * mchc)  # keeps Hct <= 0.70 L/L
    rbc = round_as_reported("rbc", np.clip(hb_target * 1000.0 / (mcv * mchc), 1.2, 7.8))
    hct = round_as_reported("haematocrit", rbc * mcv / 1000.0)
    return {
        "rbc": rbc,
        "haematocrit": hct,
        "haemoglobin": round_as_reported("haemoglobin", hct * mchc),
        "mch": round_as_reported("mch", mcv * mchc / 1000.0),
    }


def adjusted_to_total(adjusted: FloatArray, albumin: FloatArray) -> FloatArray:
    """Total calcium (mmol/L) that a lab would adjust to `adjusted` with this albumin (g/L):
    the inverse of `models.features.adjusted_calcium`."""
    return np.asarray(
        adjusted - CALCIUM_ALBUMIN_COEFFICIENT * (CALCIUM_ALBUMIN_REFERENCE_G_PER_L - albumin)
    )


def _esr(
    age: FloatArray, male: BoolArray, globulin: FloatArray, latent: FloatArray, rng: Any
) -> FloatArray:
    """ESR (mm/h): healthy median sits ESR_UPPER_QUANTILE_Z SDs below the catalogue's age- and
    sex-specific upper limit (so ~95% of healthy values are inside it); globulin raises it."""
    upper = reference_limit(CATALOGUE["esr"], "high", male, age)
    loading, per_globulin, noise = ESR_SD
    total_sd = float(np.sqrt(loading**2 + (per_globulin * 3.4) ** 2 + noise**2))
    log_esr = (
        np.log(upper)
        - ESR_UPPER_QUANTILE_Z * total_sd
        + loading * latent[:, 0]
        + per_globulin * (globulin - PRIMARIES["globulin"].centre[0])
        + rng.normal(0.0, noise, len(age))
    )
    return round_as_reported("esr", np.clip(np.exp(log_esr), 1.0, 140.0))


def draw_markers(
    pathway: npt.NDArray[Any], age: FloatArray, male: BoolArray, latent: FloatArray, rng: Any
) -> dict[str, FloatArray]:
    """PSA (men), CA125 (women) and CEA: a normal log-normal component plus, on the pathways that
    test them, a raised 'reason for referral' component."""
    out = {}
    for code, (median, sd) in MARKER_NORMAL.items():
        centre = np.log(median) + (0.35 * (age - 50.0) / 10.0 if code == "psa" else 0.0)
        inflamed = 0.15 * latent[:, 0] * (code == "ca125")  # CA125 rises with inflammation
        normal = centre + inflamed + sd * rng.standard_normal(len(age))
        pathways, share, raised_median, raised_sd = MARKER_RAISED[code]
        raised = np.isin(pathway, pathways) & (rng.random(len(age)) < share)
        high = np.log(raised_median) + raised_sd * rng.standard_normal(len(age))
        value = np.exp(np.where(raised, np.maximum(normal, high), normal))
        value = round_as_reported(code, np.clip(value, *MARKER_BOUNDS[code]))
        sex = MARKER_SEX.get(code)
        if sex is not None:
            value = np.where(male == (sex == "male"), value, np.nan)
        out[code] = value
    return out


def reference_limit(
    analyte: Analyte, side: Literal["low", "high"], male: BoolArray, age: FloatArray
) -> FloatArray:
    """The catalogue reference limit per row: the vectorised twin of `Analyte.reference_for`."""

    def end(interval: Any) -> float:
        value = getattr(interval, side)
        return np.nan if value is None else float(value)

    men = analyte.reference_male or analyte.reference
    women = analyte.reference_female or analyte.reference
    out = np.where(male, end(men), end(women)).astype(np.float64)
    if side == "high":
        for band in sorted(analyte.reference_age_upper, key=lambda b: b.from_age):
            older = age >= band.from_age
            if band.male is not None:
                out = np.where(male & older, band.male, out)
            if band.female is not None:
                out = np.where(~male & older, band.female, out)
    return out


# --- testing ----------------------------------------------------------------------------------


def draw_testing(
    people: pd.DataFrame,
    latent: FloatArray,
    rng: np.random.Generator,
    profile: TestingProfile,
    severity: Mapping[str, FloatArray],
) -> dict[str, BoolArray]:
    """Which analytes were measured (whole panels), per row. Symptoms make clinicians test:
    each condition adds its log-odds to the panels it prompts (`Condition.testing`), and an
    inflamed patient gets CRP and ESR/PV more often."""
    n = len(people)
    u = rng.random((n, 8))
    male = (people["sex"] == "male").to_numpy()
    pv_lab = (people["lab"] == PV_LAB).to_numpy()
    inflamed = profile.suspicion * latent[:, 0]

    def requested(column: int, p: FloatArray | float, panel: str, extra: Any = 0.0) -> BoolArray:
        log_odds = logit(np.clip(p, 1e-6, 1 - 1e-6)) + extra + testing_log_odds(panel, severity)
        return np.asarray(u[:, column] < expit(log_odds))

    liver_p = profile.liver + per_category(people["pathway"], LIVER_BOOST, 0.0)
    liver = requested(2, liver_p, "liver")
    inflammatory = requested(6, profile.esr_or_pv, "esr", inflamed)
    panels = {
        FBC + DIFFERENTIAL: u[:, 0] < profile.fbc,
        RENAL: requested(1, profile.renal, "renal"),
        LIVER: liver,
        BONE: liver & requested(3, profile.bone_given_liver, "bone"),
        ("ggt",): liver & requested(4, profile.ggt_given_liver, "ggt"),
        ("crp",): requested(5, profile.crp, "crp", inflamed),
        ("esr",): inflammatory & ~pv_lab,
        ("plasma_viscosity",): inflammatory & pv_lab,
        ("ferritin",): requested(7, profile.ferritin, "ferritin"),
    }
    tested = {code: mask for codes, mask in panels.items() for code in codes}
    for code, table in MARKER_TESTING.items():
        by_sex = [{k: v[i] for k, v in table.items()} for i in (0, 1)]
        p_male, p_female = (per_category(people["pathway"], t, t["default"]) for t in by_sex)
        p = np.where(male, p_male, p_female) * profile.markers
        tested[code] = rng.random(n) < expit(
            logit(np.clip(p, 1e-9, 1 - 1e-6)) + testing_log_odds(code, severity) * (p > 0)
        )
    return tested


def mask_untested(
    values: Mapping[str, FloatArray], tested: Mapping[str, BoolArray]
) -> dict[str, FloatArray]:
    """Values where measured, NaN elsewhere."""
    return {code: np.where(tested[code], x, np.nan) for code, x in values.items()}
