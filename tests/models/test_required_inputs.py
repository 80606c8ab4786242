"""Inputs the model never saw missing are required (issue 16, part 3).

Pre-train tier: the exact derivations against hand-computed numbers (CKD-EPI 2021 worked
examples, haematocrit from Hb and MCHC). Post-train tier: a LightGBM `lower_gi` model trained on a
small simulated cohort, whose haematocrit was never missing in training, refuses a record without
it (`missing_required_analyte`) unless it can be derived (`analyte_derived`), says so in
`describe()`, never explains a required input by its absence, agrees with the frame scorer, and
an old predictor folder (saved before the missing rates were recorded) still loads, with every
input optional and a log line that says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.analytes import CATALOGUE
from models.derive import ckd_epi_2021, derive_column, derive_record
from models.predictor import META_FILE, Score, TriagePredictor
from models.required import RequiredInputs
from models.scoring import WARNING_CODES, score_frame
from models.spec import SpecError, load_spec, parse_spec
from training.cohorts.simulator import run_simulation
from training.fit.train import TrainOptions, TrainResult, train_model

N_REFERRALS = 15_000  # ~3,000 lower-GI referrals with ~100 cancers among them
SEED = 3
FBC_RED_CELLS = ("haematocrit", "rbc", "mchc")

# The README's example patient (lower_gi, `var/examples/score.json`): no full blood count beyond
# Hb, MCV, MCH, platelets, WBC, neutrophils and lymphocytes.
README_PATIENT: dict[str, Any] = {
    "age": 71,
    "sex": "male",
    "analytes": {
        "haemoglobin": {"value": 10.9, "unit": "g/dL"},
        "mcv": {"value": 76, "unit": "fL"},
        "mch": {"value": 24.8, "unit": "pg"},
        "platelets": {"value": 455, "unit": "10*9/L"},
        "wbc": {"value": 7.1, "unit": "10*9/L"},
        "neutrophils": {"value": 4.6, "unit": "10*9/L"},
        "lymphocytes": {"value": 1.7, "unit": "10*9/L"},
        "sodium": {"value": 139, "unit": "mmol/L"},
        "potassium": {"value": 4.4, "unit": "mmol/L"},
        "urea": {"value": 5.9, "unit": "mmol/L"},
        "creatinine": {"value": 88, "unit": "umol/L"},
        "albumin": {"value": 36, "unit": "g/L"},
        "alp": {"value": 96, "unit": "U/L"},
        "crp": {"value": 14, "unit": "mg/L"},
    },
}


# --- derivations, by hand ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("creatinine_mg_dl", "age", "male", "expected"),
    [
        # Female, 50 y, Scr 1.0 mg/dL: Scr/k = 1/0.7 = 1.4286 > 1, so 142 x 1.4286^-1.2 (0.65183)
        # = 92.56; x 0.9938^50 (0.73277) = 67.82; x 1.012 = 68.63 (NKF calculator: 69).
        (1.0, 50.0, False, 68.63),
        # Male, 60 y, Scr 1.0 mg/dL: 1/0.9 = 1.1111 > 1: 142 x 0.88124 = 125.14; x 0.9938^60
        # (0.68856) = 86.16.
        (1.0, 60.0, True, 86.16),
        # Female, 40 y, Scr 0.6 mg/dL: 0.6/0.7 = 0.8571 < 1: 142 x 0.8571^-0.241 (1.03785) =
        # 147.37; x 0.9938^40 (0.77976) = 114.92; x 1.012 = 116.30.
        (0.6, 40.0, False, 116.30),
        # Male, 80 y, Scr 2.0 mg/dL: 2/0.9 = 2.2222: 142 x 2.2222^-1.2 (0.38357) = 54.47;
        # x 0.9938^80 (0.60804) = 33.12.
        (2.0, 80.0, True, 33.12),
    ],
)
def test_ckd_epi_2021_matches_worked_examples_by_hand(
    creatinine_mg_dl: float, age: float, male: bool, expected: float
) -> None:
    creatinine_umol_l = creatinine_mg_dl * 88.4
    egfr = ckd_epi_2021(np.array([creatinine_umol_l]), np.array([age]), np.array([male]))
    assert egfr[0] == pytest.approx(expected, abs=0.01), "CKD-EPI 2021 (no race term), by hand"


def test_the_simulator_reports_egfr_with_the_scorers_equation() -> None:
    from training.cohorts.simulator import bloods

    assert bloods.ckd_epi_2021 is ckd_epi_2021, "one implementation of CKD-EPI 2021"


def test_egfr_is_derived_from_creatinine_age_and_sex_as_a_lab_reports_it() -> None:
    derived = derive_record("egfr", {"creatinine": 88.4}, 60.0, "male", CATALOGUE)
    assert derived is not None and derived.value == 86.0, "86.16 reported as a whole number"
    assert derive_record("egfr", {"creatinine": 88.4}, None, "male", CATALOGUE) is None, (
        "no eGFR without age"
    )
    assert derive_record("egfr", {"creatinine": 88.4}, 60.0, None, CATALOGUE) is None


def test_haematocrit_and_mchc_are_derived_exactly_in_canonical_units() -> None:
    # Hb 131 g/L / MCHC 330 g/L = 0.39697 L/L, reported to 3 decimals: 0.397.
    hct = derive_record("haematocrit", {"haemoglobin": 131.0, "mchc": 330.0}, 60, "male", CATALOGUE)
    assert (
        hct is not None
        and hct.value == 0.397
        and hct.derivation.inputs
        == (
            "haemoglobin",
            "mchc",
        )
    )
    # Without MCHC: RBC 4.40 x 10^12/L x MCV 90 fL / 1000 = 0.396 L/L.
    by_rbc = derive_record("haematocrit", {"rbc": 4.40, "mcv": 90.0}, 60, "male", CATALOGUE)
    assert by_rbc is not None and by_rbc.value == 0.396
    # Nor RBC: Hb 109 g/L x MCV 76 fL / MCH 24.8 pg / 1000 = 8284 / 24800 = 0.33403 -> 0.334.
    by_indices = derive_record(
        "haematocrit", {"haemoglobin": 109.0, "mcv": 76.0, "mch": 24.8}, 60, "male", CATALOGUE
    )
    assert by_indices is not None and by_indices.value == 0.334
    # MCH 24.8 pg / MCV 76 fL x 1000 = 326.3 g/L, reported as 326.
    mchc = derive_record("mchc", {"mch": 24.8, "mcv": 76.0}, 60, "male", CATALOGUE)
    assert mchc is not None and mchc.value == 326.0
    # Hb 131 / Hct 0.397 = 329.97 g/L -> 330.
    back = derive_record(
        "mchc", {"haemoglobin": 131.0, "haematocrit": 0.397}, 60, "male", CATALOGUE
    )
    assert back is not None and back.value == 330.0
    assert derive_record("rdw", {"haemoglobin": 131.0}, 60, "male", CATALOGUE) is None, (
        "nothing approximate: RDW has no derivation"
    )


def test_a_derived_value_beyond_the_hard_limits_is_not_used() -> None:
    # Hb 240 / MCHC 300 = 0.80 L/L, above haematocrit's hard limit 0.75.
    values = {"haemoglobin": 240.0, "mchc": 300.0}
    assert derive_record("haematocrit", values, 60, "male", CATALOGUE) is None


def test_the_frame_derivation_is_the_record_derivation() -> None:
    frame = pd.DataFrame(
        {
            "haemoglobin": [131.0, 131.0, np.nan, 120.0, 240.0],
            "mchc": [330.0, np.nan, np.nan, 320.0, 300.0],
            "rbc": [4.0, 4.40, 4.40, np.nan, np.nan],
            "mcv": [95.0, 90.0, 90.0, np.nan, np.nan],
            "haematocrit": [np.nan, np.nan, np.nan, 0.41, np.nan],
            "age": [60.0] * 5,
            "sex": ["male"] * 5,
        }
    )
    filled, which = derive_column("haematocrit", frame, CATALOGUE)
    assert filled.tolist()[:4] == [0.397, 0.396, 0.396, 0.41], "Hb/MCHC first, then RBC x MCV"
    assert np.isnan(filled[4]), "beyond the hard limits: not derived"
    assert which.tolist() == [0, 1, 1, -1, -1], "a measured value is kept, never replaced"
    for i in range(5):
        row = frame.iloc[i]
        values = {
            c: float(row[c]) for c in ("haemoglobin", "mchc", "rbc", "mcv") if row[c] == row[c]
        }
        one = derive_record("haematocrit", values, 60.0, "male", CATALOGUE)
        if which[i] >= 0:
            assert one is not None and one.value == filled[i], f"row {i}: same value"


def test_spec_fields_have_documented_defaults_and_bounds() -> None:
    spec = load_spec("lower_gi")
    assert spec.features.required_below_missing == 0.01
    assert spec.features.lookback_days == 90, "replay's default as-of window"
    data = spec.model_dump(mode="json")
    for field, bad in (("required_below_missing", 1.5), ("lookback_days", 0)):
        broken = json.loads(json.dumps(data))
        broken["features"][field] = bad
        with pytest.raises(SpecError, match=f"features.{field}"):
            parse_spec(broken)


# --- a model trained on a small simulated cohort ------------------------------------------------


@dataclass
class Trained:
    result: TrainResult
    predictor: TriagePredictor
    training_rows: pd.DataFrame  # the rows the model was fitted on (train + early stopping)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("required-inputs")
    run_simulation(cohort="referrals", n=N_REFERRALS, seed=SEED, out=root / "cohort")
    data = load_spec("lower_gi").model_dump(mode="json")
    data["model"] = {"family": "lightgbm"}  # a tree model: absences it never saw go anywhere
    data["split"]["min_events"] = data["triage"]["min_events"] = 5
    spec = parse_spec(data, "lower_gi.yaml (small test cohort, LightGBM)")
    result = train_model(spec, TrainOptions(root / "cohort", n_boot=20))
    rows = pd.concat([result.periods["train"], result.periods["stop"]], ignore_index=True)
    return Trained(result, result.predictor, rows)


def _record(row: pd.Series, analytes: tuple[str, ...], drop: tuple[str, ...] = ()) -> dict:
    values = {
        c: {"value": float(row[c])} for c in analytes if c not in drop and pd.notna(row.get(c))
    }
    return {"age": float(row["age"]), "sex": row["sex"], "analytes": values}


def _complete_rows(trained: Trained, n: int) -> pd.DataFrame:
    rows = trained.result.periods["evaluate"]
    analytes = list(trained.predictor.spec.features.analytes)
    required = list(trained.predictor.required_inputs)
    complete = rows[rows[required].notna().all(axis=1)]
    return complete.head(n).reset_index(drop=True)[[*analytes, "age", "sex", "pathway"]]


def _codes(score: Score, code: str) -> list[str]:
    return [i.field for i in score.issues if i.code == code]


def test_training_missing_rates_are_recorded_and_decide_what_is_required(trained: Trained) -> None:
    predictor = trained.predictor
    rates = predictor.training_missing
    assert rates is not None, "the trained predictor knows its inputs' training missing rates"
    for code in predictor.spec.features.analytes:
        by_hand = float(trained.training_rows[code].isna().mean())
        assert rates[code] == pytest.approx(by_hand, abs=1e-12), f"{code}: share of training rows"
    assert rates["haematocrit"] == 0.0, "the simulator reports haematocrit with every FBC"
    assert "haematocrit" in predictor.required_inputs and "mchc" in predictor.required_inputs
    expected = tuple(
        c
        for c in predictor.spec.features.analytes
        if rates[c] < 0.01 and c not in predictor.eligibility_inputs
    )
    assert predictor.required_inputs == expected, "missing in < 1% of training rows: required"
    assert "crp" not in predictor.required_inputs and rates["crp"] >= 0.01, (
        "CRP is often not measured: optional"
    )


def test_describe_marks_required_inputs_truthfully(trained: Trained) -> None:
    described = trained.predictor.describe()
    inputs = {i["code"]: i for i in described["inputs"]}
    hct = inputs["haematocrit"]
    assert hct["required"] is True and hct["required_by"] == "training"
    assert hct["training_missing_rate"] == 0.0
    assert hct["derivable_from"] == ["haemoglobin", "mchc"]
    assert [d["from"] for d in hct["derivations"]] == [
        ["haemoglobin", "mchc"],
        ["rbc", "mcv"],
        ["haemoglobin", "mcv", "mch"],
    ]
    assert inputs["haemoglobin"]["required"] is True, "the FBC panel's core is required too"
    assert inputs["haemoglobin"]["required_by"] == "eligibility"
    assert inputs["crp"]["required"] is False and inputs["crp"]["derivable_from"] is None
    assert inputs["rdw"]["derivable_from"] is None or not inputs["rdw"]["required"]
    if inputs["egfr"]["required"]:
        assert inputs["egfr"]["derivable_from"] == ["creatinine", "age", "sex"]
    assert described["required_inputs"] == [c for c, i in inputs.items() if i["required"]]
    assert "haematocrit" in described["panels"]["fbc"]["required"]
    assert "crp" in described["panels"]["inflammatory"]["optional"]
    assert described["panels"]["fbc"]["required_panel"] is True
    assert described["lookback_days"] == 90 and described["required_below_missing"] == 0.01
    assert described["training_missing_known"] is True


def test_a_record_without_haematocrit_or_its_inputs_is_refused(trained: Trained) -> None:
    predictor = trained.predictor
    row = _complete_rows(trained, 1).iloc[0]
    analytes = predictor.spec.features.analytes
    record = _record(row, analytes, drop=("haematocrit", "mchc", "rbc", "mcv", "mch"))
    score = predictor.score(record, pathway="lower_gi")
    assert not score.eligible and score.probability is None, "refused, not scored on air"
    refused = _codes(score, "missing_required_analyte")
    assert "haematocrit" in refused and "mchc" in refused, score.issues
    message = next(i.message for i in score.issues if i.field == "haematocrit")
    assert "Haematocrit is required" in message and ">= 99%" in message, message
    assert "training patients" in message and "Haemoglobin and Mean cell haemoglobin" in message


def test_a_record_with_hb_and_mchc_is_scored_on_the_derived_haematocrit(trained: Trained) -> None:
    predictor = trained.predictor
    row = _complete_rows(trained, 1).iloc[0]
    analytes = predictor.spec.features.analytes
    score = predictor.score(_record(row, analytes, drop=("haematocrit",)), pathway="lower_gi")
    assert score.eligible, score.issues
    hct = round(float(row["haemoglobin"]) / float(row["mchc"]), 3)
    assert score.values["haematocrit"] == hct, "Hb (g/L) / MCHC (g/L) = Hct (L/L), 3 decimals"
    warning = next(i for i in score.issues if i.code == "analyte_derived")
    assert warning.severity == "warning" and warning.field == "haematocrit"
    assert "derived from Haemoglobin and Mean cell haemoglobin concentration" in warning.message
    assert "haematocrit" not in " ".join(_codes(score, "analyte_missing")), "not missing"
    given = _record(row, analytes)
    given["analytes"]["haematocrit"] = {"value": hct}
    same = predictor.score(given, pathway="lower_gi")
    assert same.probability == score.probability, "the model uses the derived value"
    assert same.contributions == score.contributions, "and explains it as if it had been given"
    for driver in score.drivers:
        if driver.feature == "haematocrit":
            assert driver.value == hct and "(derived: " in driver.text, driver.text


def test_the_frame_scorer_refuses_and_derives_as_the_record_path(trained: Trained) -> None:
    predictor = trained.predictor
    rows = _complete_rows(trained, 6)
    rows.loc[0:1, "haematocrit"] = np.nan  # derivable from Hb and MCHC
    rows.loc[2:3, ["haematocrit", "mchc", "rbc", "mcv", "mch"]] = np.nan  # not derivable
    frame = score_frame(predictor, rows, explain=True)
    analytes = predictor.spec.features.analytes
    derived_code = WARNING_CODES.index("analyte_derived")
    for i in range(len(rows)):
        record = _record(rows.iloc[i], analytes)
        one = predictor.score(record, pathway=rows.iloc[i]["pathway"])
        assert bool(frame.eligible[i]) == one.eligible, f"row {i}: same decision"
        reasons = sorted(frame.reason_labels[frame.reason_rows == i])
        expected = sorted(f"{x.code}:{x.field}" for x in one.issues if x.severity == "error")
        assert reasons == expected, f"row {i}: the same coded reasons"
        warned = frame.warning_codes[frame.warning_rows == i]
        assert (derived_code in warned) == bool(_codes(one, "analyte_derived")), f"row {i}"
        if one.eligible:
            assert frame.probability[i] == one.probability, f"row {i}: exactly the same score"
    assert frame.eligible.tolist() == [True, True, False, False, True, True]
    assert frame.values["haematocrit"][0] == round(rows["haemoglobin"][0] / rows["mchc"][0], 3)


def test_the_readme_patient_without_a_full_blood_count_is_refused(trained: Trained) -> None:
    predictor = trained.predictor
    score = predictor.score(README_PATIENT, pathway="lower_gi")
    assert not score.eligible, "scoring lower_gi without a full blood count is refused"
    refused = set(_codes(score, "missing_required_analyte"))
    underivable = {"rdw", "mpv", "monocytes", "eosinophils", "basophils"}
    required = set(predictor.required_inputs)
    assert refused == (underivable | {"rbc"}) & required and refused, (
        f"refused for exactly the required inputs that cannot be derived: {refused}"
    )
    derived = set(_codes(score, "analyte_derived"))
    assert {"haematocrit", "mchc"} & required <= derived, "MCHC = MCH/MCV, Hct = Hb x MCV/MCH"
    hct = next(
        i.message for i in score.issues if i.code == "analyte_derived" and i.field == "haematocrit"
    )
    assert "0.334 L/L was derived" in hct, "109 g/L x 76 fL / 24.8 pg / 1000 = 0.33403"
    if "egfr" in required:
        assert "egfr" in derived, "eGFR from creatinine 88, age 71, male"


def test_a_required_input_is_never_explained_by_its_absence(trained: Trained) -> None:
    predictor = trained.predictor
    rows = _complete_rows(trained, 10)
    analytes = predictor.spec.features.analytes
    names = {predictor.catalogue[c].name for c in predictor.required_inputs}
    scored = 0
    for _, row in rows.iterrows():
        for code in predictor.required_inputs:
            score = predictor.score(_record(row, analytes, drop=(code,)), pathway="lower_gi")
            for driver in score.drivers:
                absent = "not measured" in driver.text
                assert not (absent and driver.feature in predictor.required_inputs), driver.text
                assert not any(driver.text.startswith(f"{n} not measured") for n in names)
            scored += score.eligible
    assert scored > 0, "some records were scored with a derived input"


def test_an_old_predictor_folder_loads_with_every_input_optional(
    trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = trained.predictor.save(tmp_path / "old")
    meta = json.loads((folder / META_FILE).read_text())
    assert "training" in meta["reference"], "saved with the training missing rates"
    del meta["reference"]["training"]
    (folder / META_FILE).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="models.predictor"):
        old = TriagePredictor.load(folder)
    assert "every input is treated as optional" in caplog.text, caplog.text
    assert old.required_inputs == () and old.training_missing is None
    described = old.describe()
    assert described["training_missing_known"] is False
    hct = next(i for i in described["inputs"] if i["code"] == "haematocrit")
    assert hct["required"] is False and hct["training_missing_rate"] is None
    row = _complete_rows(trained, 1).iloc[0]
    record = _record(row, old.spec.features.analytes, drop=("haematocrit",))
    assert old.score(record, pathway="lower_gi").eligible, "today's behaviour for old folders"
    fresh = TriagePredictor.load(trained.predictor.save(tmp_path / "new"))
    assert fresh.required_inputs == trained.predictor.required_inputs, "round trip"


def test_required_inputs_follow_the_spec_threshold() -> None:
    spec = load_spec("lower_gi")
    rates = {c: 0.0 for c in spec.features.analytes} | {"crp": 0.5, "rdw": 0.009}
    required = RequiredInputs.of(spec, rates)
    assert "rdw" in required.codes and "crp" not in required.codes, "0.9% < 1%; 50% is not"
    assert "haemoglobin" not in required.codes, "the FBC panel's core is the validation's"
    data = spec.model_dump(mode="json")
    data["features"]["required_below_missing"] = 0.0
    assert RequiredInputs.of(parse_spec(data), rates).codes == (), "0: none required"
