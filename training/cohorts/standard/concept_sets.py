"""The concept sets that decide what an importer counts as a cancer and as an index event.

Both are data beside this module (`data/cancer_sites.csv`, `data/index_events.csv`, with their
sources in `data/README.md`), so a site can read, review and replace them without touching code.
Cancers are defined by ICD-10 code (a row matches its own code and every code under it); an OMOP
instance's standard SNOMED concepts reach them through the instance's own "Maps to"
relationships, and FHIR Conditions through their ICD-10 coding.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from models.analytes import Catalogue

DATA = Path(__file__).resolve().parent / "data"
LOCAL_CONCEPT_BASE = 2_000_000_000  # OMOP: concept ids above this are site-local concepts
OTHER_MALIGNANT = "other_malignant"  # a C00-C97 code no listed site claims
INDEX_COLUMNS = ("vocabulary_id", "concept_code", "concept_name", "pathway")


class ConceptSetError(ValueError):
    """A concept-set file that cannot be used (missing columns, empty, duplicate codes)."""


@cache
def cancer_sites() -> pd.DataFrame:
    """`site, icd10, title, key` (key: the code without its dot, upper case), longest key first
    so that the most specific row wins."""
    table = pd.read_csv(DATA / "cancer_sites.csv", dtype=str)
    table["key"] = table["icd10"].map(icd10_key)
    return table.sort_values("key", key=lambda k: -k.str.len(), kind="stable").reset_index(
        drop=True
    )


def icd10_key(code: object) -> str:
    """`C18.7`, `c187 ` and `C18.7X` -> `C187`/`C187X`: the comparable form of a code."""
    return str(code).strip().upper().replace(".", "") if isinstance(code, str) else ""


def cancer_site_of(icd10: pd.Series) -> pd.Series:
    """Each ICD-10 code's cancer site (the most specific listed prefix), `other_malignant` for
    another C00-C97 code, NA otherwise (benign, in situ, uncertain behaviour, not ICD-10).
    Resolved once per distinct code."""
    keys = icd10.map(icd10_key)
    table = cancer_sites()
    resolved: dict[str, object] = {}
    for key in pd.unique(keys):
        site: object = pd.NA
        for prefix, name in zip(table["key"], table["site"], strict=True):
            if key.startswith(prefix):
                site = name
                break
        else:
            if _is_malignant(key):
                site = OTHER_MALIGNANT
        resolved[key] = site
    return keys.map(resolved).astype("string")


def _is_malignant(key: str) -> bool:
    """C00-C97 (malignant neoplasms in ICD-10 Chapter II)."""
    return len(key) >= 3 and key[0] == "C" and key[1:3].isdigit() and int(key[1:3]) <= 97


def icd10_for_site(site: str) -> tuple[str, str]:
    """(code, title) to record a cancer of `site`: its first listed code (exporters use it)."""
    rows = pd.read_csv(DATA / "cancer_sites.csv", dtype=str)  # file order: the first listed
    chosen = rows[rows["site"] == site]
    if chosen.empty:
        raise KeyError(f"no ICD-10 code listed for cancer site {site!r} in cancer_sites.csv")
    return str(chosen["icd10"].iloc[0]), str(chosen["title"].iloc[0])


def load_index_concepts(path: Path | None = None) -> pd.DataFrame:
    """The index-event concept set: `vocabulary_id, concept_code, concept_name, pathway`; the
    shipped one (the simulator's local referral concepts) unless a site gives its own CSV."""
    table = pd.read_csv(path or DATA / "index_events.csv", dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ConceptSetError(
            f"{path}: an index concept set needs the columns {list(INDEX_COLUMNS)}; "
            f"{missing} missing"
        )
    if table.empty:
        raise ConceptSetError(f"{path}: the index concept set is empty")
    duplicated = table.duplicated(["vocabulary_id", "concept_code"])
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise ConceptSetError(
            f"{path}: {first['vocabulary_id']} {first['concept_code']} is listed twice"
        )
    return table[list(INDEX_COLUMNS)].reset_index(drop=True)


def index_concept_for(pathway: str) -> tuple[str, str, str]:
    """(vocabulary_id, concept_code, concept_name) of the shipped index concept of a pathway."""
    table = load_index_concepts()
    rows = table[table["pathway"] == pathway]
    if rows.empty:
        raise KeyError(f"no index concept for pathway {pathway!r} in index_events.csv")
    first = rows.iloc[0]
    return str(first["vocabulary_id"]), str(first["concept_code"]), str(first["concept_name"])


def exported_loinc(code: str, catalogue: Catalogue) -> str | None:
    """The LOINC an exporter writes for a lab code: itself when it is one of its analyte's
    LOINCs, else the analyte's primary LOINC (a local code mapped, as an ETL would); None for a
    code the catalogue does not know."""
    analyte = catalogue.resolve(code)
    if analyte is None:
        return None
    return code if code in (analyte.loinc, *analyte.alt_loinc) else analyte.loinc


def is_ucum_unit(loinc: str | None, unit: str, catalogue: Catalogue) -> bool:
    """True when `unit` is spelt as a unit the catalogue accepts under `loinc` (so it is a UCUM
    code an exporter may write as such); other spellings ("×10⁹/L") stay text."""
    measured = catalogue.as_measured(loinc) if loinc else None
    return bool(unit) and measured is not None and unit in measured.units
