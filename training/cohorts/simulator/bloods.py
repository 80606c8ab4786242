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
from models.features import (
    CALCIUM_ALBUMIN_COEFFICIENT,
    CALCIUM_ALBUMIN_REFERENCE_G_PER_L,
)
from training.cohorts.simulator.world import (
    BONE,
    DIFFERENTIAL,
    DUFFY_NEUTROPHIL_FACTOR,
    ESR_SD,
    ESR_UPPER_QUANTILE_Z,
    FBC,
    HYPERCALCAEMIA_TAIL,
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


def draw_latent(
    n: int, rng: np.random.Generator, *, comorbid_share: float = 0.0, comorbid_scale: float = 1.0
) -> FloatArray:
    """Latent factors (n x 5, see LATENT). A `comorbid_share` of people get `comorbid_scale`
    times the spread on the four normal factors (a less healthy population)."""
    normal = rng.standard_normal((n, 4))
    comorbid = rng.random(n) < comorbid_share
    carrier = rng.random(n) < PARAPROTEIN_SHARE
    paraprotein = np.where(carrier, rng.exponential(1.0, n), 0.0)
    return np.column_stack([normal * np.where(comorbid, comorbid_scale, 1.0)[:, None], paraprotein])


def draw_bloods(
    people: pd.DataFrame,
    latent: FloatArray,
    rng: np.random.Generator,
    *,
    duffy_effect: bool = True,
) -> dict[str, FloatArray]:
    """Complete canonical values (rounded to the catalogue's decimals) for every simulated
    analyte; tumour markers depend on pathway and are NaN in the sex that lacks the organ."""
    age = people["age"].to_numpy(np.float64)
    male = (people["sex"] == "male").to_numpy()
    duffy = people["duffy_null"].to_numpy() & duffy_effect
    values = draw_physiology(age, male, duffy, latent, rng)
    values.update(draw_markers(people["pathway"].astype(str).to_numpy(), age, male, latent, rng))
    return {code: values[code] for code in SIMULATED}


def draw_physiology(
    age: FloatArray, male: BoolArray, duffy_null: BoolArray, latent: FloatArray, rng: Any
) -> dict[str, FloatArray]:
    """Primary analytes from PRIMARIES, then the derived ones from the rounded primaries."""
    raw = {code: _primary(p, age, male, latent, rng) for code, p in PRIMARIES.items()}
    raw["globulin"] = np.clip(raw["globulin"] + PARAPROTEIN_G_PER_L * latent[:, 4],
                              *PRIMARIES["globulin"].bounds)  # fmt: skip
    mcv_excess = np.log(raw["mcv"] / PRIMARIES["mcv"].centre[0])
    raw["mchc"] = np.clip(raw["mchc"] * np.exp(MCHC_PER_LOG_MCV * mcv_excess),
                          *PRIMARIES["mchc"].bounds)  # fmt: skip
    tail = rng.random(len(age)) < HYPERCALCAEMIA_TAIL[0]
    excess = rng.exponential(HYPERCALCAEMIA_TAIL[1], len(age))
    raw["calcium_adjusted"] = np.minimum(raw["calcium_adjusted"] + tail * excess, 3.3)
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


def _primary(p: Primary, age: FloatArray, male: BoolArray, latent: FloatArray, rng: Any) -> Any:
    centre = np.where(male, p.centre[0], p.centre[1])
    sd = np.where(male, p.sd[0], p.sd[1])
    shift = p.age * (age - 60.0) / 10.0 + latent[:, :4] @ np.asarray(p.loadings)
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


def ckd_epi_2021(creatinine: FloatArray, age: FloatArray, male: BoolArray) -> FloatArray:
    """eGFR (mL/min/1.73 m2), CKD-EPI 2021 (no race term), from creatinine in umol/L."""
    scr = creatinine / 88.4  # mg/dL
    kappa = np.where(male, 0.9, 0.7)
    alpha = np.where(male, -0.302, -0.241)
    ratio = scr / kappa
    egfr = 142.0 * np.minimum(ratio, 1.0) ** alpha * np.maximum(ratio, 1.0) ** -1.2
    return np.asarray(egfr * 0.9938**age * np.where(male, 1.0, 1.012))


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
    people: pd.DataFrame, latent: FloatArray, rng: np.random.Generator, profile: TestingProfile
) -> dict[str, BoolArray]:
    """Which analytes were measured (whole panels), per row."""
    n = len(people)
    u = rng.random((n, 7))
    male = (people["sex"] == "male").to_numpy()
    pv_lab = (people["lab"] == PV_LAB).to_numpy()
    inflamed = profile.suspicion * latent[:, 0]
    liver = u[:, 2] < profile.liver + _per_category(people["pathway"], LIVER_BOOST, 0.0)
    inflammatory = u[:, 6] < expit(logit(profile.esr_or_pv) + inflamed)
    panels = {
        FBC + DIFFERENTIAL: u[:, 0] < profile.fbc,
        RENAL: u[:, 1] < profile.renal,
        LIVER: liver,
        BONE: liver & (u[:, 3] < profile.bone_given_liver),
        ("ggt",): liver & (u[:, 4] < profile.ggt_given_liver),
        ("crp",): u[:, 5] < expit(logit(profile.crp) + inflamed),
        ("esr",): inflammatory & ~pv_lab,
        ("plasma_viscosity",): inflammatory & pv_lab,
    }
    tested = {code: mask for codes, mask in panels.items() for code in codes}
    for code, table in MARKER_TESTING.items():
        by_sex = [{k: v[i] for k, v in table.items()} for i in (0, 1)]
        p_male, p_female = (_per_category(people["pathway"], t, t["default"]) for t in by_sex)
        tested[code] = rng.random(n) < np.where(male, p_male, p_female) * profile.markers
    return tested


def _per_category(column: pd.Series, mapping: Mapping[str, float], default: float) -> FloatArray:
    """A per-row number looked up by a categorical column's category (no per-row Python)."""
    lookup = np.array([mapping.get(str(c), default) for c in column.cat.categories] + [default])
    return np.asarray(lookup[column.cat.codes.to_numpy()], dtype=np.float64)


def mask_untested(
    values: Mapping[str, FloatArray], tested: Mapping[str, BoolArray]
) -> dict[str, FloatArray]:
    """Values where measured, NaN elsewhere."""
    return {code: np.where(tested[code], x, np.nan) for code, x in values.items()}
