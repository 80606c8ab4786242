"""Synthetic cohorts with exactly known true risks: urgent suspected-cancer referrals (PinPoint
style) and a primary-care myeloma case-control sample (Leeds style).

How a cohort is made (docs/data-card.md gives every assumption with its source):

1. people: pathway, age, sex, deprivation, ethnicity, lab (region), dates, repeat referrals;
2. bloods: a few shared latent factors (inflammation, iron deficiency, renal impairment, frailty)
   plus age and sex effects drive the primary analytes; Hct, Hb, MCH, WBC, total protein, total
   calcium and eGFR are derived from the *rounded* primaries, so every report hangs together;
3. testing: which panels were requested (whole panels; CRP more often when inflamed);
4. outcome, drawn *after* the bloods from a multinomial logit over exactly what a model can see
   (reported value or a fixed 'not tested' term, age, sex, pathway). `true_risk` is therefore
   P(cancer | model-visible data) exactly; each pathway's intercept is root-found so that the
   expected conversion matches PATHWAY_TABLE;
5. lab artefacts (switchable, `Artefacts`) touch reported values only, never the truth;
6. the long extract surrounds each index sample with older and post-index draws.

Everything random flows from one `numpy.random.Generator` seeded from the seed; each stage gets
its own spawned child stream, so switching an artefact off leaves every other draw unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import rankdata

from models.analytes import CATALOGUE, Analyte
from models.calibration import expit, logit
from models.features import (
    CALCIUM_ALBUMIN_COEFFICIENT,
    CALCIUM_ALBUMIN_REFERENCE_G_PER_L,
    adjusted_calcium,
)
from models.spec import PATHWAYS
from training.provenance import code_version

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
DateArray = npt.NDArray[np.datetime64]

# --- cohort tables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PathwayProfile:
    """Who is referred on a pathway and how often they turn out to have cancer."""

    share: float  # share of all referrals
    conversion: float  # expected share diagnosed with cancer
    female: float  # share of referrals who are women
    age_mean: float  # years, before truncation to 18-99
    age_sd: float


# ILLUSTRATIVE figures: national per-pathway shares and conversion rates were not available
# (analytes.md §3, [TWW4]). They give ~7% conversion overall [PP2] and agree with the fragments
# there (skin 8-12% [SKIN]; lower GI ~5% before FIT [LGI1]); sex mixes and ages are judgement.
PATHWAY_TABLE: dict[str, PathwayProfile] = {
    "breast": PathwayProfile(share=0.19, conversion=0.065, female=0.99, age_mean=57, age_sd=15),
    "gynaecological": PathwayProfile(0.08, 0.04, female=1.0, age_mean=58, age_sd=16),
    "haematological": PathwayProfile(0.03, 0.11, female=0.48, age_mean=67, age_sd=14),
    "head_and_neck": PathwayProfile(0.07, 0.03, female=0.50, age_mean=58, age_sd=16),
    "lower_gi": PathwayProfile(0.22, 0.03, female=0.53, age_mean=67, age_sd=13),
    "lung": PathwayProfile(0.04, 0.20, female=0.47, age_mean=70, age_sd=11),
    "skin": PathwayProfile(0.17, 0.09, female=0.55, age_mean=63, age_sd=17),
    "upper_gi": PathwayProfile(0.09, 0.04, female=0.50, age_mean=66, age_sd=14),
    "urological": PathwayProfile(0.11, 0.15, female=0.15, age_mean=70, age_sd=12),
}

ETHNICITY_SHARES: dict[str, float] = {"white": 0.85, "asian": 0.07, "black": 0.04, "other": 0.04}
DUFFY_NULL_SHARE_BLACK = 2 / 3  # [DUF1]
DUFFY_NEUTROPHIL_FACTOR = 0.55  # median ANC 2,820 vs 5,005/uL [DUF1]
LABS: tuple[str, ...] = ("lab_a", "lab_b", "lab_c")
# lab_c is the smallest region: its 2017 albumin assay change is drift a model cannot see
# through, and at 15% of referrals it leaves a temporally validated O/E within 0.05 of 1.
LAB_SHARES: tuple[float, ...] = (0.45, 0.40, 0.15)
GDL_LAB = "lab_b"  # reports Hb in g/dL for GDL_YEARS
GDL_YEARS = (2013, 2015)
PV_LAB = "lab_c"  # plasma viscosity instead of ESR (regional practice [EXE-PV][GLOS])
LOCAL_CODE_LAB = "lab_c"  # sends its own test codes (the catalogue codes), not LOINC
ALBUMIN_ASSAY_LAB = "lab_c"  # BCG -> BCP albumin, about 6 g/L lower [ALB-M]
ALBUMIN_ASSAY_CHANGE = date(2017, 1, 1)
ALBUMIN_ASSAY_SHIFT_G_PER_L = 6.0
WRONG_UNIT_RATE = 0.0005  # Hb in g/dL labelled g/L [EXE]
HAEMOLYSIS_RATE = 0.03  # 3.1% of potassium requests [HAEM]
HAEMOLYSIS_POTASSIUM_FLOOR = 6.1  # above the validation's 6.0 mmol/L rule, by construction
EGFR_LOINC = "98979-8"  # CKD-EPI 2021, the equation used below (an alt LOINC in the catalogue)

REPEAT_REFERRALS: tuple[float, ...] = (0.92, 0.065, 0.015)  # P(1, 2, 3 referrals per patient)
MIN_REPEAT_GAP_DAYS = 540  # keeps one referral's draws out of another's as-of window
OLDER_DRAWS_DAYS = 450  # older draws fall (window, 450] days before the index date
POST_DRAWS_DAYS = 90  # post-index draws fall [0, 90] days after it
REFERRAL_HORIZON_DAYS = 365
MYELOMA_HORIZON_DAYS = 730
PRIMARY_CARE = "primary_care"  # the myeloma cohort's 'pathway' value
POPULATION_AGE = (63.0, 13.0)  # primary-care adults with routine bloods: mean, SD before truncation
POPULATION_FEMALE = 0.54

# Latent factors: four standard normal (inflammation, iron deficiency, renal impairment, frailty)
# and a paraprotein, 0 for most people and Exp(1) in PARAPROTEIN_SHARE (MGUS-like; judgement [J]).
LATENT = ("inflammation", "iron_deficiency", "renal", "frailty", "paraprotein")
PARAPROTEIN_SHARE = 0.03
PARAPROTEIN_G_PER_L = 6.0  # globulin rise per unit of the paraprotein factor
HISTORY_LATENT_CORRELATION = 0.7  # how much an older or later draw shares the index latent state

# --- physiology tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class Primary:
    """A primary analyte: centre + age + latent loadings + idiosyncratic noise (log scale when
    `log`), clipped to physiological bounds that sit inside the catalogue's hard limits."""

    centre: tuple[float, float]  # (male, female) median (log) or mean, at age 60, canonical unit
    sd: tuple[float, float]  # (male, female) idiosyncratic SD (log units when log)
    loadings: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # the 4 normal LATENT
    age: float = 0.0  # change per decade from 60 (log units when log)
    bounds: tuple[float, float] = (0.0, np.inf)
    log: bool = True


# Tuned so that ~95% of healthy values sit inside each catalogue reference interval (tested).
# "haemoglobin" is a target: RBC = Hb target / (MCV x MCHC), then Hct, Hb, MCH follow exactly.
# MCHC also falls as MCV rises (MCHC_PER_LOG_MCV): an impedance analyser measures MCV and
# computes Hct from it, so MCV error moves MCHC the other way and leaves MCH = Hb / RBC alone;
# without it MCH would spread wider than its interval allows.
PRIMARIES: dict[str, Primary] = {
    "haemoglobin": Primary((150.0, 140.0), (0.046, 0.05), (-0.02, -0.04, -0.015, -0.01),
                           age=-0.006, bounds=(45.0, 220.0)),
    "mcv": Primary((88.0, 88.0), (0.044, 0.044), (0.0, -0.035, 0.0, 0.01), age=0.005,
                   bounds=(62.0, 125.0)),
    "mchc": Primary((338.0, 338.0), (0.03, 0.03), (0.0, -0.02, 0.0, 0.0), bounds=(285, 375)),
    "rdw": Primary((13.3, 13.4), (0.052, 0.052), (0.02, 0.05, 0.0, 0.0), age=0.015,
                   bounds=(9.0, 30.0)),
    "platelets": Primary((238.0, 258.0), (0.2, 0.2), (0.07, 0.06, 0.0, 0.0), age=-0.02,
                         bounds=(20.0, 1500.0)),
    "mpv": Primary((9.6, 9.6), (1.1, 1.1), bounds=(6.0, 14.0), log=False),
    "neutrophils": Primary((4.0, 4.0), (0.27, 0.27), (0.15, 0.0, 0.0, 0.0), bounds=(0.3, 40.0)),
    "lymphocytes": Primary((1.9, 2.0), (0.3, 0.3), age=-0.04, bounds=(0.2, 50.0)),
    "monocytes": Primary((0.5, 0.44), (0.34, 0.34), (0.08, 0.0, 0.0, 0.0), bounds=(0.03, 5.0)),
    "eosinophils": Primary((0.15, 0.14), (0.6, 0.6), bounds=(0.0, 5.0)),
    "basophils": Primary((0.04, 0.04), (0.48, 0.48), bounds=(0.0, 1.0)),
    "sodium": Primary((139.5, 139.5), (2.9, 2.9), age=-0.3, bounds=(122.0, 158.0), log=False),
    "potassium": Primary((4.35, 4.3), (0.36, 0.36), (0.0, 0.0, 0.12, 0.0), bounds=(2.8, 6.0),
                         log=False),
    "urea": Primary((5.1, 4.6), (0.2, 0.2), (0.0, 0.0, 0.15, 0.03), age=0.06, bounds=(1.0, 40.0)),
    "creatinine": Primary((81.0, 63.0), (0.11, 0.11), (0.0, 0.0, 0.11, 0.0), age=0.04,
                          bounds=(25.0, 1200.0)),
    "albumin": Primary((42.5, 42.0), (3.1, 3.1), (-0.2, 0.0, 0.0, -0.8), age=-0.5,
                       bounds=(18.0, 55.0), log=False),
    "globulin": Primary((28.0, 28.0), (3.3, 3.3), (0.6, 0.0, 0.0, 0.0), age=0.3,
                        bounds=(12.0, 70.0), log=False),
    "calcium_adjusted": Primary((2.38, 2.38), (0.082, 0.082), bounds=(1.8, 3.3), log=False),
    "phosphate": Primary((1.08, 1.15), (0.16, 0.16), bounds=(0.3, 2.5), log=False),
    "alp": Primary((75.0, 75.0), (0.26, 0.26), (0.05, 0.0, 0.0, 0.0), age=0.04,
                   bounds=(20.0, 2000.0)),
    "alt": Primary((21.0, 16.0), (0.37, 0.37), age=-0.05, bounds=(3.0, 1000.0)),
    "ggt": Primary((23.0, 15.0), (0.36, 0.36), bounds=(3.0, 2000.0)),
    "bilirubin": Primary((9.0, 7.5), (0.45, 0.45), bounds=(2.0, 400.0)),
    "crp": Primary((1.1, 1.2), (0.58, 0.58), (0.6, 0.0, 0.0, 0.1), bounds=(0.0, 400.0)),
}  # fmt: skip
MCHC_PER_LOG_MCV = -0.5  # log MCHC per log MCV above its centre (see above)
HYPERCALCAEMIA_TAIL = (0.015, 0.12)  # share, mean excess (mmol/L): a tail beyond the normal
ESR_SD = (0.35, 0.03, 0.45)  # log ESR: inflammation loading, per g/L globulin, idiosyncratic
ESR_UPPER_QUANTILE_Z = 1.75  # the catalogue's age/sex upper limit sits at this z of healthy ESR
PV_MODEL = (1.61, 0.012, 0.02, 0.03)  # mPa.s: mean, per g/L globulin, per inflammation SD, noise
WBC_REMAINDER = (2.0, 0.02)  # gamma shape, scale (10^9/L): unclassified cells, never negative

# Tumour markers: (median, log SD) when normal, and the 'reason for referral' raised component
# present in a share of referrals on the pathways that test them (tumour markers are requested
# when symptoms suggest them [NCDA2]).
MARKER_NORMAL: dict[str, tuple[float, float]] = {
    "psa": (0.7, 0.7),  # at age 50; x exp(0.35 per decade)
    "ca125": (12.0, 0.55),
    "cea": (1.7, 0.5),
}
MARKER_RAISED: dict[str, tuple[tuple[str, ...], float, float, float]] = {
    "psa": (("urological",), 0.35, 7.0, 0.8),  # pathways, share, median, log SD
    "ca125": (("gynaecological",), 0.15, 70.0, 0.9),
    "cea": (("lower_gi", "upper_gi"), 0.08, 7.0, 0.6),
}
MARKER_BOUNDS: dict[str, tuple[float, float]] = {
    "psa": (0.02, 5000.0),
    "ca125": (2.0, 20000.0),
    "cea": (0.2, 5000.0),
}
MARKER_SEX: dict[str, str] = {"psa": "male", "ca125": "female"}

# --- testing (missingness) tables --------------------------------------------------------------

FBC = ("haemoglobin", "haematocrit", "rbc", "mcv", "mch", "mchc", "rdw", "platelets", "mpv")
DIFFERENTIAL = ("wbc", "neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils")
RENAL = ("sodium", "potassium", "urea", "creatinine", "egfr")
LIVER = ("alp", "alt", "bilirubin", "albumin", "total_protein", "globulin")
BONE = ("calcium_adjusted", "calcium", "phosphate")
MARKERS = ("psa", "ca125", "cea")
SIMULATED: tuple[str, ...] = tuple(
    code
    for code in CATALOGUE.codes
    if code in {*FBC, *DIFFERENTIAL, *RENAL, *LIVER, *BONE, *MARKERS, "ggt", "crp", "esr"}
    or code == "plasma_viscosity"
)


@dataclass(frozen=True)
class TestingProfile:
    """P(panel requested). Liver, bone and GGT are whole panels; bone and GGT ride on a liver
    request (adjusted calcium needs albumin). CRP and ESR/PV rise with inflammation."""

    fbc: float
    renal: float
    liver: float
    bone_given_liver: float
    ggt_given_liver: float
    crp: float
    esr_or_pv: float
    suspicion: float = 0.6  # log-odds per SD of inflammation, for CRP and ESR/PV requests
    markers: bool = True


# FBC 95%, U&E 89%, LFT 76% of tested cancer patients [NCDA1]; CRP tested about half as often as
# an FBC [OXF]; PinPoint needs a core FBC and U&E [PP1].
REFERRAL_TESTING = TestingProfile(
    fbc=0.98, renal=0.98, liver=0.82, bone_given_liver=0.6, ggt_given_liver=0.6, crp=0.55,
    esr_or_pv=0.4,
)  # fmt: skip
LIVER_BOOST: dict[str, float] = {"lower_gi": 0.06, "upper_gi": 0.08, "haematological": 0.08}
# The myeloma cohort is adults with routine bloods including an FBC [MY4].
PRIMARY_CARE_TESTING = TestingProfile(
    fbc=1.0, renal=0.92, liver=0.78, bone_given_liver=0.55, ggt_given_liver=0.6, crp=0.45,
    esr_or_pv=0.35, markers=False,
)  # fmt: skip
# P(marker requested) by pathway, (male, female); `default` applies to every other pathway.
# PSA in 88% of men with LUTS, CA125 in 53% of women with distension [NCDA2].
MARKER_TESTING: dict[str, dict[str, tuple[float, float]]] = {
    "psa": {"urological": (0.85, 0.0), "default": (0.04, 0.0)},
    "ca125": {"gynaecological": (0.0, 0.7), "lower_gi": (0.0, 0.05), "upper_gi": (0.0, 0.05),
              "default": (0.0, 0.01)},
    "cea": {"lower_gi": (0.2, 0.2), "upper_gi": (0.15, 0.15), "default": (0.01, 0.01)},
}  # fmt: skip

# --- risk model tables ------------------------------------------------------------------------

NOT_TESTED_HINGE = float(np.logaddexp(0.0, -2.0))  # default 'not tested' = a typical normal value


@dataclass(frozen=True)
class Term:
    """A smooth hinge on one analyte: weight x softplus(distance beyond the hinge / scale). The
    hinge sits at the catalogue's reference limit moved `at` towards the normal range (so a
    signal can start while values are still normal). Distances are in the canonical unit, or
    in log units when `log`."""

    code: str
    direction: Literal["high", "low"]
    scale: float
    weight: float
    log: bool = False
    missing: float | None = None  # log-odds when not tested; None: as for a typical normal value
    at: float = 0.0  # hinge offset from the reference limit, towards normal (same units)

    def missing_value(self) -> float:
        return self.weight * NOT_TESTED_HINGE if self.missing is None else self.missing


@dataclass(frozen=True)
class Site:
    """One cancer site: its linear predictor is log(share) + age + sex + sum of its terms."""

    name: str
    pathway: str
    share: float  # relative weight among the pathway's sites at typical values
    age: float  # log-odds per decade from 60
    male: float = 0.0  # log-odds, male vs female
    sex: Literal["male", "female"] | None = None  # sites that occur in one sex only
    terms: tuple[Term, ...] = ()


def _hi(code: str, scale: float, weight: float, *, log: bool = False, **kw: Any) -> Term:
    return Term(code, "high", scale, weight, log, **kw)


def _lo(code: str, scale: float, weight: float, *, log: bool = False, **kw: Any) -> Term:
    return Term(code, "low", scale, weight, log, **kw)


# Untested inflammatory markers carry less risk than normal ones (1-year incidence 0.97% untested
# vs 1.50% normal [IM]), hence missing=0 there. Nothing uses neutrophils, WBC or potassium: the
# Duffy-null subgroup and haemolysed samples carry no extra true risk. Albumin weights stay small
# so that the albumin assay drift moves expected risk by only a few per cent.
def _hb(weight: float) -> Term:
    return _lo("haemoglobin", 12.0, weight)


def _plt(weight: float) -> Term:
    return _hi("platelets", 0.3, weight, log=True)


# Lower-GI, upper-GI and lung signals start inside the normal range: in cancer, Hb drifts down
# and platelets up while still 'normal' [HB2][HB3][PLT]. Hinges at Hb ~ 155 (men) / 140
# (women) g/L, MCV 88 fL and platelets ~ 255 x 10^9/L.
def _hb_drift(weight: float) -> Term:
    return _lo("haemoglobin", 10.0, weight, at=25.0)


def _mcv_drift(weight: float) -> Term:
    return _lo("mcv", 4.0, weight, at=8.0)


def _plt_drift(weight: float) -> Term:
    return _hi("platelets", 0.25, weight, log=True, at=0.45)


def _crp(weight: float) -> Term:
    return _hi("crp", 0.8, weight, log=True, missing=0.0)


def _alb(weight: float) -> Term:
    return _lo("albumin", 3.0, weight)


def _ca(weight: float) -> Term:
    return _hi("calcium_adjusted", 0.08, weight)


# Large odds ratios, as in [MY3]: cytopenia 48% of cases vs 9% of controls, hypercalcaemia 9% vs
# 0.35%, raised MCV 13% vs 2%, raised inflammatory markers 42% vs 6%, raised creatinine 24% vs 8%.
MYELOMA_TERMS: tuple[Term, ...] = (  # [MY2][MY3][MY4][MY5][MY6]
    _lo("haemoglobin", 10.0, 1.8),
    _hi("mcv", 4.0, 0.9),
    _ca(1.4),
    _hi("globulin", 5.0, 1.1),
    _alb(0.4),
    _hi("creatinine", 0.25, 0.8, log=True),
    _hi("esr", 0.5, 1.0, log=True, missing=0.0),
    _hi("plasma_viscosity", 0.08, 1.2, missing=0.0),
    _lo("platelets", 0.25, 1.0, log=True),
)
REFERRAL_SITES: tuple[Site, ...] = (
    Site("breast", "breast", 1.0, age=0.3, male=-1.0, terms=(
        _hi("alp", 0.3, 0.4, log=True), _ca(0.3), _crp(0.2))),
    Site("ovarian", "gynaecological", 0.3, age=0.35, sex="female", terms=(  # [CA125]
        _hi("ca125", 0.4, 1.5, log=True), _plt(0.7), _crp(0.4))),
    Site("endometrial", "gynaecological", 0.5, age=0.5, sex="female", terms=(_hb(0.5),)),
    Site("cervical", "gynaecological", 0.2, age=-0.3, sex="female", terms=(_hb(0.5),)),
    Site("myeloma", "haematological", 0.3, age=0.6, male=0.3, terms=MYELOMA_TERMS),
    Site("lymphoma", "haematological", 0.45, age=0.2, terms=(
        _crp(0.9), _hi("esr", 0.5, 0.7, log=True, missing=0.0), _alb(0.3), _hb(0.8),
        _lo("lymphocytes", 0.3, 0.6, log=True), _hi("alp", 0.3, 0.4, log=True))),
    Site("leukaemia", "haematological", 0.25, age=0.4, male=0.3, terms=(
        _hi("lymphocytes", 0.2, 2.0, log=True), _lo("platelets", 0.25, 1.3, log=True), _hb(1.0),
        _hi("monocytes", 0.25, 0.7, log=True))),
    Site("head_and_neck", "head_and_neck", 1.0, age=0.35, male=0.5, terms=(
        _hb(0.5), _crp(0.5), _hi("ggt", 0.4, 0.5, log=True), _plt(0.4))),
    Site("colorectal_right", "lower_gi", 0.4, age=0.5, terms=(  # [HB][HB4][PLT]
        _hb_drift(0.9), _mcv_drift(0.7), _hi("rdw", 1.0, 0.4), _plt_drift(0.8), _crp(0.5),
        _hi("cea", 0.4, 0.9, log=True))),
    Site("colorectal_left", "lower_gi", 0.6, age=0.45, male=0.3, terms=(
        _hb_drift(0.6), _mcv_drift(0.3), _plt_drift(0.6), _crp(0.4),
        _hi("cea", 0.4, 0.9, log=True))),
    Site("lung", "lung", 1.0, age=0.35, male=0.2, terms=(  # [PLT][IM][CA3][ALB]
        _plt_drift(1.0), _crp(1.0), _alb(0.2), _ca(0.8), _hi("alp", 0.3, 0.5, log=True),
        _hb(0.6), _lo("sodium", 2.0, 0.4))),
    Site("melanoma", "skin", 0.3, age=0.25),
    Site("squamous_cell", "skin", 0.7, age=0.6, male=0.5, terms=(_crp(0.2),)),
    Site("oesophagogastric", "upper_gi", 0.6, age=0.4, male=0.5, terms=(
        _hb_drift(0.7), _mcv_drift(0.5), _plt_drift(0.5), _alb(0.2), _crp(0.4))),
    Site("pancreatic", "upper_gi", 0.25, age=0.5, terms=(
        _hi("bilirubin", 0.35, 1.2, log=True), _hi("alp", 0.3, 0.8, log=True),
        _hi("ggt", 0.4, 0.7, log=True), _alb(0.2), _hi("cea", 0.4, 0.6, log=True))),
    Site("hepatobiliary", "upper_gi", 0.15, age=0.4, male=0.4, terms=(
        _hi("alp", 0.3, 0.8, log=True), _hi("ggt", 0.4, 0.8, log=True),
        _hi("bilirubin", 0.35, 0.7, log=True), _alb(0.3), _lo("platelets", 0.25, 0.5, log=True))),
    Site("prostate", "urological", 0.65, age=0.4, sex="male", terms=(  # [PSA1][PSA2]
        _hi("psa", 0.4, 1.5, log=True),)),
    Site("bladder", "urological", 0.25, age=0.5, male=0.6, terms=(_hb(0.7), _crp(0.3))),
    Site("kidney", "urological", 0.10, age=0.3, male=0.4, terms=(
        _hb(0.7), _plt(0.6), _ca(0.6), _crp(0.6))),
)  # fmt: skip
# Leeds/Koshiaris myeloma signature [MY1][MY4]: 58% of cases are male [MY7]; peak at 85-89.
MYELOMA_PRIMARY_CARE = Site(
    "myeloma", PRIMARY_CARE, 1.0, age=0.6, male=0.25,
    terms=(*MYELOMA_TERMS, _crp(0.3)),
)  # fmt: skip

# --- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artefacts:
    """Which documented lab artefacts to inject (all on by default; see the module constants)."""

    hb_gdl: bool = True  # GDL_LAB reports Hb in g/dL during GDL_YEARS (stated unit g/dL)
    wrong_unit: bool = True  # WRONG_UNIT_RATE of Hb values in g/dL labelled g/L
    albumin_assay: bool = True  # ALBUMIN_ASSAY_LAB from ALBUMIN_ASSAY_CHANGE: albumin 6 g/L lower
    haemolysis: bool = True  # HAEMOLYSIS_RATE of samples: potassium above 6.0 mmol/L
    duffy_null: bool = True  # Duffy-null phenotype lowers neutrophils (the fairness trap)

    @classmethod
    def none(cls) -> Artefacts:
        """Every artefact switched off: clean data that raises no validation issue."""
        return cls(False, False, False, False, False)


@dataclass(frozen=True)
class ReferralParams:
    """Urgent suspected-cancer referrals (PinPoint style)."""

    n: int = 100_000
    start: date = date(2011, 1, 1)
    end: date = date(2019, 12, 31)
    volume_growth: float = 0.12  # relative volume = 1 + growth x years since start [TWW1]
    window_days: int = 90  # the index sample is the latest within this window before the index
    artefacts: Artefacts = field(default_factory=Artefacts)


@dataclass(frozen=True)
class MyelomaParams:
    """Primary-care adults 40+ (Koshiaris 2021 style) and a Leeds-style matched sample."""

    n: int = 1_000_000  # population size
    incidence: float = 0.0006  # 2-year myeloma incidence, 60 per 100,000 [MY4]
    controls_per_case: int = 4  # Leeds used 367 : 1,488 [MY1]
    age_band_years: int = 5  # controls matched on age band and sex
    min_age: int = 40
    start: date = date(2011, 1, 1)
    end: date = date(2019, 12, 31)
    volume_growth: float = 0.03
    window_days: int = 90
    # Less healthy than a referral cohort: cytopenia in 9% of controls [MY3] (judgement).
    comorbid_share: float = 0.15
    comorbid_scale: float = 2.0
    artefacts: Artefacts = field(default_factory=Artefacts)


@dataclass(frozen=True)
class SimulatedCohort:
    """One simulated cohort: the wide table, the long extract and its summary counts."""

    name: str
    wide: pd.DataFrame  # one row per index event, analytes as reported
    results: pd.DataFrame  # long lab results: patient_id, sample_time, code, value, unit, lab
    index: pd.DataFrame  # index events: ids, dates, demographics, outcome, true_risk
    summary: dict[str, Any]


@dataclass(frozen=True)
class Draws:
    """Blood draws as aligned arrays; `values` are canonical (NaN: not tested) until artefacts
    make them 'as reported' (Hb then in g/dL where `hb_gdl`)."""

    patient_id: IntArray
    lab: IntArray  # position in LABS
    sample_time: DateArray  # datetime64[ns]
    values: dict[str, FloatArray]
    hb_gdl: BoolArray


DEFAULT_N = {"referrals": ReferralParams().n, "myeloma": MyelomaParams().n}
ARTEFACT_FLAGS = (
    "artefact_hb_gdl",
    "artefact_wrong_unit",
    "artefact_albumin_assay",
    "artefact_haemolysed",
)

# --- the job ----------------------------------------------------------------------------------


def run_simulation(
    *,
    cohort: str = "referrals",
    n: int | None = None,
    seed: int = 7,
    out: Path | str = Path("var/cohorts"),
    artefacts: bool | Artefacts = True,
) -> dict[str, Any]:
    """Simulate a cohort, write `{cohort}_wide/_results/_index.parquet` and `manifest.json` into
    `out`, and return the manifest (seed, parameters, counts, file digests, code version)."""
    switches = artefacts if isinstance(artefacts, Artefacts) else _switches(artefacts)
    rng = np.random.default_rng(seed)
    params: ReferralParams | MyelomaParams
    if cohort == "referrals":
        params = ReferralParams(n=n or DEFAULT_N[cohort], artefacts=switches)
        simulated = simulate_referrals(params, rng)
    elif cohort == "myeloma":
        params = MyelomaParams(n=n or DEFAULT_N[cohort], artefacts=switches)
        simulated = simulate_myeloma(params, rng)
    else:
        raise ValueError(f"unknown cohort {cohort!r}; expected one of {sorted(DEFAULT_N)}")
    files = write_cohort(simulated, Path(out))
    manifest = build_manifest(simulated, params, seed, files)
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _switches(on: bool) -> Artefacts:
    return Artefacts() if on else Artefacts.none()


def simulate_referrals(params: ReferralParams, rng: np.random.Generator) -> SimulatedCohort:
    """Referral cohort: people -> bloods -> testing -> outcome -> artefacts -> long extract."""
    people_rng, blood_rng, testing_rng, outcome_rng, artefact_rng, history_rng = rng.spawn(6)
    people = draw_referrals(params, people_rng)
    latent = draw_latent(len(people), blood_rng)
    truth = draw_bloods(people, latent, blood_rng, duffy_effect=params.artefacts.duffy_null)
    seen = mask_untested(truth, draw_testing(people, latent, testing_rng, REFERRAL_TESTING))
    targets = {p: PATHWAY_TABLE[p].conversion for p in PATHWAYS}
    index, intercepts = draw_outcomes(
        people, seen, REFERRAL_SITES, targets, outcome_rng, REFERRAL_HORIZON_DAYS
    )
    draws = index_draws(people, seen, params.window_days, testing_rng)
    reported, flags = inject_artefacts(draws, params.artefacts, artefact_rng)
    history = draw_history(people, latent, params, REFERRAL_TESTING, history_rng)
    history = inject_artefacts(history, params.artefacts, artefact_rng)[0]
    results = long_results([reported, history])
    wide = assemble_wide(index, reported, flags)
    summary = referral_summary(wide, results, intercepts)
    return SimulatedCohort("referrals", wide, results, index, summary)


def simulate_myeloma(params: MyelomaParams, rng: np.random.Generator) -> SimulatedCohort:
    """Myeloma: population -> bloods -> outcome -> matched case-control sample -> extracts."""
    people_rng, blood_rng, testing_rng, outcome_rng, artefact_rng, history_rng = rng.spawn(6)
    population = draw_population(params, people_rng)
    latent = draw_latent(
        len(population),
        blood_rng,
        comorbid_share=params.comorbid_share,
        comorbid_scale=params.comorbid_scale,
    )
    truth = draw_bloods(population, latent, blood_rng, duffy_effect=params.artefacts.duffy_null)
    tested = draw_testing(population, latent, testing_rng, PRIMARY_CARE_TESTING)
    seen = mask_untested(truth, tested)
    targets = {PRIMARY_CARE: params.incidence}
    events, intercepts = draw_outcomes(
        population, seen, (MYELOMA_PRIMARY_CARE,), targets, outcome_rng, MYELOMA_HORIZON_DAYS
    )
    rows, matched_set = match_controls(events, params, outcome_rng)
    sample = population.iloc[rows].reset_index(drop=True)
    index = _sampled_index(events, rows, matched_set, params)
    draws = index_draws(sample, _take(seen, rows), params.window_days, testing_rng)
    reported, flags = inject_artefacts(draws, params.artefacts, artefact_rng)
    history = draw_history(sample, latent[rows], params, PRIMARY_CARE_TESTING, history_rng)
    history = inject_artefacts(history, params.artefacts, artefact_rng)[0]
    results = long_results([reported, history])
    wide = assemble_wide(index, reported, flags)
    summary = myeloma_summary(events, wide, results, params, intercepts)
    return SimulatedCohort("myeloma", wide, results, index, summary)


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
    mean = np.array([p.age_mean for p in profiles])[pathway[first]]
    sd = np.array([p.age_sd for p in profiles])[pathway[first]]
    first_age = _truncated_normal(mean, sd, 18.0, 99.0, rng)
    birth = days[first].astype(np.float64) - first_age * 365.25  # days since epoch
    age = np.floor((days.astype(np.float64) - birth[patient]) / 365.25).astype(np.int64)
    ids = rng.permutation(len(counts)).astype(np.int64) + 100_001
    frame = _people_frame(
        patient_id=ids[patient],
        index_date=days,
        pathway=_categorical(pathway, list(PATHWAYS)),
        age=age,
        female=female,
        patient_traits=_patient_traits(len(counts), rng),
        patient=patient,
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
        pathway=_categorical(np.zeros(n, dtype=np.int8), [PRIMARY_CARE]),
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
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "patient_id": patient_id,
            "index_date": index_date.astype("datetime64[ns]"),
            "pathway": pathway,
            "lab": _categorical(patient_traits["lab"][patient], list(LABS)),
            "age": age,
            "sex": _categorical((~female).astype(np.int8), categories=["female", "male"]),
            "deprivation": patient_traits["deprivation"][patient],
            "ethnicity": _categorical(
                patient_traits["ethnicity"][patient], categories=list(ETHNICITY_SHARES)
            ),
            "duffy_null": patient_traits["duffy_null"][patient],
        }
    )
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
    n: int, start: date, end: date, growth: float, rng: np.random.Generator
) -> npt.NDArray[np.datetime64]:
    """Dates with volume rising linearly by year: weight 1 + growth x (year - start year)."""
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    year = days.astype("datetime64[Y]").astype(np.int64)
    weight = 1.0 + growth * (year - year[0])
    return days[rng.choice(len(days), size=n, p=weight / weight.sum())]


def _repeat_dates(
    patient: IntArray, params: ReferralParams, rng: np.random.Generator
) -> npt.NDArray[np.datetime64]:
    """Referral dates, ascending within patient, with repeats at least MIN_REPEAT_GAP_DAYS apart
    (redrawn until they are: a handful of vectorised passes)."""
    days = _draw_days(len(patient), params.start, params.end, params.volume_growth, rng)
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
            int(redraw.sum()), params.start, params.end, params.volume_growth, rng
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
    values = {code: _round(code, x) for code, x in raw.items() if code != "haemoglobin"}
    values.update(_red_cells(raw["haemoglobin"], values["mcv"], values["mchc"]))
    shape, scale = WBC_REMAINDER
    remainder = _round("wbc", rng.gamma(shape, scale, len(age)))
    values["wbc"] = _round("wbc", sum(values[c] for c in DIFFERENTIAL[1:]) + remainder)
    values["egfr"] = _round("egfr", np.clip(ckd_epi_2021(values["creatinine"], age, male), 2, 200))
    values["total_protein"] = values["albumin"] + values["globulin"]
    values["calcium"] = _round("calcium", adjusted_to_total(values["calcium_adjusted"],
                                                            values["albumin"]))  # fmt: skip
    values["esr"] = _esr(age, male, values["globulin"], latent, rng)
    mean, per_globulin, per_inflammation, noise = PV_MODEL
    pv = (
        mean
        + per_globulin * (values["globulin"] - PRIMARIES["globulin"].centre[0])
        + per_inflammation * latent[:, 0]
        + rng.normal(0.0, noise, len(age))
    )
    values["plasma_viscosity"] = _round("plasma_viscosity", np.clip(pv, 1.3, 3.5))
    return values


def _primary(p: Primary, age: FloatArray, male: BoolArray, latent: FloatArray, rng: Any) -> Any:
    centre = np.where(male, p.centre[0], p.centre[1])
    sd = np.where(male, p.sd[0], p.sd[1])
    shift = p.age * (age - 60.0) / 10.0 + latent[:, :4] @ np.asarray(p.loadings)
    noise = rng.standard_normal(len(age)) * sd
    value = np.exp(np.log(centre) + shift + noise) if p.log else centre + shift + noise
    return np.clip(value, *p.bounds)


def _round(code: str, values: FloatArray) -> FloatArray:
    """Round to the catalogue's reporting precision (what a lab report shows)."""
    return np.round(values, CATALOGUE[code].decimals)


def _red_cells(hb_target: FloatArray, mcv: FloatArray, mchc: FloatArray) -> dict[str, FloatArray]:
    """RBC from the Hb target; Hct = RBC x MCV / 1000 (L/L), Hb = Hct x MCHC (g/L) and
    MCH = MCV x MCHC / 1000 (pg), so MCH = Hb / RBC up to rounding."""
    hb_target = np.minimum(hb_target, 0.70 * mchc)  # keeps Hct <= 0.70 L/L
    rbc = _round("rbc", np.clip(hb_target * 1000.0 / (mcv * mchc), 1.2, 7.8))
    hct = _round("haematocrit", rbc * mcv / 1000.0)
    return {
        "rbc": rbc,
        "haematocrit": hct,
        "haemoglobin": _round("haemoglobin", hct * mchc),
        "mch": _round("mch", mcv * mchc / 1000.0),
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
    return _round("esr", np.clip(np.exp(log_esr), 1.0, 140.0))


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
        value = _round(code, np.clip(value, *MARKER_BOUNDS[code]))
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


def _categorical(codes: npt.ArrayLike, categories: Sequence[str]) -> pd.Categorical[str]:
    """A categorical from integer codes (-1: missing) and its categories."""
    return pd.Categorical.from_codes(
        np.asarray(codes, dtype=np.int64), categories=pd.Index(list(categories))
    )


def _per_category(column: pd.Series, mapping: Mapping[str, float], default: float) -> FloatArray:
    """A per-row number looked up by a categorical column's category (no per-row Python)."""
    lookup = np.array([mapping.get(str(c), default) for c in column.cat.categories] + [default])
    return np.asarray(lookup[column.cat.codes.to_numpy()], dtype=np.float64)


def mask_untested(
    values: Mapping[str, FloatArray], tested: Mapping[str, BoolArray]
) -> dict[str, FloatArray]:
    """Values where measured, NaN elsewhere."""
    return {code: np.where(tested[code], x, np.nan) for code, x in values.items()}


# --- outcome: exact true risk -----------------------------------------------------------------


def term_values(term: Term, x: FloatArray, male: BoolArray, age: FloatArray) -> FloatArray:
    """One term's log-odds contribution per row ('not tested' value where x is NaN)."""
    limit = reference_limit(CATALOGUE[term.code], term.direction, male, age)
    distance = np.log(np.maximum(x, 1e-9)) - np.log(limit) if term.log else x - limit
    if term.direction == "low":
        distance = -distance
    distance = distance + term.at
    with np.errstate(invalid="ignore"):  # NaN (not tested) rows are replaced below
        hinge = term.weight * np.logaddexp(0.0, distance / term.scale)
    return np.where(np.isnan(x), term.missing_value(), hinge)


def site_logits(
    values: Mapping[str, FloatArray], people: pd.DataFrame, sites: Sequence[Site]
) -> FloatArray:
    """Linear predictors g_site (n x sites, without the pathway intercept); -inf where a site
    cannot occur (another pathway, or the other sex)."""
    age = people["age"].to_numpy(np.float64)
    male = (people["sex"] == "male").to_numpy()
    pathway = people["pathway"].astype(str).to_numpy()
    logits = np.full((len(people), len(sites)), -np.inf)
    for k, site in enumerate(sites):
        g = np.log(site.share) + site.age * (age - 60.0) / 10.0 + site.male * male
        for term in site.terms:
            g = g + term_values(term, values[term.code], male, age)
        possible = pathway == site.pathway
        if site.sex is not None:
            possible &= male == (site.sex == "male")
        logits[:, k] = np.where(possible, g, -np.inf)
    return logits


def fit_intercepts(
    odds: FloatArray, group: IntArray, targets: FloatArray, iterations: int = 200
) -> FloatArray:
    """Per-group intercepts c with mean over the group of e^c S / (1 + e^c S) = target, where S is
    each row's summed site odds; bisection on c (the mean is increasing in c)."""
    low = np.full(len(targets), -30.0)
    high = np.full(len(targets), 30.0)
    sizes = np.maximum(np.bincount(group, minlength=len(targets)), 1)
    log_odds = np.log(np.maximum(odds, 1e-300))
    for _ in range(iterations):
        mid = (low + high) / 2.0
        mean = np.bincount(group, expit(mid[group] + log_odds), len(targets)) / sizes
        above = mean > targets
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    return (low + high) / 2.0


def draw_outcomes(
    people: pd.DataFrame,
    seen: Mapping[str, FloatArray],
    sites: Sequence[Site],
    targets: Mapping[str, float],
    rng: np.random.Generator,
    horizon_days: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """`people` plus cancer (0/1), cancer_site, diagnosis_date and true_risk: a multinomial logit
    over {no cancer, sites}, so true_risk = 1 - 1 / (1 + sum_k exp g_k) exactly. Also returns
    the root-found intercept of each group (pathway)."""
    logits = site_logits(seen, people, sites)
    groups = list(targets)
    group = pd.Categorical(people["pathway"].astype(str), categories=groups).codes.astype(np.int64)
    odds = np.exp(logits).sum(axis=1)
    intercept = fit_intercepts(odds, group, np.array([targets[g] for g in groups]))
    true_risk = expit(intercept[group] + np.log(np.maximum(odds, 1e-300)))
    u = rng.random((len(people), 3))
    cancer = u[:, 0] < true_risk
    cumulative = np.cumsum(np.exp(logits), axis=1) / np.maximum(odds, 1e-300)[:, None]
    site = np.minimum((u[:, [1]] > cumulative).sum(axis=1), len(sites) - 1)
    names = sorted({s.name for s in sites})
    site_code = np.array([names.index(s.name) for s in sites])[site]
    delay = np.clip(np.round(np.exp(np.log(45.0) + 0.7 * rng.standard_normal(len(people)))),
                    3, horizon_days).astype("timedelta64[D]")  # fmt: skip
    diagnosis = people["index_date"].to_numpy() + delay.astype("timedelta64[ns]")
    frame = people.copy()
    frame["cancer"] = cancer.astype(np.int8)
    frame["cancer_site"] = _categorical(np.where(cancer, site_code, -1), names)
    frame["diagnosis_date"] = np.where(cancer, diagnosis, np.datetime64("NaT"))
    frame["diagnosis_date"] = frame["diagnosis_date"].astype("datetime64[ns]")
    frame["true_risk"] = true_risk
    return frame, dict(zip(groups, intercept.tolist(), strict=True))


# --- myeloma case-control sampling --------------------------------------------------------------


def match_controls(
    events: pd.DataFrame, params: MyelomaParams, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Every case plus `controls_per_case` non-cases of the same age band and sex each, drawn
    at random without replacement. Returns the sampled row positions (ascending) and each row's
    matched set (the case's referral_id)."""
    cancer = events["cancer"].to_numpy() == 1
    band = events["age"].to_numpy() // params.age_band_years
    stratum = band * 2 + (events["sex"] == "male").to_numpy()
    key = rng.random(len(events))
    cases = _rank_within(np.flatnonzero(cancer), stratum, key)
    controls = _rank_within(np.flatnonzero(~cancer), stratum, key)
    # The control ranked r in a stratum goes to the case ranked r // ratio there, if it exists.
    controls["rank"] //= params.controls_per_case
    paired = controls.merge(cases, on=["stratum", "rank"], suffixes=("", "_case"))
    referral_id = events["referral_id"].to_numpy()
    rows = np.concatenate([cases["row"].to_numpy(), paired["row"].to_numpy()])
    matched = referral_id[np.concatenate([cases["row"].to_numpy(), paired["row_case"].to_numpy()])]
    order = np.argsort(rows, kind="stable")
    return rows[order], matched[order]


def _rank_within(rows: IntArray, stratum: IntArray, key: FloatArray) -> pd.DataFrame:
    """rows, their stratum, and their random rank within the stratum."""
    order = rows[np.lexsort((key[rows], stratum[rows]))]
    strata = stratum[order]
    first = np.searchsorted(strata, strata, side="left")
    return pd.DataFrame({"row": order, "stratum": strata, "rank": np.arange(len(order)) - first})


def _sampled_index(
    events: pd.DataFrame, rows: IntArray, matched_set: IntArray, params: MyelomaParams
) -> pd.DataFrame:
    index = events.iloc[rows].reset_index(drop=True)
    prevalence = float(events["cancer"].mean())
    index["matched_set"] = matched_set
    index["sampling_fraction"] = float(index["cancer"].mean())
    index["population_prevalence"] = prevalence
    return index


def _take(values: Mapping[str, FloatArray], rows: IntArray) -> dict[str, FloatArray]:
    return {code: x[rows] for code, x in values.items()}


# --- draws and artefacts ----------------------------------------------------------------------


def index_draws(
    people: pd.DataFrame, seen: Mapping[str, FloatArray], window_days: int, rng: Any
) -> Draws:
    """The index sample: within `window_days` before the index date (mostly the last weeks),
    taken in working hours, never on the index date itself."""
    lag = np.minimum(1 + rng.geometric(1 / 20, len(people)), window_days)
    return Draws(
        patient_id=people["patient_id"].to_numpy(np.int64),
        lab=people["lab"].cat.codes.to_numpy().astype(np.int64),
        sample_time=_sample_times(people["index_date"].to_numpy(), -lag, rng),
        values=dict(seen),
        hb_gdl=np.zeros(len(people), dtype=bool),
    )


def _sample_times(index_date: DateArray, offset_days: IntArray, rng: Any) -> DateArray:
    minutes = rng.integers(8 * 60, 18 * 60, len(offset_days))
    return np.asarray(
        index_date
        + offset_days.astype("timedelta64[D]").astype("timedelta64[ns]")
        + minutes.astype("timedelta64[m]").astype("timedelta64[ns]")
    )


def draw_history(
    people: pd.DataFrame,
    latent: FloatArray,
    params: ReferralParams | MyelomaParams,
    profile: TestingProfile,
    rng: np.random.Generator,
) -> Draws:
    """Older draws ((window, OLDER_DRAWS_DAYS] days before) and post-index draws ([0,
    POST_DRAWS_DAYS] days after), with latent states correlated to the index sample and fresh
    noise: a model must only ever see the index sample."""
    n, window_days = len(people), params.window_days
    older = np.minimum(rng.poisson(0.8, n), 3)
    later = np.minimum(rng.poisson(0.4, n), 2)
    owner = np.concatenate([np.repeat(np.arange(n), older), np.repeat(np.arange(n), later)])
    offset = np.concatenate(
        [
            -rng.integers(window_days + 1, OLDER_DRAWS_DAYS + 1, int(older.sum())),
            rng.integers(0, POST_DRAWS_DAYS + 1, int(later.sum())),
        ]
    )
    who = people.iloc[owner].reset_index(drop=True)
    rho = HISTORY_LATENT_CORRELATION
    z = rho * latent[owner] + np.sqrt(1 - rho**2) * rng.standard_normal((len(owner), len(LATENT)))
    z[:, 4] = latent[owner, 4]  # a paraprotein does not come and go
    bloods = draw_bloods(who, z, rng, duffy_effect=params.artefacts.duffy_null)
    values = mask_untested(bloods, draw_testing(who, z, rng, profile))
    return Draws(
        patient_id=who["patient_id"].to_numpy(np.int64),
        lab=who["lab"].cat.codes.to_numpy().astype(np.int64),
        sample_time=_sample_times(who["index_date"].to_numpy(), offset, rng),
        values=values,
        hb_gdl=np.zeros(len(owner), dtype=bool),
    )


def inject_artefacts(
    draws: Draws, switches: Artefacts, rng: np.random.Generator
) -> tuple[Draws, dict[str, BoolArray]]:
    """Reported values with the switched-on artefacts, and a flag per artefact and row. The same
    random numbers are drawn whatever is switched on, so one switch never moves another."""
    n = len(draws.patient_id)
    u = rng.random((n, 3))
    values = dict(draws.values)
    lab = np.asarray(LABS)[draws.lab]
    year = draws.sample_time.astype("datetime64[Y]").astype(np.int64) + 1970
    hb = values["haemoglobin"]
    has_hb = ~np.isnan(hb)
    wrong = switches.wrong_unit & has_hb & (u[:, 0] < WRONG_UNIT_RATE)
    gdl = (
        switches.hb_gdl
        & has_hb
        & ~wrong
        & (lab == GDL_LAB)
        & (year >= GDL_YEARS[0])
        & (year <= GDL_YEARS[1])
    )
    values["haemoglobin"] = np.where(gdl | wrong, np.round(hb / 10.0, 1), hb)

    albumin = values["albumin"]
    change = np.datetime64(ALBUMIN_ASSAY_CHANGE, "ns")
    assay = (
        switches.albumin_assay
        & ~np.isnan(albumin)
        & (lab == ALBUMIN_ASSAY_LAB)
        & (draws.sample_time >= change)
    )
    reported_albumin = np.where(assay, albumin - ALBUMIN_ASSAY_SHIFT_G_PER_L, albumin)
    values["albumin"] = reported_albumin
    values["globulin"] = values["total_protein"] - reported_albumin
    relabelled = _round("calcium_adjusted", adjusted_calcium(values["calcium"], reported_albumin))
    values["calcium_adjusted"] = np.where(assay, relabelled, values["calcium_adjusted"])

    potassium = values["potassium"]
    haemolysed = switches.haemolysis & ~np.isnan(potassium) & (u[:, 1] < HAEMOLYSIS_RATE)
    raised = np.clip(potassium + 1.2 + 1.8 * u[:, 2], HAEMOLYSIS_POTASSIUM_FLOOR, 9.5)
    values["potassium"] = np.where(haemolysed, _round("potassium", raised), potassium)

    flags = {
        "artefact_hb_gdl": gdl,
        "artefact_wrong_unit": wrong,
        "artefact_albumin_assay": assay,
        "artefact_haemolysed": haemolysed,
    }
    reported = Draws(draws.patient_id, draws.lab, draws.sample_time, values, gdl)
    return reported, flags


# --- tables -----------------------------------------------------------------------------------


def assemble_wide(
    index: pd.DataFrame, draws: Draws, flags: Mapping[str, BoolArray]
) -> pd.DataFrame:
    """Index events + sample date + artefact flags + analytes as reported (catalogue codes,
    canonical units except `haemoglobin_unit`, which says g/dL where a lab reported that)."""
    wide = index.copy()
    sample_date = draws.sample_time.astype("datetime64[D]").astype("datetime64[ns]")
    wide.insert(3, "sample_date", sample_date)
    for name in ARTEFACT_FLAGS:
        wide[name] = flags[name]
    analytes = pd.DataFrame({code: draws.values[code] for code in SIMULATED}, index=wide.index)
    unit = np.where(draws.hb_gdl, 1, 0)
    unit = np.where(np.isnan(draws.values["haemoglobin"]), -1, unit)
    analytes.insert(
        list(analytes.columns).index("haemoglobin") + 1,
        "haemoglobin_unit",
        pd.Series(_categorical(unit, ["g/L", "g/dL"]), index=analytes.index),
    )
    return pd.concat([wide, analytes], axis=1)


def long_results(draws: Sequence[Draws]) -> pd.DataFrame:
    """Lab results as an extract sends them, one row per analyte measured, sorted by patient and
    time: patient_id, sample_time, code (LOINC, or a local code at LOCAL_CODE_LAB), value, unit
    as reported, lab."""
    patient = np.concatenate([d.patient_id for d in draws])
    time = np.concatenate([d.sample_time for d in draws])
    lab = np.concatenate([d.lab for d in draws])
    gdl = np.concatenate([d.hb_gdl for d in draws])
    matrix = np.column_stack(
        [np.concatenate([d.values[code] for d in draws]) for code in SIMULATED]
    )
    order = np.lexsort((time, patient))
    row, column = np.nonzero(~np.isnan(matrix[order]))
    source = order[row]
    codes, code_table = _code_table()
    units, unit_table = _unit_table()
    unit_index = unit_table[lab[source], column]
    hb = (column == SIMULATED.index("haemoglobin")) & gdl[source]
    unit_index = np.where(hb, units.index("g/dL"), unit_index)
    return pd.DataFrame(
        {
            "patient_id": patient[source],
            "sample_time": time[source],
            "code": _categorical(code_table[lab[source], column], codes),
            "value": matrix[source, column],
            "unit": _categorical(unit_index, units),
            "lab": _categorical(lab[source], list(LABS)),
        }
    )


def _code_table() -> tuple[list[str], IntArray]:
    """Test codes by lab and analyte: LOINC, except the catalogue code at LOCAL_CODE_LAB."""
    loinc = [EGFR_LOINC if c == "egfr" else CATALOGUE[c].loinc for c in SIMULATED]
    codes = [*loinc, *SIMULATED]
    local = np.arange(len(SIMULATED)) + len(SIMULATED)
    table = np.array(
        [local if lab == LOCAL_CODE_LAB else np.arange(len(SIMULATED)) for lab in LABS]
    )
    return codes, table


def _unit_table() -> tuple[list[str], IntArray]:
    """Units by lab and analyte: UCUM, except display spellings (e.g. ×10⁹/L) at LOCAL_CODE_LAB."""
    spellings = [CATALOGUE[c].unit for c in SIMULATED]
    display = [CATALOGUE[c].display_unit for c in SIMULATED]
    units = sorted({*spellings, *display, "g/dL"})
    table = np.array(
        [
            [units.index(d if lab == LOCAL_CODE_LAB else s) for s, d in zip(spellings, display,
                                                                             strict=True)]
            for lab in LABS
        ]
    )  # fmt: skip
    return units, table


# --- summaries, files, manifest ---------------------------------------------------------------


def oracle_auc(outcome: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without both classes."""
    y = np.asarray(outcome).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def referral_summary(
    wide: pd.DataFrame, results: pd.DataFrame, intercepts: Mapping[str, float]
) -> dict[str, Any]:
    """Counts, conversion and oracle AUC per pathway, and artefact counts."""
    per_pathway = {}
    for pathway, rows in wide.groupby("pathway", observed=True):
        per_pathway[str(pathway)] = {
            "referrals": len(rows),
            "cancers": int(rows["cancer"].sum()),
            "expected_cancers": round(float(rows["true_risk"].sum()), 2),
            "configured_conversion": PATHWAY_TABLE[str(pathway)].conversion,
            "oracle_auc": round(oracle_auc(rows["cancer"], rows["true_risk"]), 4),
        }
    patients = wide["patient_id"].value_counts()
    return {
        "referrals": len(wide),
        "patients": len(patients),
        "patients_with_repeat_referrals": round(float((patients > 1).mean()), 4),
        "cancers": int(wide["cancer"].sum()),
        "oracle_auc_any_cancer": round(oracle_auc(wide["cancer"], wide["true_risk"]), 4),
        "pathways": per_pathway,
        "intercepts": {k: round(v, 6) for k, v in intercepts.items()},
        "artefacts": {name: int(wide[name].sum()) for name in ARTEFACT_FLAGS},
        "duffy_null": int(wide["duffy_null"].sum()),
        "results": len(results),
    }


def myeloma_summary(
    population: pd.DataFrame,
    wide: pd.DataFrame,
    results: pd.DataFrame,
    params: MyelomaParams,
    intercepts: Mapping[str, float],
) -> dict[str, Any]:
    """Population incidence, the sample's composition and the prior shift back to it."""
    prevalence = float(population["cancer"].mean())
    cases = int(wide["cancer"].sum())
    fraction = cases / len(wide)
    return {
        "population": len(population),
        "population_cases": int(population["cancer"].sum()),
        "population_prevalence": prevalence,
        "configured_incidence": params.incidence,
        "intercept": round(intercepts[PRIMARY_CARE], 6),
        "expected_cases": round(float(population["true_risk"].sum()), 2),
        "oracle_auc_population": round(
            oracle_auc(population["cancer"], population["true_risk"]), 4
        ),
        "sample": len(wide),
        "sample_cases": cases,
        "sample_controls": len(wide) - cases,
        "controls_per_case": params.controls_per_case,
        "unmatched_control_slots": params.controls_per_case * cases - (len(wide) - cases),
        "sampling_fraction": fraction,
        "logit_shift": logit(prevalence) - logit(fraction),
        "artefacts": {name: int(wide[name].sum()) for name in ARTEFACT_FLAGS},
        "results": len(results),
    }  # fmt: skip


def write_cohort(simulated: SimulatedCohort, out: Path) -> dict[str, str]:
    """Write the three Parquet files; returns file name -> SHA-256."""
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for part in ("wide", "results", "index"):
        path = out / f"{simulated.name}_{part}.parquet"
        frame: pd.DataFrame = getattr(simulated, part)
        frame.to_parquet(path, index=False)
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def build_manifest(
    simulated: SimulatedCohort,
    params: ReferralParams | MyelomaParams,
    seed: int,
    files: Mapping[str, str],
) -> dict[str, Any]:
    """Everything needed to reproduce and audit the files (no timestamps: same seed, same file)."""
    return {
        "cohort": simulated.name,
        "seed": seed,
        "parameters": json.loads(json.dumps(asdict(params), default=str)),
        "counts": simulated.summary,
        "files": dict(files),
        "code_version": code_version(),  # package version + git commit
        "catalogue_version": CATALOGUE.version,
    }
