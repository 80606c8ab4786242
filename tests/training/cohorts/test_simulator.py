"""The cohort simulator: hand-computed pieces, then the acceptance checks on simulated cohorts.

Cohorts are small (30,000 referrals, a 200,000-person myeloma population; 60,000 people when
the myeloma files are read back) and simulated once per module; anything slower is marked
`slow`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.analytes import CATALOGUE, Interval
from models.frame_validation import validate_frame
from models.spec import PATHWAYS, load_spec
from training.cohorts.asof import as_of_wide
from training.cohorts.simulator import run_simulation, simulate_myeloma, simulate_referrals
from training.cohorts.simulator.bloods import ckd_epi_2021, reference_limit
from training.cohorts.simulator.outcomes import fit_intercepts, oracle_auc, term_values
from training.cohorts.simulator.world import (
    ARTEFACT_FLAGS,
    HAEMOLYSIS_RATE,
    PATHWAY_TABLE,
    PRACTICE_BASELINE_END,
    SIMULATED,
    Artefacts,
    MyelomaParams,
    Practice,
    ReferralParams,
    SimulatedCohort,
    Term,
)

N_REFERRALS = 30_000
N_POPULATION = 200_000
N_FILES = 60_000  # the myeloma cohort written to disk
SEED = 20261121
# eGFR's "reference" (>= 90) is a CKD staging cut-off, not a 95% interval (it falls with age);
# tumour markers and ferritin are requested for a reason, so none is a healthy sample.
NOT_REFERENCE_SAMPLES = ("egfr", "psa", "ca125", "cea", "ferritin")


@pytest.fixture(scope="module")
def referrals() -> SimulatedCohort:
    return simulate_referrals(ReferralParams(n=N_REFERRALS), np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def clean() -> SimulatedCohort:
    params = ReferralParams(n=N_REFERRALS, artefacts=Artefacts.none())
    return simulate_referrals(params, np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def steady() -> SimulatedCohort:
    params = ReferralParams(n=N_REFERRALS, artefacts=Artefacts.none(), practice=Practice.none())
    return simulate_referrals(params, np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def myeloma() -> SimulatedCohort:
    return simulate_myeloma(MyelomaParams(n=N_POPULATION), np.random.default_rng(SEED))


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Analyte values in canonical units, as validation hands them to a model."""
    return validate_frame(frame).values


def issue_set(frame: pd.DataFrame) -> set[tuple[int, str, str]]:
    issues = validate_frame(frame).issues
    return {(int(r), str(c), str(f)) for r, c, f in issues[["row", "code", "field"]].to_numpy()}


# --- hand-computed pieces -----------------------------------------------------------------------


def test_fit_intercepts_solves_hand_computed_targets() -> None:
    odds = np.array([1.0, 1.0, 3.0, 3.0])
    group = np.array([0, 0, 1, 1])
    # e^c x 1 / (1 + e^c x 1) = 0.5 and e^c x 3 / (1 + e^c x 3) = 0.75 both give c = 0.
    intercepts = fit_intercepts(odds, group, np.array([0.5, 0.75]))
    np.testing.assert_allclose(intercepts, [0.0, 0.0], atol=1e-9, err_msg="bisection root")


def test_term_is_a_soft_hinge_at_the_catalogue_limit() -> None:
    term = Term("platelets", "high", scale=0.2, weight=1.5, log=True, cap=None)
    x = np.array([400.0, np.nan, 400.0 * np.exp(2.0)])
    values = term_values(term, x, np.array([True, True, False]), np.array([60.0, 60.0, 60.0]))
    np.testing.assert_allclose(values[0], 1.5 * np.log(2.0), err_msg="at the limit: w log 2")
    np.testing.assert_allclose(values[1], 1.5 * np.logaddexp(0, -2), err_msg="untested value")
    np.testing.assert_allclose(values[2], 1.5 * np.logaddexp(0, 10.0), err_msg="2 log units up")
    untested = Term("crp", "high", 0.8, 0.5, log=True, missing=0.0)
    assert term_values(untested, np.array([np.nan]), np.array([True]), np.array([50.0]))[0] == 0
    # Hb 'low' hinge moved 25 g/L into the normal range: for a woman (limit 115) it sits at 140.
    drift = Term("haemoglobin", "low", scale=10.0, weight=1.0, at=25.0, cap=None)
    at_hinge = term_values(drift, np.array([140.0]), np.array([False]), np.array([60.0]))
    np.testing.assert_allclose(at_hinge, np.log(2.0), err_msg="hinge at limit + at")


def test_a_capped_term_levels_off() -> None:
    # cap 3: softplus(d) - softplus(d - 3); at the limit log 2 - log(1 + e^-3), far beyond 3.
    term = Term("platelets", "high", scale=0.2, weight=1.5, log=True, cap=3.0)
    x = np.array([400.0, 400.0 * np.exp(0.6), 400.0 * np.exp(20.0)])
    values = term_values(term, x, np.array([True] * 3), np.array([60.0] * 3))
    np.testing.assert_allclose(values[0], 1.5 * (np.log(2.0) - np.log1p(np.exp(-3.0))))
    np.testing.assert_allclose(values[1], 1.5 * (np.log1p(np.exp(3.0)) - np.log(2.0)))
    np.testing.assert_allclose(values[2], 1.5 * 3.0, rtol=1e-9, err_msg="levels off at w x cap")
    assert np.all(np.diff(values) > 0), "still rising below the plateau"


def test_ckd_epi_2021_matches_hand_computed_values() -> None:
    # Male, 60 y, creatinine 1.0 mg/dL: 142 x 0.9^1.2 x 0.9938^60 = 86.1 mL/min/1.73 m2.
    # Female, 60 y, creatinine 0.7 mg/dL: 142 x 0.9938^60 x 1.012 = 98.9.
    egfr = ckd_epi_2021(np.array([88.4, 61.88]), np.array([60.0, 60.0]), np.array([True, False]))
    expected = [142 * 0.9**1.2 * 0.9938**60, 142 * 0.9938**60 * 1.012]
    np.testing.assert_allclose(egfr, expected, rtol=1e-12, err_msg="CKD-EPI 2021")


@pytest.mark.parametrize("code", ["haemoglobin", "creatinine", "esr", "psa", "ggt"])
def test_reference_limit_agrees_with_the_catalogue(code: str) -> None:
    analyte = CATALOGUE[code]
    ages = np.arange(18.0, 100.0)
    for sex in ("male", "female"):
        male = np.full(len(ages), sex == "male")
        for side in ("low", "high"):
            got = reference_limit(analyte, side, male, ages)
            want = [getattr(analyte.reference_for(sex, a), side) for a in ages]
            want_array = np.array([np.nan if w is None else w for w in want], dtype=float)
            np.testing.assert_array_equal(got, want_array, err_msg=f"{code} {sex} {side}")


def test_oracle_auc_hand_example() -> None:
    assert oracle_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75, "3 of 4 pairs ordered"


# --- reproducibility and files ------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    first = run_simulation(cohort="referrals", n=3000, seed=5, out=tmp_path / "a")
    again = run_simulation(cohort="referrals", n=3000, seed=5, out=tmp_path / "b")
    other = run_simulation(cohort="referrals", n=3000, seed=6, out=tmp_path / "c")
    assert first == again, "same seed: same manifest, including every Parquet file's SHA-256"
    for name in first["files"]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "a" / name), pd.read_parquet(tmp_path / "b" / name)
        )
        assert first["files"][name] != other["files"][name], f"{name}: seed 6 must differ"


def test_manifest_records_seed_parameters_counts_and_code_version(tmp_path: Path) -> None:
    manifest = run_simulation(cohort="referrals", n=2000, seed=3, out=tmp_path, artefacts=False)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest, "manifest.json holds what run_simulation returns"
    assert manifest["seed"] == 3
    assert manifest["parameters"]["n"] == 2000
    assert not any(manifest["parameters"]["artefacts"].values()), "artefacts=False: all off"
    assert manifest["counts"]["referrals"] == 2000
    assert set(manifest["files"]) == {
        "referrals_wide.parquet",
        "referrals_results.parquet",
        "referrals_index.parquet",
    }
    assert manifest["code_version"].startswith("0."), "package version (+git commit when known)"


def test_cli_simulate_writes_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    result = CliRunner().invoke(
        app, ["simulate", "--cohort", "referrals", "--n", "1500", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "referrals_wide.parquet").exists(), "the CLI writes the wide table"


def test_unknown_cohort_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cohort"):
        run_simulation(cohort="lymphoma", n=10, out=tmp_path)


# --- referral cohort: people --------------------------------------------------------------------


def test_wide_table_columns_and_types(referrals: SimulatedCohort) -> None:
    wide = referrals.wide
    required = [
        "patient_id", "referral_id", "index_date", "sample_date", "pathway", "lab", "age", "sex",
        "deprivation", "ethnicity", "duffy_null", *ARTEFACT_FLAGS, "cancer", "cancer_site",
        "diagnosis_date", "true_risk", "haemoglobin_unit", *SIMULATED,
    ]  # fmt: skip
    missing = [c for c in required if c not in wide.columns]
    assert not missing, f"wide table lacks {missing}"
    assert wide["referral_id"].is_unique, "one row per referral"
    assert pd.api.types.is_datetime64_any_dtype(wide["index_date"]), "index_date is a datetime"
    assert set(wide["sex"].astype(str)) == {"male", "female"}
    assert set(wide["cancer"].unique()) == {0, 1}
    assert wide["index_date"].between("2011-01-01", "2019-12-31").all(), "2011-2019 only"
    assert (wide["sample_date"] < wide["index_date"]).all(), "the sample precedes the index"
    lag = (wide["index_date"] - wide["sample_date"]).dt.days
    assert lag.between(1, 90).all(), "the sample is within the 90-day window"
    cases = wide[wide["cancer"] == 1]
    delay = (cases["diagnosis_date"] - cases["index_date"]).dt.days
    assert delay.between(1, 365).all(), "cancers are diagnosed within 12 months"
    assert wide.loc[wide["cancer"] == 0, "diagnosis_date"].isna().all()
    assert cases["cancer_site"].notna().all(), "every cancer has a site"
    assert wide.loc[wide["cancer"] == 0, "cancer_site"].isna().all()
    assert all(str(p) in PATHWAYS for p in wide["pathway"].unique()), "models.spec.PATHWAYS only"


def test_demographics_follow_the_pathway(referrals: SimulatedCohort) -> None:
    wide = referrals.wide
    female = (wide["sex"] == "female").groupby(wide["pathway"], observed=True).mean()
    assert female["breast"] > 0.97, "breast referrals are ~99% women"
    assert female["gynaecological"] == 1.0, "gynaecological referrals are all women"
    assert 0.10 < female["urological"] < 0.20, "urological referrals are ~85% men"
    assert wide["age"].min() >= 18, "adults only"
    assert wide["age"].between(50, 85).mean() > 0.6, "mostly aged 50-85"
    assert set(wide["deprivation"].unique()) == {1, 2, 3, 4, 5}
    ethnicity = wide.drop_duplicates("patient_id")["ethnicity"].value_counts(normalize=True)
    assert abs(ethnicity["white"] - 0.85) < 0.02 and abs(ethnicity["black"] - 0.04) < 0.01
    assert set(wide["lab"].astype(str)) == {"lab_a", "lab_b", "lab_c"}
    repeats = (wide["patient_id"].value_counts() > 1).mean()
    assert 0.06 < repeats < 0.10, f"~8% of patients have 2+ referrals, got {repeats:.3f}"
    shares = wide["pathway"].value_counts(normalize=True)
    for pathway, profile in PATHWAY_TABLE.items():
        assert abs(shares[pathway] - profile.share) < 0.015, f"{pathway} share"
    by_year = wide["index_date"].dt.year.value_counts()
    assert by_year[2019] > 1.6 * by_year[2011], "volume rises over the years"


def test_a_patients_attributes_are_fixed_across_referrals(referrals: SimulatedCohort) -> None:
    per_patient = referrals.wide.groupby("patient_id", observed=True)[
        ["sex", "lab", "ethnicity", "deprivation", "duffy_null"]
    ].nunique()
    assert (per_patient == 1).all().all(), "sex, lab, ethnicity... belong to the patient"


# --- referral cohort: bloods --------------------------------------------------------------------


def test_clean_cohort_raises_no_validation_issue(clean: SimulatedCohort) -> None:
    issues = validate_frame(clean.wide).issues
    assert issues.empty, f"clean data must raise nothing:\n{issues.head(10)}"


def test_reported_values_hang_together(clean: SimulatedCohort) -> None:
    v = clean.wide
    fbc = v["rbc"].notna()
    np.testing.assert_allclose(v["haematocrit"][fbc], (v["rbc"] * v["mcv"] / 1000).round(3)[fbc])
    np.testing.assert_allclose(v["haemoglobin"][fbc], (v["haematocrit"] * v["mchc"]).round()[fbc])
    np.testing.assert_allclose(v["mch"][fbc], (v["mcv"] * v["mchc"] / 1000).round(1)[fbc])
    differential = v[["neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils"]]
    assert (v["wbc"][fbc] >= differential.sum(axis=1)[fbc] - 1e-9).all(), "WBC >= differential"
    protein = v["albumin"].notna()
    np.testing.assert_array_equal(
        v["globulin"][protein], (v["total_protein"] - v["albumin"])[protein], "globulin = TP - alb"
    )
    assert (v["albumin"][protein] < v["total_protein"][protein]).all()
    bone = v["calcium"].notna()
    total = (v["calcium_adjusted"] - 0.02 * (40 - v["albumin"])).round(2)
    np.testing.assert_allclose(v["calcium"][bone], total[bone], atol=0.0051)
    assert v["potassium"].max() <= 6.0, "clean potassium never exceeds 6.0 mmol/L"
    for code in SIMULATED:
        decimals = CATALOGUE[code].decimals
        x = v[code].dropna().to_numpy()
        np.testing.assert_allclose(x, np.round(x, decimals), atol=1e-9, err_msg=f"{code} rounding")


def without_conditions(wide: pd.DataFrame) -> pd.Series:
    return ~wide[[c for c in wide.columns if c.startswith("condition_")]].any(axis=1)


def test_healthy_values_sit_inside_reference_intervals(clean: SimulatedCohort) -> None:
    healthy = clean.wide[(clean.wide["cancer"] == 0) & without_conditions(clean.wide)]
    keys = healthy[["sex", "age"]].astype({"sex": str}).drop_duplicates()
    for code in (c for c in SIMULATED if c not in NOT_REFERENCE_SAMPLES):
        analyte = CATALOGUE[code]
        intervals = {
            (sex, age): analyte.reference_for(sex, float(age))
            for sex, age in keys.itertuples(index=False)
        }
        rows = healthy[healthy[code].notna()]
        inside = [
            _contains(intervals[(str(s), a)], x)
            for s, a, x in zip(rows["sex"], rows["age"], rows[code], strict=True)
        ]
        coverage = float(np.mean(inside))
        assert 0.90 <= coverage <= 0.99, f"{code}: {coverage:.3f} of healthy values inside the RI"


def _contains(interval: Interval, value: float) -> bool:
    return interval.contains(value)


def test_age_and_sex_effects(clean: SimulatedCohort) -> None:
    v = clean.wide[clean.wide["cancer"] == 0]
    hb = v.groupby("sex", observed=True)["haemoglobin"].median()
    assert hb["male"] > hb["female"] + 5, "haemoglobin is higher in men"
    old = v.loc[v["age"] >= 70, "creatinine"].median()
    young = v.loc[v["age"] < 50, "creatinine"].median()
    assert old > young, "creatinine rises with age"


def test_missingness_looks_like_primary_care(clean: SimulatedCohort) -> None:
    v = clean.wide
    tested = v[list(SIMULATED)].notna()
    assert 0.97 < tested["haemoglobin"].mean() < 0.99, "FBC ~98% complete"
    assert (tested["haemoglobin"] == tested["basophils"]).all(), "FBC missing as a whole panel"
    assert 0.97 < tested["creatinine"].mean() < 0.99, "U&E ~98% complete"
    assert 0.75 < tested["alp"].mean() < 0.90, "liver tests 75-90%"
    assert 0.45 < tested["crp"].mean() < 0.65, "CRP partly tested"
    pv_lab = v["lab"] == "lab_c"
    assert not tested.loc[pv_lab, "esr"].any(), "the PV lab does no ESR"
    assert not tested.loc[~pv_lab, "plasma_viscosity"].any(), "only the PV lab does PV"
    uro_men = (v["pathway"] == "urological") & (v["sex"] == "male")
    assert tested.loc[uro_men, "psa"].mean() > 0.8, "PSA mostly in urological men"
    assert not tested.loc[v["sex"] == "female", "psa"].any(), "no PSA in women"
    gynae = v["pathway"] == "gynaecological"
    assert tested.loc[gynae, "ca125"].mean() > 0.6, "CA125 in gynaecological referrals"
    assert not tested.loc[v["sex"] == "male", "ca125"].any(), "no CA125 in men"
    gi = v["pathway"].isin(["lower_gi", "upper_gi"])
    assert 0.05 < tested.loc[gi, "cea"].mean() < 0.35, "CEA in a minority of GI referrals"


# --- referral cohort: outcome -------------------------------------------------------------------


def test_conversion_per_pathway_within_binomial_tolerance(clean: SimulatedCohort) -> None:
    # The intercepts are root-found on the referrals before practice changed (NG12, 2015).
    v = clean.wide[clean.wide["index_date"] < np.datetime64(PRACTICE_BASELINE_END)]
    for pathway, profile in PATHWAY_TABLE.items():
        rows = v[v["pathway"] == pathway]
        p, n = profile.conversion, len(rows)
        expected = rows["true_risk"].mean()
        assert abs(expected - p) < 1e-6, f"{pathway}: mean true_risk is root-found to {p}"
        tolerance = 4 * np.sqrt(p * (1 - p) / n)
        assert abs(rows["cancer"].mean() - p) < tolerance, f"{pathway} conversion"
    assert 0.06 < v["cancer"].mean() < 0.08, "about 7% overall"


def test_cancer_sites_belong_to_the_pathway(clean: SimulatedCohort) -> None:
    cases = clean.wide[clean.wide["cancer"] == 1]
    pairs = set(zip(cases["pathway"].astype(str), cases["cancer_site"].astype(str), strict=True))
    assert ("lower_gi", "colorectal_right") in pairs and ("urological", "prostate") in pairs
    assert not any(p == "lower_gi" and s not in {"colorectal_right", "colorectal_left"}
                   for p, s in pairs), "lower-GI sites are colorectal"  # fmt: skip
    prostate = cases[cases["cancer_site"] == "prostate"]
    assert (prostate["sex"] == "male").all(), "prostate cancers occur in men"


def test_effect_directions(referrals: SimulatedCohort) -> None:
    v = canonical(referrals.wide)
    wide = referrals.wide
    lower_gi = wide["pathway"] == "lower_gi"
    cases, controls = lower_gi & (wide["cancer"] == 1), lower_gi & (wide["cancer"] == 0)
    assert v.loc[cases, "haemoglobin"].median() < v.loc[controls, "haemoglobin"].median()
    assert v.loc[cases, "platelets"].median() > v.loc[controls, "platelets"].median()
    uro = wide["pathway"] == "urological"
    uro_cases, uro_controls = uro & (wide["cancer"] == 1), uro & (wide["cancer"] == 0)
    assert v.loc[uro_cases, "psa"].median() > 2 * v.loc[uro_controls, "psa"].median()
    old, young = wide["age"] >= 70, wide["age"] < 50
    assert wide.loc[old, "true_risk"].mean() > wide.loc[young, "true_risk"].mean(), "age"


def test_oracle_auc_is_pinpoint_like(clean: SimulatedCohort) -> None:
    auc = oracle_auc(clean.wide["cancer"], clean.wide["true_risk"])
    assert 0.74 < auc < 0.86, f"any-cancer oracle AUC {auc:.3f}"


def test_risk_model_is_stationary_without_practice_changes(steady: SimulatedCohort) -> None:
    v = steady.wide
    early = v["index_date"] < "2016-01-01"
    late = v["index_date"] >= "2017-01-01"
    ratio = v.loc[late, "true_risk"].mean() / v.loc[early, "true_risk"].mean()
    assert abs(ratio - 1) < 0.05, f"mean true risk 2017-19 vs 2011-15 is {ratio:.3f}"


def test_practice_changes_move_conversion(clean: SimulatedCohort) -> None:
    # NG12 (2015): more, younger, healthier referrals, so conversion falls; FIT triage in lower
    # GI (2017-18): FIT-positive referrals, so lower-GI conversion rises. Expected risk, not
    # drawn outcomes, so the comparison is not noise.
    v = clean.wide
    year = v["index_date"].dt.year
    before, after = v[year <= 2014], v[year >= 2017]
    assert after["true_risk"].mean() < 0.93 * before["true_risk"].mean(), "NG12 lowers conversion"
    assert after["age"].mean() < before["age"].mean() - 1, "and brings younger referrals"
    lgi = v["pathway"] == "lower_gi"
    fit, pre = v[lgi & (year >= 2018)], v[lgi & (year <= 2014)]
    assert fit["true_risk"].mean() > 1.15 * pre["true_risk"].mean(), "FIT raises LGI conversion"
    assert fit["condition_occult_bleeding"].mean() > 1.5 * pre["condition_occult_bleeding"].mean()
    by_year = v["index_date"].dt.year.value_counts()
    assert by_year[2016] > 1.15 * by_year[2014], "NG12 steps referral volume up"


# --- artefacts ----------------------------------------------------------------------------------


def test_each_artefact_raises_exactly_its_issue(referrals: SimulatedCohort) -> None:
    wide = referrals.wide
    expected_codes = {
        "artefact_hb_gdl": ("unit_converted", "haemoglobin"),
        "artefact_wrong_unit": ("out_of_limits", "haemoglobin"),
        "artefact_haemolysed": ("possible_haemolysis", "potassium"),
        "artefact_albumin_assay": None,  # drift: found by monitoring, not by validation
        "artefact_alt_assay": None,  # the same
    }
    expected = {
        (int(i), *issue)
        for flag, issue in expected_codes.items()
        if issue is not None
        for i in np.flatnonzero(wide[flag].to_numpy())
    }
    assert all(wide[name].any() for name in ARTEFACT_FLAGS), "every artefact occurs"
    assert issue_set(wide) == expected, "wide: issues are exactly the injected artefacts"
    as_of = as_of_wide(referrals.results, referrals.index)
    assert issue_set(as_of) == expected, "long -> as-of wide: the same issues, nothing else"


def test_artefacts_never_change_the_truth(
    referrals: SimulatedCohort, clean: SimulatedCohort
) -> None:
    a, b = referrals.wide, clean.wide
    np.testing.assert_array_equal(a["true_risk"], b["true_risk"], "true risk ignores artefacts")
    np.testing.assert_array_equal(a["cancer"], b["cancer"])
    touched = {
        "haemoglobin": a["artefact_hb_gdl"] | a["artefact_wrong_unit"],
        "albumin": a["artefact_albumin_assay"],
        "globulin": a["artefact_albumin_assay"],
        "calcium_adjusted": a["artefact_albumin_assay"] & a["calcium"].notna(),
        "potassium": a["artefact_haemolysed"],
        "alt": a["artefact_alt_assay"],
        "neutrophils": a["duffy_null"] & a["neutrophils"].notna(),
        "wbc": a["duffy_null"] & a["wbc"].notna(),
    }
    for code in SIMULATED:
        differs = ~np.isclose(a[code], b[code], equal_nan=True, rtol=0, atol=1e-9)
        allowed = touched.get(code, pd.Series(False, index=a.index)).to_numpy()
        assert not (differs & ~allowed).any(), f"{code} changed outside its artefact's rows"


def test_hb_gdl_lab_and_wrong_unit(referrals: SimulatedCohort, clean: SimulatedCohort) -> None:
    a, b = referrals.wide, clean.wide
    gdl = a["artefact_hb_gdl"]
    assert (a.loc[gdl, "lab"] == "lab_b").all()
    assert a.loc[gdl, "sample_date"].dt.year.between(2013, 2015).all()
    assert (a.loc[gdl, "haemoglobin_unit"] == "g/dL").all(), "the unit is stated"
    np.testing.assert_allclose(a.loc[gdl, "haemoglobin"] * 10, b.loc[gdl, "haemoglobin"])
    wrong = a["artefact_wrong_unit"]
    assert (a.loc[wrong, "haemoglobin_unit"] == "g/L").all(), "a g/dL value labelled g/L"
    np.testing.assert_allclose(a.loc[wrong, "haemoglobin"] * 10, b.loc[wrong, "haemoglobin"])
    assert 0 < wrong.mean() < 0.002, "about 0.05% of Hb values"
    assert (a.loc[~gdl & a["haemoglobin"].notna(), "haemoglobin_unit"] == "g/L").all()


def test_albumin_assay_change(referrals: SimulatedCohort, clean: SimulatedCohort) -> None:
    a, b = referrals.wide, clean.wide
    shifted = a["artefact_albumin_assay"]
    eligible = (a["lab"] == "lab_c") & (a["sample_date"] >= "2017-01-01") & a["albumin"].notna()
    np.testing.assert_array_equal(shifted, eligible, "every lab_c albumin from 2017 is shifted")
    np.testing.assert_array_equal(a.loc[shifted, "albumin"], b.loc[shifted, "albumin"] - 6)
    np.testing.assert_array_equal(a.loc[shifted, "total_protein"], b.loc[shifted, "total_protein"])
    np.testing.assert_array_equal(
        a.loc[shifted, "globulin"], a.loc[shifted, "total_protein"] - a.loc[shifted, "albumin"]
    )
    rise = (a["calcium_adjusted"] - b["calcium_adjusted"])[shifted].dropna()
    assert rise.between(0.11, 0.13).all(), "adjusted calcium about +0.12 mmol/L"


def test_haemolysis(referrals: SimulatedCohort, clean: SimulatedCohort) -> None:
    a = referrals.wide
    flagged = a["artefact_haemolysed"]
    assert (a.loc[flagged, "potassium"] > 6.0).all(), "haemolysed potassium exceeds 6.0"
    assert (a.loc[~flagged, "potassium"].dropna() <= 6.0).all()
    tested = a["potassium"].notna()
    n = int(tested.sum())
    tolerance = 4 * np.sqrt(HAEMOLYSIS_RATE * (1 - HAEMOLYSIS_RATE) / n)
    assert abs(flagged[tested].mean() - HAEMOLYSIS_RATE) < tolerance, "about 3% of samples"


def test_duffy_null_subgroup(referrals: SimulatedCohort, clean: SimulatedCohort) -> None:
    a, b = referrals.wide, clean.wide
    patients = a.drop_duplicates("patient_id")
    black = patients["ethnicity"] == "black"
    share = patients.loc[black, "duffy_null"].mean()
    assert 0.55 < share < 0.78, f"~2/3 of Black patients are Duffy-null, got {share:.2f}"
    assert not patients.loc[~black, "duffy_null"].any()
    duffy = a["duffy_null"] & a["neutrophils"].notna()
    ratio = (a.loc[duffy, "neutrophils"] / b.loc[duffy, "neutrophils"]).median()
    assert 0.5 < ratio < 0.6, "neutrophils about 45% lower"
    assert (
        validate_frame(a[a["duffy_null"]])
        .issues["code"]
        .isin(["unit_converted", "out_of_limits", "possible_haemolysis"])
        .all()
    ), "the subgroup raises no issue of its own"


def test_each_artefact_switches_off_alone(referrals: SimulatedCohort) -> None:
    params = ReferralParams(n=N_REFERRALS, artefacts=Artefacts(haemolysis=False))
    partial = simulate_referrals(params, np.random.default_rng(SEED)).wide
    assert not partial["artefact_haemolysed"].any(), "haemolysis switched off"
    for name in ("artefact_hb_gdl", "artefact_wrong_unit", "artefact_albumin_assay"):
        np.testing.assert_array_equal(partial[name], referrals.wide[name], f"{name} unchanged")
    untouched = ~referrals.wide["artefact_haemolysed"]
    np.testing.assert_array_equal(
        partial.loc[untouched, "potassium"], referrals.wide.loc[untouched, "potassium"]
    )


# --- long format and as-of ----------------------------------------------------------------------


def test_long_table_is_compact_and_holds_history(referrals: SimulatedCohort) -> None:
    results, index = referrals.results, referrals.index
    assert results["value"].dtype == np.float64, "values stay float64"
    for column in ("code", "unit", "lab"):
        assert isinstance(results[column].dtype, pd.CategoricalDtype), f"{column} categorical"
    local = results["lab"] == "lab_c"
    assert results.loc[local, "code"].astype(str).isin(CATALOGUE.codes).all(), "local codes"
    loinc = results.loc[~local, "code"].astype(str).unique()
    assert all(CATALOGUE.resolve(c) is not None and c not in CATALOGUE for c in loinc), "LOINC"
    single = index[~index["patient_id"].duplicated(keep=False)]
    joined = results.merge(single[["patient_id", "index_date"]], on="patient_id")
    after = (joined["sample_time"] >= joined["index_date"]).mean()
    older = (joined["sample_time"] < joined["index_date"] - pd.Timedelta(days=90)).mean()
    assert after > 0.05 and older > 0.1, "post-index and older draws are present"
    per_analyte = results.groupby(["patient_id", "code"], observed=True).size()
    assert per_analyte.max() > 1, "several results per analyte per patient"


def test_long_to_as_of_wide_reproduces_the_wide_table(referrals: SimulatedCohort) -> None:
    as_of = as_of_wide(referrals.results, referrals.index)
    wide = referrals.wide
    for code in SIMULATED:
        np.testing.assert_array_equal(as_of[code], wide[code], f"{code} as reported")
    np.testing.assert_array_equal(
        as_of["haemoglobin_unit"].astype(object).fillna("-"),
        wide["haemoglobin_unit"].astype(object).fillna("-"),
        "Hb unit as reported",
    )
    ours, theirs = canonical(as_of), canonical(wide)
    for code in SIMULATED:
        np.testing.assert_array_equal(ours[code], theirs[code], f"{code} canonical")


def test_a_later_result_never_changes_the_as_of_table(referrals: SimulatedCohort) -> None:
    results, index = referrals.results, referrals.index
    before = as_of_wide(results, index)
    stamp = results.merge(index[["patient_id", "index_date"]], on="patient_id")
    on_the_day = stamp.assign(sample_time=stamp["index_date"], value=stamp["value"] * 2)
    later = stamp.assign(sample_time=stamp["index_date"] + pd.Timedelta(days=3), value=-1.0)
    columns = list(results.columns)
    extended = pd.concat([results, on_the_day[columns], later[columns]], ignore_index=True)
    pd.testing.assert_frame_equal(as_of_wide(extended, index), before)


# --- myeloma ------------------------------------------------------------------------------------


def test_myeloma_incidence_within_tolerance(myeloma: SimulatedCohort) -> None:
    s = myeloma.summary
    p, n = 0.0006, s["population"]
    assert n == N_POPULATION
    assert abs(s["expected_cases"] - p * n) < 1e-3, "mean true risk is root-found to 60/100k"
    assert abs(s["population_cases"] - p * n) < 4 * np.sqrt(n * p * (1 - p)), "incidence"


def test_myeloma_sample_is_matched(myeloma: SimulatedCohort) -> None:
    wide = myeloma.wide
    cases = wide[wide["cancer"] == 1]
    controls = wide[wide["cancer"] == 0]
    assert len(controls) == 4 * len(cases), "4 controls per case"
    assert wide["age"].min() >= 40, "adults aged 40+"
    sets = wide.groupby("matched_set")
    assert (sets.size() == 5).all() and (sets["cancer"].sum() == 1).all(), "1 case + 4 controls"
    case_of = cases.set_index("referral_id")
    matched = case_of.loc[controls["matched_set"]]
    assert (controls["sex"].to_numpy() == matched["sex"].to_numpy()).all(), "matched on sex"
    same_band = controls["age"].to_numpy() // 5 == matched["age"].to_numpy() // 5
    assert same_band.all(), "matched on 5-year age band"
    assert wide["patient_id"].is_unique, "sampled without replacement"
    np.testing.assert_allclose(wide["sampling_fraction"], 0.2)
    prevalence = myeloma.summary["population_prevalence"]
    np.testing.assert_allclose(wide["population_prevalence"], prevalence)
    assert controls["true_risk"].mean() < 0.005, "true risk stays at population scale"


def test_myeloma_manifest_records_the_prior_shift(tmp_path: Path) -> None:
    manifest = run_simulation(cohort="myeloma", n=50_000, seed=2, out=tmp_path)
    counts = manifest["counts"]
    fraction, prevalence = counts["sampling_fraction"], counts["population_prevalence"]
    assert fraction == pytest.approx(counts["sample_cases"] / counts["sample"])
    assert prevalence == pytest.approx(counts["population_cases"] / counts["population"])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert counts["logit_shift"] == pytest.approx(logit(prevalence) - logit(fraction))
    assert (tmp_path / "myeloma_wide.parquet").exists() and (tmp_path / "manifest.json").exists()


def test_myeloma_effect_directions_and_tests(myeloma: SimulatedCohort) -> None:
    wide = myeloma.wide
    v = canonical(wide)
    cases, controls = wide["cancer"] == 1, wide["cancer"] == 0
    for code in ("calcium_adjusted", "globulin", "total_protein", "mcv", "creatinine"):
        assert v.loc[cases, code].mean() > v.loc[controls, code].mean(), f"{code} higher"
    assert v.loc[cases, "haemoglobin"].mean() < v.loc[controls, "haemoglobin"].mean()
    assert (wide.loc[cases, "sex"] == "male").mean() > 0.5, "male excess"
    spec = load_spec("myeloma")
    wanted = [*spec.features.analytes, "rbc", "haematocrit", "mch", "mchc", "rdw", "esr",
              "plasma_viscosity", "total_protein", "globulin"]  # fmt: skip
    missing = [c for c in wanted if c not in wide.columns]
    assert not missing, f"myeloma cohort lacks {missing}"
    assert wide["haemoglobin"].notna().all(), "everyone has an FBC"


# --- myeloma: the population table and its strata -----------------------------------------------

SAMPLE_ONLY = ("matched_set", "sampling_fraction", "population_prevalence")


@pytest.fixture(scope="module")
def myeloma_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("myeloma")
    return out, run_simulation(cohort="myeloma", n=N_FILES, seed=SEED, out=out)


def test_strata_csv_recounts_the_population_table(
    myeloma_files: tuple[Path, dict[str, Any]],
) -> None:
    out, manifest = myeloma_files
    strata = pd.read_csv(out / "myeloma_strata.csv")
    population = pd.read_parquet(out / "myeloma_population.parquet")
    assert list(strata.columns) == ["age_from", "sex", "population", "cases"], "the user format"
    assert all(strata[c].dtype == np.int64 for c in ("age_from", "population", "cases"))
    assert len(population) == N_FILES, "one row per person"
    np.testing.assert_array_equal(population["age_from"], population["age"] // 5 * 5)
    recount = (
        population.assign(sex=population["sex"].astype(str))
        .groupby(["sex", "age_from"])["cancer"]
        .agg(population="size", cases="sum")
        .reset_index()[["age_from", "sex", "population", "cases"]]
    )
    pd.testing.assert_frame_equal(strata, recount, check_dtype=False, obj="strata vs recount")
    for sex, rows in strata.groupby("sex"):
        assert (np.diff(rows["age_from"]) == 5).all(), f"{sex}: contiguous 5-year bands"
    assert (strata["population"] > 0).all(), "no empty band at this size"
    counts = manifest["counts"]
    assert counts["strata"] == strata.to_dict(orient="records"), "the manifest lists the strata"
    non_cases = strata["population"].sum() - strata["cases"].sum()
    assert counts["control_sampling_fraction"] == pytest.approx(
        counts["sample_controls"] / non_cases
    )


def test_manifest_digests_the_population_files(
    myeloma_files: tuple[Path, dict[str, Any]],
) -> None:
    out, manifest = myeloma_files
    names = {"wide", "results", "index", "population"}
    assert set(manifest["files"]) == {
        *(f"myeloma_{name}.parquet" for name in names),
        "myeloma_strata.csv",
    }
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_sample_rows_are_the_population_rows(
    myeloma_files: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = myeloma_files
    population = pd.read_parquet(out / "myeloma_population.parquet")
    wide = pd.read_parquet(out / "myeloma_wide.parquet")
    assert set(population.columns) == ({*wide.columns} - set(SAMPLE_ONLY)) | {"age_from"}
    mine = population.set_index("referral_id").loc[wide["referral_id"]].reset_index()
    shared = [c for c in wide.columns if c not in SAMPLE_ONLY]
    # Values, sample dates, artefact flags, ids and dtypes: the sample is the population's rows.
    pd.testing.assert_frame_equal(wide[shared], mine[shared], obj="sample vs population")
    cases = population.loc[population["cancer"] == 1, "referral_id"]
    assert set(cases) <= set(wide["referral_id"]), "every case of the population is sampled"


def test_controls_per_stratum_are_the_sampling_fraction(myeloma: SimulatedCohort) -> None:
    assert myeloma.strata is not None and myeloma.population is not None
    strata = myeloma.strata.set_index(["sex", "age_from"])
    wide = myeloma.wide.assign(
        sex=myeloma.wide["sex"].astype(str), age_from=lambda f: f["age"] // 5 * 5
    )
    sampled = wide.groupby(["sex", "age_from"])["cancer"].agg(cases="sum", rows="size")
    sampled = sampled.reindex(strata.index, fill_value=0)
    controls = sampled["rows"] - sampled["cases"]
    non_cases = strata["population"] - strata["cases"]
    np.testing.assert_array_equal(sampled["cases"], strata["cases"], "every case sampled")
    # r_s = controls / the population's non-cases: 4 per case where there are enough non-cases.
    np.testing.assert_allclose(
        controls / non_cases, np.minimum(4 * strata["cases"], non_cases) / non_cases
    )
    overall = controls.sum() / non_cases.sum()
    assert myeloma.summary["control_sampling_fraction"] == pytest.approx(overall)
    assert len(myeloma.summary["strata"]) == len(strata)


def test_population_true_risk_sums_to_its_cases(myeloma: SimulatedCohort) -> None:
    assert myeloma.population is not None
    risk, cancer = myeloma.population["true_risk"], myeloma.population["cancer"]
    sd = np.sqrt((risk * (1 - risk)).sum())
    assert abs(cancer.sum() - risk.sum()) < 4 * sd, "true_risk is calibrated on the population"
    assert myeloma.population["true_risk"].dtype == np.float64


def test_population_files_are_deterministic(
    myeloma_files: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, first = myeloma_files
    again = run_simulation(cohort="myeloma", n=N_FILES, seed=SEED, out=tmp_path / "a")
    other = run_simulation(cohort="myeloma", n=N_FILES, seed=SEED + 1, out=tmp_path / "b")
    assert again == first, "same seed: same manifest, digests of the population files included"
    for name in ("myeloma_population.parquet", "myeloma_strata.csv"):
        assert other["files"][name] != first["files"][name], f"{name}: another seed differs"


def test_myeloma_artefact_switches_off_alone(myeloma: SimulatedCohort) -> None:
    params = MyelomaParams(n=N_POPULATION, artefacts=Artefacts(haemolysis=False))
    partial = simulate_myeloma(params, np.random.default_rng(SEED))
    assert partial.population is not None and myeloma.population is not None
    full, off = myeloma.population, partial.population
    assert not off["artefact_haemolysed"].any(), "haemolysis switched off"
    pd.testing.assert_frame_equal(
        off.drop(columns=["potassium", "artefact_haemolysed"]),
        full.drop(columns=["potassium", "artefact_haemolysed"]),
        obj="everything but haemolysis unchanged",
    )
    untouched = ~full["artefact_haemolysed"]
    np.testing.assert_array_equal(off.loc[untouched, "potassium"], full.loc[untouched, "potassium"])
    pd.testing.assert_frame_equal(
        partial.wide.drop(columns=["potassium", "artefact_haemolysed"]),
        myeloma.wide.drop(columns=["potassium", "artefact_haemolysed"]),
        obj="the same sample",
    )


# --- slow: the downstream learnability promise ------------------------------------------------


@pytest.mark.slow
def test_training_pipeline_reaches_the_oracle_on_a_temporal_split(tmp_path: Path) -> None:
    """Issue 4's acceptance at PinPoint scale, through the real pipeline: `any_cancer` trained
    2011-15, calibrated on 2016 and evaluated on 2017-19 gets within 0.01 AUC of the oracle, a
    calibration slope in [0.9, 1.1], |O/E - 1| <= 0.05, and at least the spline baseline's AUC."""
    from training.fit.train import TrainOptions, train_model

    run_simulation(cohort="referrals", n=370_000, seed=SEED, out=tmp_path)
    result = train_model(load_spec("any_cancer"), TrainOptions(tmp_path, n_boot=50))
    ev, oracle = result.evaluation, result.evaluation["oracle"]
    assert oracle["auc_gap"] < 0.01, (
        f"model {oracle['model_auc']:.4f} vs {oracle['oracle_auc']:.4f}"
    )
    assert 0.9 <= ev["calibration"]["slope"] <= 1.1, f"slope {ev['calibration']['slope']:.3f}"
    oe = ev["calibration"]["observed_expected"]
    assert abs(oe - 1) <= 0.05, f"O/E {oe:.3f}"
    baseline = result.baseline_evaluation["auc"]["estimate"]
    assert ev["auc"]["estimate"] >= baseline, (
        f"LightGBM {ev['auc']['estimate']:.4f} < {baseline:.4f}"
    )
