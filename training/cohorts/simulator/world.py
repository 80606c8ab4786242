"""The simulated world's tables: who is referred, physiology, testing, cancer sites and their
blood signals, lab artefacts, and the parameters of each cohort. Every figure carries its source
(a [KEY] of docs/data-card.md) or says it is judgement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.analytes import CATALOGUE

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
DateArray = npt.NDArray[np.datetime64]

# Bumped whenever the simulated world changes, so that a cohort cached under an older world
# (`make run` reuses its cohorts by size and seed) is simulated again. 2: issue 15's world
# (conditions, symptom-driven testing, changes in practice, the ALT analyser change).
WORLD_VERSION = 2

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
# lab_b's analyser change: ALT by the IFCC method with pyridoxal phosphate reads higher than
# without it (judgement of the size [J]); ALT carries no risk, so the oracle is unchanged.
ALT_ASSAY_LAB = "lab_b"
ALT_ASSAY_CHANGE = date(2018, 1, 1)
ALT_ASSAY_FACTOR = 1.25
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
    "globulin": Primary((28.0, 28.0), (3.3, 3.3), (0.3, 0.0, 0.0, 0.0), age=0.3,
                        bounds=(12.0, 70.0), log=False),
    "calcium_adjusted": Primary((2.38, 2.38), (0.082, 0.082), bounds=(1.8, 3.3), log=False),
    "phosphate": Primary((1.08, 1.15), (0.16, 0.16), bounds=(0.3, 2.5), log=False),
    "alp": Primary((75.0, 75.0), (0.26, 0.26), (0.05, 0.0, 0.0, 0.0), age=0.04,
                   bounds=(20.0, 2000.0)),
    "alt": Primary((21.0, 16.0), (0.37, 0.37), age=-0.05, bounds=(3.0, 1000.0)),
    "ggt": Primary((23.0, 15.0), (0.36, 0.36), bounds=(3.0, 2000.0)),
    "bilirubin": Primary((9.0, 7.5), (0.45, 0.45), bounds=(2.0, 400.0)),
    "crp": Primary((1.1, 1.2), (0.58, 0.58), (0.6, 0.0, 0.0, 0.1), bounds=(0.0, 480.0)),
    "ferritin": Primary((120.0, 75.0), (0.7, 0.7), (0.2, -0.3, 0.0, 0.0), age=0.06,
                        bounds=(2.0, 3000.0)),
}  # fmt: skip
MCHC_PER_LOG_MCV = -0.5  # log MCHC per log MCV above its centre (see above)
ESR_SD = (0.35, 0.015, 0.45)  # log ESR: inflammation loading, per g/L globulin, idiosyncratic
ESR_UPPER_QUANTILE_Z = 1.75  # the catalogue's age/sex upper limit sits at this z of healthy ESR
PV_MODEL = (1.61, 0.001, 0.05, 0.04)  # mPa.s: mean, per g/L globulin, per inflammation SD, noise
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
    if code
    in {*FBC, *DIFFERENTIAL, *RENAL, *LIVER, *BONE, *MARKERS, "ggt", "crp", "esr", "ferritin"}
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
    ferritin: float  # without a reason; conditions (iron deficiency, bleeding) add theirs
    suspicion: float = 0.6  # log-odds per SD of inflammation, for CRP and ESR/PV requests
    markers: bool = True


# FBC 95%, U&E 89%, LFT 76% of tested cancer patients [NCDA1]; CRP tested about half as often as
# an FBC [OXF]; PinPoint needs a core FBC and U&E [PP1].
REFERRAL_TESTING = TestingProfile(
    fbc=0.98, renal=0.98, liver=0.82, bone_given_liver=0.6, ggt_given_liver=0.6, crp=0.5,
    esr_or_pv=0.35, ferritin=0.12,
)  # fmt: skip
LIVER_BOOST: dict[str, float] = {"lower_gi": 0.06, "upper_gi": 0.08, "haematological": 0.08}
# The myeloma cohort is adults with routine bloods including an FBC [MY4].
PRIMARY_CARE_TESTING = TestingProfile(
    fbc=1.0, renal=0.92, liver=0.78, bone_given_liver=0.55, ggt_given_liver=0.6, crp=0.42,
    esr_or_pv=0.32, ferritin=0.1, markers=False,
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
    cap: float | None = 3.0  # the hinge levels off `cap` scales beyond it (None: it never does)

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
    return _lo("haemoglobin", 12.0, weight, at=15.0, cap=3.5)


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
    _lo("haemoglobin", 10.0, 2.4),
    _hi("mcv", 4.0, 0.5),
    _lo("mcv", 3.0, -0.5, at=6.0),  # a microcytic (iron-deficient) anaemia points away from myeloma
    _ca(0.8),
    _hi("globulin", 5.0, 0.3),
    _hi("creatinine", 0.25, 0.2, log=True),
    _lo("platelets", 0.25, 0.3, log=True),
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
        _hb_drift(0.33), _mcv_drift(0.3), _hi("rdw", 1.0, 0.15), _plt_drift(0.3), _crp(0.3),
        _hi("cea", 0.4, 0.9, log=True))),
    Site("colorectal_left", "lower_gi", 0.6, age=0.45, male=0.3, terms=(
        _hb_drift(0.25), _mcv_drift(0.15), _plt_drift(0.25), _crp(0.25),
        _hi("cea", 0.4, 0.9, log=True))),
    Site("lung", "lung", 1.0, age=0.35, male=0.2, terms=(  # [PLT][IM][CA3][ALB]
        _plt_drift(1.0), _crp(1.0), _alb(0.2), _ca(0.8), _hi("alp", 0.3, 0.5, log=True),
        _hb(0.6), _lo("sodium", 2.0, 0.4))),
    Site("melanoma", "skin", 0.3, age=0.25),
    Site("squamous_cell", "skin", 0.7, age=0.6, male=0.5, terms=(_crp(0.2),)),
    Site("oesophagogastric", "upper_gi", 0.6, age=0.4, male=0.5, terms=(
        _hb_drift(0.35), _mcv_drift(0.2), _plt_drift(0.25), _alb(0.2), _crp(0.3))),
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
    "myeloma", PRIMARY_CARE, 1.0, age=0.45, male=0.25,
    terms=MYELOMA_TERMS,
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
    alt_assay: bool = True  # ALT_ASSAY_LAB from ALT_ASSAY_CHANGE: ALT reads ALT_ASSAY_FACTOR higher

    @classmethod
    def none(cls) -> Artefacts:
        """Every artefact switched off: clean data that raises no validation issue."""
        return cls(False, False, False, False, False, False)


@dataclass(frozen=True)
class Practice:
    """Changes in referral practice (both on by default; documented in the data card §2a)."""

    ng12: bool = True  # from NG12_DATE: lower referral threshold, more and lower-risk referrals
    fit_triage: bool = True  # lower GI from FIT_DATE: FIT-positive referrals, a changed case mix

    @classmethod
    def none(cls) -> Practice:
        return cls(False, False)


NG12_DATE = date(2015, 6, 23)  # NICE NG12 published 23 June 2015 [NG12]
NG12_RAMP_DAYS = 365  # practice follows a guideline over about a year [TWW1]
LOW_THRESHOLD_SHARE = (0.10, 0.45)  # share of low-threshold referrals before / after NG12 [J]
LOW_THRESHOLD_YOUNGER = 8.0  # years: low-threshold referrals are younger on average [J]
NG12_VOLUME = 1.25  # referral volume after NG12 relative to the trend before it [TWW1]
FIT_DATE = date(2017, 4, 1)  # FIT in symptomatic lower-GI triage spreads from 2017-18 [LGI2]
FIT_LOW_THRESHOLD_SHARE = 0.05  # FIT-negative, low-risk people are no longer referred [LGI2]
PRACTICE_BASELINE_END = NG12_DATE  # outcome intercepts are fitted on referrals before it


@dataclass(frozen=True)
class ReferralParams:
    """Urgent suspected-cancer referrals (PinPoint style)."""

    n: int = 100_000
    start: date = date(2011, 1, 1)
    end: date = date(2019, 12, 31)
    volume_growth: float = 0.12  # relative volume = 1 + growth x years since start [TWW1]
    window_days: int = 90  # the index sample is the latest within this window before the index
    artefacts: Artefacts = field(default_factory=Artefacts)
    practice: Practice = field(default_factory=Practice)


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
    artefacts: Artefacts = field(default_factory=Artefacts)


@dataclass(frozen=True)
class SimulatedCohort:
    """One simulated cohort: the wide table, the long extract and its summary counts."""

    name: str
    wide: pd.DataFrame  # one row per index event, analytes as reported
    results: pd.DataFrame  # long lab results: patient_id, sample_time, code, value, unit, lab
    index: pd.DataFrame  # index events: ids, dates, demographics, outcome, true_risk
    summary: dict[str, Any]
    # A case-control cohort also has its whole source population (in the wide layout, so that
    # a model can be replayed over it) and that population's counts per matching stratum.
    population: pd.DataFrame | None = None
    strata: pd.DataFrame | None = None  # age_from, sex, population, cases


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
# The values each artefact changes so that a model sees something other than what the truth
# was computed from (Hb in g/dL is converted back exactly, so it is not here).
ARTEFACT_CODES: dict[str, tuple[str, ...]] = {
    "artefact_wrong_unit": ("haemoglobin",),
    "artefact_albumin_assay": ("albumin", "globulin", "calcium_adjusted"),
    "artefact_haemolysed": ("potassium",),
    "artefact_alt_assay": ("alt",),
}
ARTEFACT_FLAGS = (
    "artefact_hb_gdl",
    "artefact_wrong_unit",
    "artefact_albumin_assay",
    "artefact_haemolysed",
    "artefact_alt_assay",
)
