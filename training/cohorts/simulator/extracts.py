"""What a lab extract holds: the index draw, older and post-index draws, lab artefacts, and the
wide and long tables written to disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.analytes import CATALOGUE
from models.features import (
    adjusted_calcium,
)
from training.cohorts.simulator.bloods import (
    draw_bloods,
    draw_testing,
    mask_untested,
    round_as_reported,
)
from training.cohorts.simulator.conditions import chronic_only, with_conditions
from training.cohorts.simulator.people import categorical_from_codes
from training.cohorts.simulator.world import (
    ALBUMIN_ASSAY_CHANGE,
    ALBUMIN_ASSAY_LAB,
    ALBUMIN_ASSAY_SHIFT_G_PER_L,
    ALT_ASSAY_CHANGE,
    ALT_ASSAY_FACTOR,
    ALT_ASSAY_LAB,
    ARTEFACT_FLAGS,
    EGFR_LOINC,
    GDL_LAB,
    GDL_YEARS,
    HAEMOLYSIS_POTASSIUM_FLOOR,
    HAEMOLYSIS_RATE,
    HISTORY_LATENT_CORRELATION,
    LABS,
    LATENT,
    LOCAL_CODE_LAB,
    OLDER_DRAWS_DAYS,
    POST_DRAWS_DAYS,
    SIMULATED,
    WRONG_UNIT_RATE,
    Artefacts,
    BoolArray,
    DateArray,
    Draws,
    FloatArray,
    IntArray,
    MyelomaParams,
    ReferralParams,
    TestingProfile,
)

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
    severity: Mapping[str, FloatArray],
    params: ReferralParams | MyelomaParams,
    profile: TestingProfile,
    rng: np.random.Generator,
) -> Draws:
    """Older draws ((window, OLDER_DRAWS_DAYS] days before) and post-index draws ([0,
    POST_DRAWS_DAYS] days after), with latent states correlated to the index sample's (`latent`
    before its conditions' shifts), the patient's chronic conditions (not an acute infection)
    and fresh noise: a model must only ever see the index sample."""
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
    conditions = chronic_only(severity, owner)
    z = with_conditions(z, conditions)
    bloods = draw_bloods(who, z, rng, conditions, duffy_effect=params.artefacts.duffy_null)
    values = mask_untested(bloods, draw_testing(who, z, rng, profile, conditions))
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
    relabelled = round_as_reported(
        "calcium_adjusted", adjusted_calcium(values["calcium"], reported_albumin)
    )
    values["calcium_adjusted"] = np.where(assay, relabelled, values["calcium_adjusted"])

    alt_change = np.datetime64(ALT_ASSAY_CHANGE, "ns")
    alt = values["alt"]
    alt_assay = (
        switches.alt_assay
        & ~np.isnan(alt)
        & (lab == ALT_ASSAY_LAB)
        & (draws.sample_time >= alt_change)
    )
    values["alt"] = np.where(alt_assay, round_as_reported("alt", alt * ALT_ASSAY_FACTOR), alt)

    potassium = values["potassium"]
    haemolysed = switches.haemolysis & ~np.isnan(potassium) & (u[:, 1] < HAEMOLYSIS_RATE)
    raised = np.clip(potassium + 1.2 + 1.8 * u[:, 2], HAEMOLYSIS_POTASSIUM_FLOOR, 9.5)
    values["potassium"] = np.where(haemolysed, round_as_reported("potassium", raised), potassium)

    flags = {
        "artefact_hb_gdl": gdl,
        "artefact_wrong_unit": wrong,
        "artefact_albumin_assay": assay,
        "artefact_haemolysed": haemolysed,
        "artefact_alt_assay": alt_assay,
    }
    reported = Draws(draws.patient_id, draws.lab, draws.sample_time, values, gdl)
    return reported, flags


def take_draws(
    draws: Draws, flags: Mapping[str, BoolArray], rows: IntArray
) -> tuple[Draws, dict[str, BoolArray]]:
    """The given rows of draws already made (with their artefacts and flags): a case-control
    sample takes its people's index draws from the population's, so both tables agree."""
    values = {code: x[rows] for code, x in draws.values.items()}
    taken = Draws(draws.patient_id[rows], draws.lab[rows], draws.sample_time[rows], values,
                  draws.hb_gdl[rows])  # fmt: skip
    return taken, {name: flag[rows] for name, flag in flags.items()}


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
        pd.Series(categorical_from_codes(unit, ["g/L", "g/dL"]), index=analytes.index),
    )
    return pd.concat([wide, analytes], axis=1)


def population_wide(
    events: pd.DataFrame, draws: Draws, flags: Mapping[str, BoolArray], age_from: IntArray
) -> pd.DataFrame:
    """Every person of a case-control cohort's population in the sample's wide layout, with the
    matching stratum's first year of age (`age_from`) after sex, so a model can be replayed over
    the population and checked against `true_risk`. The sample-only columns (matched_set,
    sampling_fraction, population_prevalence) are absent."""
    wide = assemble_wide(events, draws, flags)
    wide.insert(list(wide.columns).index("sex") + 1, "age_from", age_from)
    return wide


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
            "code": categorical_from_codes(code_table[lab[source], column], codes),
            "value": matrix[source, column],
            "unit": categorical_from_codes(unit_index, units),
            "lab": categorical_from_codes(lab[source], list(LABS)),
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
