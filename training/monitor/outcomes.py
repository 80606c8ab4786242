"""Outcomes that arrive after the scores (a cancer registry extract, a pathology feed), linked to
the audited scores without ever holding a patient reference in clear.

The file (CSV or Parquet) has exactly the columns `patient_reference`, `diagnosis_date` and,
optionally, `site`; any other column refuses the file (a misnamed column must not be dropped
silently). Each reference is pseudonymised at once with the server's HMAC key, as the server did
when it audited the request (`serving.audit.pseudonymise`), and the clear column is dropped.

Rows that cannot be used are counted by reason, never dropped silently: `missing_reference`,
`unparseable_date` (not a date), `imprecise_date` (a year or a year and month only, as registries
sometimes send: which horizon it falls in is unknown), `after_follow_up_end` (dated after the day
the outcomes are complete to, a contradiction), `duplicate` (the same patient, day and site
again: one is kept), and, after linkage, `no_audited_score` (the patient has no audited score in
the monitored window: e.g. never scored, or scored by another model).

A score's outcome is the earliest linked diagnosis dated on its index day or within
`horizon_days` after it, the rule of the training cohorts (`training.cohorts.standard.
index_events`); a score counts only when its horizon has fully elapsed by `follow_up_end` (the
day the outcome source is complete to); the others are counted as still open.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from serving.audit import pseudonymise

REQUIRED = ("patient_reference", "diagnosis_date")
OPTIONAL = ("site",)
REASONS = (
    "missing_reference",
    "unparseable_date",
    "imprecise_date",
    "after_follow_up_end",
    "duplicate",
    "no_audited_score",
)
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ].*)?$")
_PARTIAL_DATE = re.compile(r"^\d{4}(-\d{2})?$")


class OutcomesError(ValueError):
    """An outcomes file that cannot be read as one (its columns, its format)."""


@dataclass
class Outcomes:
    """Pseudonymised outcomes (`patient_pseudonym`, `diagnosis_date`, `site`) and what was left
    out, by reason (with the file's row numbers, 1 = first data row, of a few of each)."""

    frame: pd.DataFrame
    rows: int
    excluded: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def exclude(self, reason: str, mask: np.ndarray, line: pd.Series) -> None:
        self.excluded[reason] += int(mask.sum())
        if mask.any():
            self.examples.setdefault(reason, []).extend(int(n) for n in line[mask].head(5))

    def counts(self) -> dict[str, int]:
        """Every reason with its count, zeros included (the report lists them all)."""
        return {reason: int(self.excluded.get(reason, 0)) for reason in REASONS}


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise OutcomesError(f"{path}: no such outcomes file")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() in {".csv", ".txt"}:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    raise OutcomesError(f"{path}: outcomes must be a .csv or .parquet file")


def _dates(text: pd.Series, time_zone: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Calendar days (aware timestamps in `time_zone`), and which rows were partial or bad."""
    values = text.astype("string").str.strip().fillna("")
    partial = values.str.fullmatch(_PARTIAL_DATE.pattern).to_numpy(bool)
    full = values.str.fullmatch(_FULL_DATE.pattern).to_numpy(bool)
    found: list[pd.Timestamp | None] = [None] * len(values)
    for i in np.flatnonzero(full):
        try:
            stamp = pd.Timestamp(values.iloc[i])
        except ValueError:
            continue
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert(time_zone).tz_localize(None)
        found[i] = stamp.normalize()
    days = pd.Series(found, index=text.index, dtype="datetime64[ns]")
    bad = ~partial & days.isna().to_numpy()
    return days, partial, bad


def read_outcomes(path: Path, hmac_key: str, follow_up_end: date, time_zone: str) -> Outcomes:
    """Read, check and pseudonymise an outcomes file (see the module docstring)."""
    table = _read_table(path)
    columns = [str(c) for c in table.columns]
    unknown = [c for c in columns if c not in (*REQUIRED, *OPTIONAL)]
    missing = [c for c in REQUIRED if c not in columns]
    if unknown or missing:
        parts = [
            f"unknown column(s) {', '.join(unknown)}" if unknown else "",
            f"missing column(s) {', '.join(missing)}" if missing else "",
        ]
        raise OutcomesError(
            f"{path}: {'; '.join(p for p in parts if p)}. An outcomes file has the columns "
            f"{', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}; rename or remove the "
            "others (nothing is ignored silently)"
        )
    line = pd.Series(np.arange(1, len(table) + 1), index=table.index)
    outcomes = Outcomes(pd.DataFrame(), rows=len(table))
    references = table["patient_reference"].astype("string").str.strip()
    keep = references.fillna("").ne("").to_numpy(bool)
    outcomes.exclude("missing_reference", ~keep, line)
    days, partial, bad = _dates(table["diagnosis_date"], time_zone)
    outcomes.exclude("imprecise_date", keep & partial, line)
    outcomes.exclude("unparseable_date", keep & bad, line)
    keep &= ~partial & ~bad
    late = keep & (days > pd.Timestamp(follow_up_end)).to_numpy(bool)
    outcomes.exclude("after_follow_up_end", late, line)
    keep &= ~late
    site = (
        table["site"].astype("string").str.strip().pipe(lambda t: t.mask(t == ""))
        if "site" in table
        else pd.Series(pd.NA, index=table.index, dtype="string")
    )
    frame = pd.DataFrame(
        {
            "patient_pseudonym": [pseudonymise(str(r), hmac_key) for r in references[keep]],
            "diagnosis_date": days[keep].to_numpy(),
            "site": site[keep].to_numpy(),
            "line": line[keep].to_numpy(),
        }
    )
    repeated = frame.duplicated(["patient_pseudonym", "diagnosis_date", "site"]).to_numpy(bool)
    outcomes.exclude("duplicate", repeated, frame["line"])
    outcomes.frame = frame.loc[~repeated].reset_index(drop=True)
    return outcomes


@dataclass(frozen=True)
class Linked:
    """Scores with their realised outcome: `cancer` (1/0), `diagnosis_date` and `cancer_site` of
    the earliest diagnosis in the horizon, and `elapsed` (the horizon ended by follow-up end)."""

    frame: pd.DataFrame
    open_scores: int
    elapsed_scores: int


def link_outcomes(
    scores: pd.DataFrame,
    outcomes: Outcomes,
    horizon_days: int | None,
    follow_up_end: date,
    outcome_column: str = "cancer",
    *,
    count_unmatched: bool = True,
) -> Linked:
    """Each score's outcome within its horizon (module docstring). `scores` needs `seq`,
    `index_date` and `patient_pseudonym`; outcomes matching no score are counted in
    `outcomes.excluded["no_audited_score"]`. A horizon of None (any time in follow-up) is
    always elapsed. `count_unmatched`: (re)count the outcomes that match none of `scores`."""
    found = outcomes.frame
    known = set(scores["patient_pseudonym"].dropna())
    unmatched = ~found["patient_pseudonym"].isin(known).to_numpy(bool)
    if count_unmatched:
        outcomes.excluded["no_audited_score"] = 0
        outcomes.examples.pop("no_audited_score", None)
        outcomes.exclude("no_audited_score", unmatched, found["line"])
    keys = scores[["seq", "index_date", "patient_pseudonym"]]
    pairs = keys.merge(found.loc[~unmatched], on="patient_pseudonym", how="inner")
    within = pairs["diagnosis_date"] >= pairs["index_date"]
    if horizon_days is not None:
        within &= pairs["diagnosis_date"] <= pairs["index_date"] + pd.Timedelta(days=horizon_days)
    first = (
        pairs.loc[within]
        .sort_values(["seq", "diagnosis_date", "line"], kind="stable")
        .drop_duplicates("seq")
        .set_index("seq")
    )
    out = scores.copy()
    hit = out["seq"].map(first["diagnosis_date"])
    out["diagnosis_date"] = hit
    out["cancer_site"] = out["seq"].map(first["site"]).astype("string")
    out[outcome_column] = hit.notna().astype(np.int8)
    if horizon_days is None:
        out["elapsed"] = True
    else:
        ends = out["index_date"] + pd.Timedelta(days=horizon_days)
        out["elapsed"] = (ends <= pd.Timestamp(follow_up_end)).to_numpy(bool)
    elapsed = int(out["elapsed"].sum())
    return Linked(out, open_scores=len(out) - elapsed, elapsed_scores=elapsed)
