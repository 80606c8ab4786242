"""The analyte catalogue: coverage, internal consistency and lookups."""

import pytest
from pydantic import ValidationError

from models.analytes import CATALOGUE, PANEL_CORE, Analyte, Catalogue, Interval
from models.units import unit_table

REQUIRED = {
    "full blood count with differential": [
        "haemoglobin", "haematocrit", "rbc", "mcv", "mch", "mchc", "rdw", "platelets", "wbc",
        "neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils",
    ],
    "renal": ["sodium", "potassium", "urea", "creatinine", "egfr"],
    "liver": ["alp", "alt", "ast", "ggt", "bilirubin"],
    "bone": ["calcium_adjusted", "calcium", "phosphate"],
    "inflammatory": ["crp", "esr", "plasma_viscosity"],
    "proteins": ["albumin", "total_protein", "globulin"],
    "other": ["ldh", "glucose", "hba1c", "ferritin"],
    "tumour markers": ["psa", "ca125", "cea"],
}  # fmt: skip


def test_catalogue_covers_the_routine_analytes() -> None:
    assert len(CATALOGUE) >= 35, f"at least 35 analytes expected, found {len(CATALOGUE)}"
    for group, codes in REQUIRED.items():
        missing = [c for c in codes if c not in CATALOGUE]
        assert not missing, f"{group} lacks {missing}"


@pytest.mark.parametrize("analyte", list(CATALOGUE), ids=lambda a: a.code)
def test_every_entry_is_complete_and_consistent(analyte: Analyte) -> None:
    assert analyte.name and analyte.display_unit, "display name and unit are needed for wording"
    assert analyte.limits.low is not None and analyte.limits.high is not None, (
        "hard limits both ends"
    )
    assert analyte.limits.contains(analyte.reference.low or 0.0) or analyte.reference.low is None
    table = unit_table(analyte)  # raises if two spellings of different units collide
    assert len(table) == len(analyte.units), f"{analyte.code}: two accepted units normalise alike"
    assert CATALOGUE.resolve(analyte.loinc) is analyte, "the primary LOINC resolves to the entry"
    for code in analyte.alt_loinc:
        assert CATALOGUE.resolve(code) is analyte, f"alternative LOINC {code} resolves"


def test_sex_and_age_specific_reference_intervals() -> None:
    hb = CATALOGUE["haemoglobin"]
    assert (hb.reference_for("male").low, hb.reference_for("male").high) == (130, 170)
    assert (hb.reference_for("female").low, hb.reference_for("female").high) == (115, 160)
    psa = CATALOGUE["psa"]
    assert psa.reference_for("male", 55).high == 3, "NICE PSA threshold 50-59 is 3 ug/L"
    assert psa.reference_for("male", 65).high == 4, "NICE PSA threshold 60-69 is 4 ug/L"
    assert psa.reference_for("male", 75).high == 5, "NICE PSA threshold 70+ is 5 ug/L"
    assert CATALOGUE["esr"].reference_for("female", 80).high == 40, "ESR rises with age"


def test_panels_core_analytes_exist() -> None:
    for panel, codes in PANEL_CORE.items():
        assert all(c in CATALOGUE for c in codes), f"panel {panel} names unknown analytes"


def test_reference_outside_limits_is_rejected() -> None:
    entry = CATALOGUE["sodium"].model_dump()
    entry["reference"] = {"low": 90, "high": 146}
    with pytest.raises(ValidationError, match="outside hard limits"):
        Analyte.model_validate(entry)


def test_duplicate_codes_and_loinc_are_rejected() -> None:
    sodium = CATALOGUE["sodium"]
    with pytest.raises(ValueError, match="declared twice"):
        Catalogue([sodium, sodium])
    clone = sodium.model_copy(update={"code": "sodium2"})
    with pytest.raises(ValueError, match="LOINC 2951-2"):
        Catalogue([sodium, clone])


def test_extended_catalogue_changes_version_and_checksum() -> None:
    extra = CATALOGUE["sodium"].model_copy(update={"code": "chloride", "loinc": "2075-0"})
    extended = CATALOGUE.extended([extra])
    assert "chloride" in extended and "chloride" not in CATALOGUE
    assert extended.version != CATALOGUE.version and extended.checksum != CATALOGUE.checksum


def test_interval_describe() -> None:
    assert Interval(low=1, high=2).describe() == "1-2"
    assert Interval(high=5).describe() == "<= 5"
