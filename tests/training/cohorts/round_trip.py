"""What the OMOP and FHIR Bulk round-trip tests share: the simulated cohort with the cases where
the importers' rules differ from the simulator's bookkeeping, the outcome rule computed by a plain
loop, and the comparison of replay scores (native against imported, row by row)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.analytes import CATALOGUE
from training.cohorts.simulator import run_simulation
from training.cohorts.standard import INDEX_FILE
from training.cohorts.standard.index_events import birth_dates, completed_years
from training.replay.options import ReplayModel, ReplayOptions
from training.replay.run import replay_models

HORIZON_DAYS = 365
EARLIER, REPEATS = 3, 2  # cases added to the simulated cohort (`simulated_with_awkward_cases`)


def simulated_with_awkward_cases(folder: Path, seed: int) -> Path:
    """A simulated referral cohort (4,000 referrals) with the two cases where the importers'
    rules differ from the simulator's bookkeeping, which the simulator happens not to produce
    at this size: REPEATS repeats of a referral (same patient, day and pathway, a new id), and
    EARLIER referrals 200 days before a cancer diagnosed after another referral of the same
    patient (the simulator says no cancer; the rule counts the cancer for both)."""
    run_simulation(cohort="referrals", n=4_000, seed=seed, out=folder)
    index = pd.read_parquet(folder / "referrals_index.parquet")
    born = birth_dates(index)
    earlier = index[index["cancer"] == 1].head(EARLIER).assign(cancer=0, cancer_site=None)
    earlier["index_date"] = earlier.pop("diagnosis_date") - timedelta(days=200)
    earlier["diagnosis_date"] = pd.NaT
    birth = born.reindex(earlier["patient_id"]).set_axis(earlier.index)
    earlier["age"] = completed_years(birth, earlier["index_date"])
    repeats = index[index["cancer"] == 0].head(REPEATS)
    added = pd.concat([earlier, repeats], ignore_index=True)
    added["referral_id"] = index["referral_id"].max() + 1 + np.arange(len(added))
    index = pd.concat([index, added.astype(index.dtypes.to_dict())], ignore_index=True)
    index.to_parquet(folder / "referrals_index.parquet", index=False)
    return folder


def primary_loinc(code: str) -> str:
    """The LOINC code an export writes for a native code (a local code maps to its analyte's)."""
    analyte = CATALOGUE.resolve(code)
    assert analyte is not None, code
    return code if code[0].isdigit() else analyte.loinc


def check_outcomes(native: Path, imported: Path, manifest: dict[str, Any]) -> None:
    """The imported index keeps every referral but the repeats, with the native ages, sexes,
    pathways and labs, and outcomes by the documented rule: they differ from the simulator's
    exactly where the plain-loop computation says they should."""
    original = pd.read_parquet(native / "referrals_index.parquet").set_index("referral_id")
    back = pd.read_parquet(imported / INDEX_FILE).set_index("referral_id")
    expected = expected_outcomes(original.reset_index()).set_index("referral_id")
    counts = manifest["exclusions"]
    repeats = next(r["count"] for r in counts if r["reason"] == "duplicate_index_event")
    assert repeats == int(expected["repeat"].sum()) == REPEATS
    assert sum(r["count"] for r in counts) == REPEATS, "nothing else is excluded"
    expected = expected[~expected["repeat"]]
    assert sorted(back.index) == sorted(expected.index)
    kept = original.loc[back.index]
    for column in ("patient_id", "index_date", "age"):
        assert (back[column] == kept[column]).all(), column
    for column in ("sex", "pathway"):
        assert (back[column].astype(str) == kept[column].astype(str)).all(), column
    simulated = back.index <= original.index.max() - EARLIER - REPEATS  # not the added cases
    assert (back.loc[simulated, "lab"].astype(str) == kept.loc[simulated, "lab"].astype(str)).all()
    outcome = ["cancer", "cancer_site", "diagnosis_date"]
    assert same(back[outcome], expected[outcome]).all(axis=None), "the documented rule"
    differs = ~same(kept[outcome], expected[outcome]).all(axis=1)
    imported_differs = ~same(back[outcome], kept[outcome]).all(axis=1)
    assert imported_differs.sum() == differs.sum() == EARLIER, "differences counted independently"
    assert (back.loc[differs[differs].index, "cancer"] == 1).all()


def same(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    a, b = a.astype(object), b.reindex(a.index).astype(object)
    return (a == b) | (a.isna() & b.isna())


def expected_outcomes(index: pd.DataFrame) -> pd.DataFrame:
    """Per native referral, by a plain loop: the earliest of the patient's cancers (any of
    their referrals') dated from the index day to the horizon, ties by site name; and whether it
    repeats an earlier referral id's patient, day and pathway."""
    cancers: dict[int, set[tuple[pd.Timestamp, str]]] = {}
    for row in index[index["cancer"] == 1].itertuples():
        cancers.setdefault(row.patient_id, set()).add((row.diagnosis_date, str(row.cancer_site)))
    seen: set[tuple[int, pd.Timestamp, str]] = set()
    rows = []
    for row in index.sort_values("referral_id").itertuples():
        key = (row.patient_id, row.index_date, str(row.pathway))
        horizon = row.index_date + timedelta(days=HORIZON_DAYS)
        within = sorted(
            c for c in cancers.get(row.patient_id, ()) if row.index_date <= c[0] <= horizon
        )
        first = within[0] if within else (pd.NaT, None)
        rows.append(
            {
                "referral_id": row.referral_id,
                "repeat": key in seen,
                "cancer": int(bool(within)),
                "cancer_site": first[1],
                "diagnosis_date": first[0],
            }
        )
        seen.add(key)
    return pd.DataFrame(rows)


def check_same_scores(
    native: Path, imported: Path, model: ReplayModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Replayed through the same model, the imported cohort gives the native cohort's status,
    probability, band and every contribution, per referral (bit for bit)."""
    scores = {}
    for name, folder in (("native", native), ("imported", imported)):
        options = ReplayOptions(
            folder, tmp_path_factory.mktemp(name), source="long", explain=True, n_boot=5
        )
        result = replay_models([model], options)
        scores[name] = pd.read_parquet(result.out / "scores.parquet").set_index("referral_id")
    a, b = scores["native"], scores["imported"].reindex(scores["native"].index)
    both = b["status"].notna()
    assert both.sum() == len(scores["imported"]) == len(a) - REPEATS, "the same referrals"
    assert (a.loc[both, "status"] == b.loc[both, "status"]).all()
    scored = both & (a["status"] == "scored")
    assert scored.sum() > 1_000, "enough referrals scored for the comparison to mean something"
    columns = ["probability", *[c for c in a.columns if c.startswith("contrib__")]]
    assert len(columns) > 10, "contributions are compared too"
    for column in columns:
        assert np.array_equal(
            a.loc[scored, column].to_numpy(), b.loc[scored, column].to_numpy(), equal_nan=True
        ), column
    assert (a.loc[scored, "band"] == b.loc[scored, "band"]).all(), "bands"
