"""Outcomes with exactly known true risk: a multinomial logit over cancer sites whose terms are
functions of what a model sees, pathway intercepts root-found to the target conversion, and the
matched case-control sample of the myeloma cohort.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import rankdata

from models.analytes import CATALOGUE
from models.calibration import expit
from training.cohorts.simulator.bloods import reference_limit
from training.cohorts.simulator.people import categorical_from_codes
from training.cohorts.simulator.world import (
    ARTEFACT_CODES,
    BoolArray,
    FloatArray,
    IntArray,
    MyelomaParams,
    Site,
    Term,
)

# --- outcome: exact true risk -----------------------------------------------------------------


def term_values(term: Term, x: FloatArray, male: BoolArray, age: FloatArray) -> FloatArray:
    """One term's log-odds contribution per row ('not tested' value where x is NaN)."""
    limit = reference_limit(CATALOGUE[term.code], term.direction, male, age)
    distance = np.log(np.maximum(x, 1e-9)) - np.log(limit) if term.log else x - limit
    if term.direction == "low":
        distance = -distance
    distance = distance + term.at
    with np.errstate(invalid="ignore"):  # NaN (not tested) rows are replaced below
        hinge = np.logaddexp(0.0, distance / term.scale)
        if term.cap is not None:  # a smooth plateau: softplus(d) - softplus(d - cap)
            hinge = hinge - np.logaddexp(0.0, distance / term.scale - term.cap)
        hinge = term.weight * hinge
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
    baseline: npt.NDArray[np.bool_] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """`people` plus cancer (0/1), cancer_site, diagnosis_date and true_risk: a multinomial logit
    over {no cancer, sites}, so true_risk = 1 - 1 / (1 + sum_k exp g_k) exactly. Also returns
    the root-found intercept of each group (pathway), fitted so that the `baseline` rows (all
    when None; the referrals before practice changed) meet the target conversion."""
    logits = site_logits(seen, people, sites)
    groups = list(targets)
    group = pd.Categorical(people["pathway"].astype(str), categories=groups).codes.astype(np.int64)
    odds = np.exp(logits).sum(axis=1)
    fit = np.ones(len(people), dtype=bool) if baseline is None else baseline
    intercept = fit_intercepts(odds[fit], group[fit], np.array([targets[g] for g in groups]))
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
    frame["cancer_site"] = categorical_from_codes(np.where(cancer, site_code, -1), names)
    frame["diagnosis_date"] = np.where(cancer, diagnosis, np.datetime64("NaT"))
    frame["diagnosis_date"] = frame["diagnosis_date"].astype("datetime64[ns]")
    frame["true_risk"] = true_risk
    return frame, dict(zip(groups, intercept.tolist(), strict=True))


def oracle_reachable(
    people: pd.DataFrame, flags: Mapping[str, BoolArray], sites: Sequence[Site]
) -> BoolArray:
    """True where the model sees every value the row's true risk was computed from; False where
    an artefact changed one of them (ARTEFACT_CODES) for a site the row could have, so that no
    model of the reported values can reach `true_risk` there."""
    pathway = people["pathway"].astype(str).to_numpy()
    reachable = np.ones(len(people), dtype=bool)
    for flag, codes in ARTEFACT_CODES.items():
        using = [s.pathway for s in sites if any(t.code in codes for t in s.terms)]
        reachable &= ~(flags[flag] & np.isin(pathway, using))
    return reachable


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


def sampled_index_events(
    events: pd.DataFrame, rows: IntArray, matched_set: IntArray, params: MyelomaParams
) -> pd.DataFrame:
    index = events.iloc[rows].reset_index(drop=True)
    prevalence = float(events["cancer"].mean())
    index["matched_set"] = matched_set
    index["sampling_fraction"] = float(index["cancer"].mean())
    index["population_prevalence"] = prevalence
    return index


def band_start(age: npt.ArrayLike, params: MyelomaParams) -> IntArray:
    """First year of each age's matching band (`age_from`: 63 -> 60 with 5-year bands)."""
    band = np.asarray(age, dtype=np.int64) // params.age_band_years
    return np.asarray(band * params.age_band_years, dtype=np.int64)


def population_strata(events: pd.DataFrame, params: MyelomaParams) -> pd.DataFrame:
    """People and cases per matching stratum, as a user would supply them for their own data
    (`age_from, sex, population, cases`, sorted by sex then age_from). Every band between a sex's
    youngest and oldest is listed, an empty one with zeros, so the bands are contiguous (a model
    expects no gaps); with ages 40-100 and 1,000+ people none is empty in practice."""
    age_from = band_start(events["age"], params)
    sex = events["sex"].cat
    cancer = events["cancer"].to_numpy(np.int64)
    parts = []
    for code, name in enumerate(sex.categories):
        mine = sex.codes.to_numpy() == code
        if not mine.any():
            continue
        first = int(age_from[mine].min())
        band = (age_from[mine] - first) // params.age_band_years
        people = np.bincount(band)
        parts.append(
            pd.DataFrame(
                {
                    "age_from": first + params.age_band_years * np.arange(len(people)),
                    "sex": str(name),
                    "population": people,
                    "cases": np.bincount(band, weights=cancer[mine], minlength=len(people)),
                }
            )
        )
    strata = pd.concat(parts, ignore_index=True).astype(
        {"age_from": np.int64, "population": np.int64, "cases": np.int64}
    )
    return strata.sort_values(["sex", "age_from"], ignore_index=True)


# --- summaries, files, manifest ---------------------------------------------------------------


def oracle_auc(outcome: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without both classes."""
    y = np.asarray(outcome).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))
