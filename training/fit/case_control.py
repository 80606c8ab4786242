"""Case-control samples back on the population's scale: per-stratum sampling offsets.

A Leeds-style sample keeps every case and draws controls within matching strata (age band x sex).
Matching removes the strata's effect from the sample, so one global prevalence shift leaves the
risk flat across ages. For stratum s, let r_s be the share of the population's non-cases in s that
were sampled as controls; with every case sampled, the sample's odds are the population's divided
by r_s, so

    logit p_population = logit p_sample + log r_s.

r_s comes from the controls in the cohort (every row read, before eligibility: exclusions are taken
to be unrelated to case status within a stratum) and the population's counts per stratum, a small
CSV named by the spec (`calibration.case_control.population_counts`, a relative path read from the
cohort's folder) with columns `age_from` (first year of the band, a multiple of `age_band_years`),
`sex` (female/male; when matched on sex), `population` and `cases`. The simulator writes one for
its myeloma cohort (`myeloma_strata.csv`).

Calibration (`population_platt`) is fitted where the probabilities are used: on the population
scale, logit p = a + b * margin + log r_s, by logistic regression with each control weighted 1/r_s
(a pseudo-likelihood for the population). Platt scaling on the sample, then shifted, is exact only
when the sample-scale model is calibrated at every margin; a model shrunk by its regularisation
is not, and the odds scale the shift acts on magnifies that (measured on the simulated myeloma
population: O/E 1.07-1.09 by sex, 1.32 at ages 40-49, against 1.00-1.02 and 1.26 weighted).

A stratum the cohort has rows in but the CSV lacks is an error. A band inside the counted range
where no control was sampled (no case there to match) takes the offset of the nearest band of the
same sex that has controls, and the model card says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from models.calibration import Stratum, StratumOffsets
from models.spec import SEXES, ModelSpec
from models.spec_policy import CaseControl
from training.cohorts.reader import CohortError


def feature_strata(x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The age and sex (coded 0/1) inputs of a frame of model inputs, NaN where the model has
    none: what a row's stratum offset is looked up from (`LogitCalibration.row_shift`)."""
    nan = np.full(len(x), np.nan)
    age = x["age"].to_numpy(np.float64) if "age" in x else nan
    sex = x["sex"].to_numpy(np.float64) if "sex" in x else nan
    return age, sex


def counts_path(spec_counts: str, cohort: Path) -> Path:
    """The population counts file: absolute as given, else beside the cohort."""
    path = Path(spec_counts).expanduser()
    if path.is_absolute():
        return path
    folder = cohort if cohort.is_dir() else cohort.parent
    return folder / path


def read_population_counts(path: Path, design: CaseControl) -> pd.DataFrame:
    """The counts CSV, checked: the stratum columns the spec matches on, whole non-negative
    counts, cases <= population, one row per stratum, bands on the spec's grid."""
    where = f"population counts {path}"
    if not path.is_file():
        raise CohortError(
            f"{where}: no such file. A case-control spec needs the population's size and cases "
            "per matching stratum (calibration.case_control.population_counts): a CSV with "
            "columns age_from, sex, population, cases"
        )
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise CohortError(f"{where}: not a readable CSV ({error})") from None
    keys = stratum_columns(design)
    missing = [c for c in (*keys, "population", "cases") if c not in table]
    if missing:
        raise CohortError(f"{where}: missing columns {missing}; it has {list(table.columns)}")
    for column in ("population", "cases", *(["age_from"] if "age_from" in keys else [])):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values % 1 != 0)
        if bad.any():
            raise CohortError(
                f"{where}: {column} must be whole numbers >= 0; line "
                f"{int(np.argmax(bad.to_numpy())) + 2} has {table[column][bad].iloc[0]!r}"
            )
        table[column] = values.astype(np.int64)
    if "sex" in keys:
        table["sex"] = table["sex"].astype(str).str.strip().str.lower()
        unknown = sorted(set(table["sex"]) - set(SEXES))
        if unknown:
            raise CohortError(f"{where}: sex must be female or male, not {unknown}")
    if "age_from" in keys and (table["age_from"] % design.age_band_years != 0).any():
        raise CohortError(
            f"{where}: age_from must be multiples of {design.age_band_years} "
            "(calibration.case_control.age_band_years)"
        )
    if (table["cases"] > table["population"]).any():
        raise CohortError(f"{where}: a stratum has more cases than people")
    if table.duplicated(keys).any():
        raise CohortError(f"{where}: a stratum is listed twice")
    return table


def stratum_columns(design: CaseControl) -> list[str]:
    """The counts file's key columns for the spec's matching strata."""
    return [{"age_band": "age_from", "sex": "sex"}[m] for m in design.match_on]


def sample_strata(frame: pd.DataFrame, spec: ModelSpec, design: CaseControl) -> pd.DataFrame:
    """Cases and controls per stratum in the cohort (every row read)."""
    outcome = pd.to_numeric(frame[spec.outcome.column], errors="coerce")
    keys: dict[str, pd.Series] = {}
    if "age_band" in design.match_on:
        age = pd.to_numeric(frame["age"], errors="coerce")
        keys["age_from"] = (age // design.age_band_years) * design.age_band_years
    if "sex" in design.match_on:
        keys["sex"] = frame["sex"].astype(str).str.lower()
    rows = pd.DataFrame({**keys, "case": outcome == 1, "control": outcome == 0}).dropna()
    if "age_from" in rows:
        rows["age_from"] = rows["age_from"].astype(np.int64)
    if "sex" in rows:
        rows = rows[rows["sex"].isin(SEXES)]
    grouped = rows.groupby(list(keys), sort=True)[["case", "control"]].sum()
    return grouped.rename(columns={"case": "sample_cases", "control": "controls"}).reset_index()


def stratum_offsets(
    frame: pd.DataFrame, spec: ModelSpec, cohort: Path
) -> tuple[StratumOffsets, dict[str, object]]:
    """log r_s per stratum from the cohort's controls and the population counts, and a summary
    for the model card (the file, prevalence, strata, any band that borrowed a neighbour's)."""
    design = spec.calibration.case_control
    if design is None:
        raise ValueError("the spec is not a stratified case-control spec")
    path = counts_path(design.population_counts, cohort)
    counts = read_population_counts(path, design)
    keys = stratum_columns(design)
    sample = sample_strata(frame, spec, design)
    joined = counts.merge(sample, on=keys, how="outer", indicator=True)
    absent = joined[(joined["_merge"] == "right_only") & (joined["controls"] > 0)]
    if not absent.empty:
        listed = ", ".join(_label(r, keys) for _, r in absent.head(5).iterrows())
        raise CohortError(
            f"population counts {path}: no row for strata the cohort has controls in: {listed}"
        )
    joined = joined[joined["_merge"] != "right_only"].fillna({"sample_cases": 0, "controls": 0})
    joined["non_cases"] = joined["population"] - joined["cases"]
    over = joined[joined["controls"] > joined["non_cases"]]
    if not over.empty:
        raise CohortError(
            f"population counts {path}: the cohort has more controls than the population has "
            f"non-cases in {_label(over.iloc[0], keys)}: the counts cannot be this population's"
        )
    strata, borrowed = _fill_empty_bands(joined, keys)
    banded = "age_from" in keys
    try:
        offsets = StratumOffsets(
            design.age_band_years if banded else None, "sex" in keys, tuple(strata)
        )
    except ValueError as error:
        raise CohortError(f"population counts {path}: {error}") from None
    population, cases = int(counts["population"].sum()), int(counts["cases"].sum())
    summary: dict[str, object] = {
        "population_counts": str(path),
        "match_on": list(design.match_on),
        "population": population,
        "population_cases": cases,
        "population_prevalence": cases / population if population else math.nan,
        "strata": len(strata),
        "sampled_cases": int(joined["sample_cases"].sum()),
        "controls": int(joined["controls"].sum()),
        "overall_sampling_fraction": offsets_fraction(offsets),
        "borrowed": borrowed,
    }
    return offsets, summary


def offsets_fraction(offsets: StratumOffsets) -> float:
    """All controls / all non-cases: the share of the population's non-cases sampled."""
    return math.exp(offsets.overall)


def _fill_empty_bands(joined: pd.DataFrame, keys: list[str]) -> tuple[list[Stratum], list[str]]:
    """One Stratum per counted stratum; a band with no sampled controls takes the nearest band
    (same sex) that has some. The counted bands must be contiguous per sex."""
    strata: list[Stratum] = []
    borrowed: list[str] = []
    sexes = sorted(joined["sex"].unique()) if "sex" in keys else [None]
    for sex in sexes:
        rows = joined if sex is None else joined[joined["sex"] == sex]
        rows = rows.sort_values("age_from") if "age_from" in keys else rows
        with_controls = rows[rows["controls"] > 0]
        if with_controls.empty:
            raise CohortError(f"no controls sampled for sex {sex}: no offset can be estimated")
        for _, row in rows.iterrows():
            age_from = int(row["age_from"]) if "age_from" in keys else None
            source = row
            if row["controls"] <= 0 or row["non_cases"] <= 0:
                distance = (with_controls["age_from"] - (age_from or 0)).abs().to_numpy()
                source = with_controls.iloc[int(np.argmin(distance))]
                borrowed.append(
                    f"{_label(row, keys)}: no controls sampled; uses {_label(source, keys)}"
                )
            strata.append(
                Stratum(
                    age_from=age_from,
                    sex=None if sex is None else str(sex),
                    controls=int(row["controls"]),
                    non_cases=int(row["non_cases"]),
                    log_ratio=math.log(int(source["controls"]) / int(source["non_cases"])),
                )
            )
    return strata, borrowed


def _label(row: pd.Series, keys: list[str]) -> str:
    parts = []
    if "age_from" in keys:
        parts.append(f"age {int(row['age_from'])}+")
    if "sex" in keys:
        parts.append(str(row["sex"]))
    return " ".join(parts)


def population_platt(
    margin: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray,
    start: tuple[float, float],
    max_iter: int = 50,
) -> tuple[float, float]:
    """(slope, intercept) of logit p = intercept + slope * margin + offset, the weighted logistic
    maximum likelihood (Newton), from `start` (the sample-scale Platt fit)."""
    z = np.asarray(margin, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    slope, intercept = start
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(intercept + slope * z + offset)))
        residual = w * (target - p)
        info = w * p * (1.0 - p)
        h00, h01, h11 = info.sum(), (info * z).sum(), (info * z * z).sum()
        g0, g1 = residual.sum(), (residual * z).sum()
        det = h00 * h11 - h01 * h01
        if not det > 0:
            raise CohortError("population-scale calibration failed: the margin does not vary")
        step_a, step_b = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        intercept, slope = intercept + float(step_a), slope + float(step_b)
        if max(abs(step_a), abs(step_b)) < 1e-10:
            return slope, intercept
    raise CohortError("population-scale calibration did not converge in 50 Newton steps")
