"""The FHIR reader and writers on their own (no server): as-of rules, coded warnings, R4B output.

Bundles are built from `fhir.resources` R4B models (so they are valid FHIR) and by Hypothesis;
every output is validated with the same models. The issue's reproductions are tests here: a CRP
dated 2036 must not move the as-of date or the age, platelets from 2016 fall outside the window,
CRP `<5` is not scored as 5, and BUN 14 mg/dL is urea nitrogen.
"""

from __future__ import annotations

import calendar
import json
from datetime import date, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.analytes import CATALOGUE
from models.explain import Driver
from models.predictor import Score
from serving.fhir import (
    FhirError,
    FhirRequest,
    capability_statement,
    operation_outcome,
    parse_bundle,
    risk_assessment,
)

AS_OF = date(2026, 11, 20)
P = "urn:uuid:patient-1"
LAB = {"hb": ("718-7", "g/L"), "crp": ("1988-5", "mg/L"), "plt": ("777-3", "10*9/L")}


def patient(**fields: Any) -> dict[str, Any]:
    body = {"id": "patient-1", "gender": "male", "birthDate": "1955-11-02", **fields}
    resource = Patient.model_validate({k: v for k, v in body.items() if v is not None})
    return {"fullUrl": P, "resource": resource}


def obs(ref: str, test: str, value: float | None, **fields: Any) -> dict[str, Any]:
    loinc, unit = LAB.get(test, (test, fields.pop("unit", None)))
    body: dict[str, Any] = {
        "id": ref,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": P},
        "effectiveDateTime": "2026-11-10",
        **fields,
    }
    if value is not None:
        quantity = {"value": value, "system": "http://unitsofmeasure.org", "code": unit}
        body["valueQuantity"] = {**quantity, **body.pop("quantity", {})}
    resource = Observation.model_validate({k: v for k, v in body.items() if v is not None})
    return {"fullUrl": f"urn:uuid:{ref}", "resource": resource}


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    built = Bundle.model_validate({"type": "collection", "entry": list(entries)})
    data: dict[str, Any] = built.model_dump(mode="json", exclude_none=True)
    return data


def parse(data: Any, **options: Any) -> FhirRequest:
    return parse_bundle(data, CATALOGUE, as_of=options.pop("as_of", AS_OF), **options)


def reasons(request: FhirRequest) -> dict[str, str]:
    assert all(w.code == "observation_ignored" for w in request.warnings if w.field != "Patient")
    return dict(request.ignored)


# --- the as-of rules ----------------------------------------------------------------------------


def test_a_clean_bundle_gives_the_record() -> None:
    request = parse(bundle(patient(), obs("o1", "hb", 131), obs("o2", "crp", 14)))
    assert request.record == {
        "age": 71,
        "sex": "male",
        "analytes": {
            "haemoglobin": {"value": 131.0, "unit": "g/L"},
            "crp": {"value": 14.0, "unit": "mg/L"},
        },
    }
    assert request.subject == P and request.as_of == AS_OF
    assert request.basis == ["urn:uuid:o1", "urn:uuid:o2"] and request.warnings == []


def test_a_future_crp_moves_neither_the_as_of_date_nor_the_age() -> None:
    """Issue: CRP dated 2036 made the patient 81 with no warning."""
    data = bundle(patient(), obs("o1", "hb", 131), obs("o2", "crp", 14, effectiveDateTime="2036"))
    request = parse_bundle(data, CATALOGUE, today=AS_OF)
    assert request.as_of == AS_OF and request.record["age"] == 71
    assert "crp" not in request.record["analytes"] and request.basis == ["urn:uuid:o1"]
    assert reasons(request) == {"urn:uuid:o2": "future_dated"}


def test_results_outside_the_lookback_window_are_not_used() -> None:
    """Issue: platelets from 2016 were used."""
    old = obs("o1", "plt", 455, effectiveDateTime="2016-03-01T09:00:00Z")
    edge = obs("o2", "hb", 131, effectiveDateTime=(AS_OF - timedelta(days=90)).isoformat())
    request = parse(bundle(patient(), old, edge))
    assert request.record["analytes"] == {"haemoglobin": {"value": 131.0, "unit": "g/L"}}
    assert reasons(request) == {"urn:uuid:o1": "outside_lookback"}
    shorter = parse(bundle(patient(), old, edge), lookback_days=89)
    assert reasons(shorter)["urn:uuid:o2"] == "outside_lookback", "the window is inclusive"


@pytest.mark.parametrize("comparator", ["<", "<=", ">", ">="])
def test_a_censored_value_is_not_that_number(comparator: str) -> None:
    """Issue: CRP `<5` was scored as exactly 5."""
    crp = obs("o1", "crp", 5, quantity={"comparator": comparator})
    request = parse(bundle(patient(), crp, obs("o2", "hb", 131)))
    assert "crp" not in request.record["analytes"]
    assert reasons(request) == {"urn:uuid:o1": "comparator"}
    warning = request.warnings[0]
    assert warning.message.startswith("comparator: urn:uuid:o1") and comparator in warning.message


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("preliminary", "status_not_final"),
        ("registered", "status_not_final"),
        ("unknown", "status_not_final"),
        ("entered-in-error", "withdrawn"),
        ("cancelled", "withdrawn"),
        ("amended", None),
        ("corrected", None),
        ("final", None),
    ],
)
def test_only_final_amended_or_corrected_results_are_used(status: str, reason: str | None) -> None:
    request = parse(bundle(patient(), obs("o1", "hb", 131, status=status)))
    assert reasons(request) == ({"urn:uuid:o1": reason} if reason else {})
    assert ("haemoglobin" in request.record["analytes"]) is (reason is None)


@pytest.mark.parametrize(
    ("subject", "used"),
    [
        (P, True),
        ("Patient/patient-1", True),
        ("https://ehr.example/fhir/Patient/patient-1", True),
        ("Patient/patient-2", False),
        ("urn:uuid:patient-2", False),
        ("https://ehr.example/fhir/Patient/patient-10", False),
    ],
)
def test_observations_of_another_patient_are_not_used(subject: str, used: bool) -> None:
    request = parse(bundle(patient(), obs("o1", "hb", 131, subject={"reference": subject})))
    assert request.basis == (["urn:uuid:o1"] if used else [])
    assert reasons(request) == ({} if used else {"urn:uuid:o1": "other_patient"})


def test_each_ignored_observation_is_one_coded_warning() -> None:
    absent = obs("o3", "hb", None, dataAbsentReason={"coding": [{"code": "not-performed"}]})
    data = bundle(
        patient(),
        obs("o1", "hb", 131, subject=None),
        obs("o2", "2093-3", 5.1, unit="mmol/L"),  # cholesterol: not in the catalogue
        absent,
        obs("o4", "crp", 14, effectiveDateTime=None),
        obs("o5", "plt", 300, effectiveDateTime="2026-11-01"),
        obs("o6", "plt", 310, effectiveDateTime="2026-11-02"),
    )
    request = parse(data)
    assert reasons(request) == {
        "urn:uuid:o1": "no_subject",
        "urn:uuid:o2": "unknown_code",
        "urn:uuid:o3": "no_value",
        "urn:uuid:o4": "undated",
        "urn:uuid:o5": "superseded",
    }
    assert request.basis == ["urn:uuid:o6"]
    assert [w.field for w in request.warnings] == [f"urn:uuid:o{i}" for i in range(1, 6)]


def test_the_latest_result_wins_by_full_timestamp_not_by_bundle_order() -> None:
    """00:30 at +01:00 on the 11th is 23:30 UTC on the 10th: earlier than 23:45 UTC that day."""
    a = obs("a", "hb", 120, effectiveDateTime="2026-11-11T00:30:00+01:00")
    b = obs("b", "hb", 125, effectiveDateTime="2026-11-10T23:45:00Z")
    c = obs("c", "hb", 130, effectiveDateTime="2026-11-10")  # no time: 00:00 UTC
    for order in ([a, b, c], [c, b, a], [b, a, c]):
        request = parse(bundle(patient(), *order))
        assert request.record["analytes"]["haemoglobin"]["value"] == 125.0
        assert request.basis == ["urn:uuid:b"]


def test_same_time_ties_are_broken_by_status_then_issued_not_by_order() -> None:
    when = "2026-11-10T08:00:00Z"
    final = obs("x", "hb", 120, effectiveDateTime=when, issued="2026-11-10T12:00:00Z")
    amended = obs("y", "hb", 125, effectiveDateTime=when, status="amended")
    late = obs("z", "crp", 9, effectiveDateTime=when, issued="2026-11-11T12:00:00Z")
    early = obs("w", "crp", 7, effectiveDateTime=when, issued="2026-11-10T12:00:00Z")
    for order in ([final, amended, late, early], [early, late, amended, final]):
        analytes = parse(bundle(patient(), *order)).record["analytes"]
        assert analytes["haemoglobin"]["value"] == 125.0, "the amended result"
        assert analytes["crp"]["value"] == 9.0, "the later issued"


@pytest.mark.parametrize(
    ("effective", "reason"),
    [
        ("2026", "imprecise_date"),
        ("2026-09", None),
        ("2026-08", "imprecise_date"),
        ("2026-12", "future_dated"),
        ("2025", "outside_lookback"),
        ("2026-07", "outside_lookback"),
    ],
)
def test_partial_effective_dates_count_only_when_provably_inside(
    effective: str, reason: str | None
) -> None:
    """The window for 2026-11-20 and 90 days runs from 2026-08-22."""
    request = parse(bundle(patient(), obs("o1", "hb", 131, effectiveDateTime=effective)))
    assert reasons(request) == ({"urn:uuid:o1": reason} if reason else {})


def test_an_effective_period_uses_its_end() -> None:
    period = {"start": "2026-08-01", "end": "2026-11-01"}
    request = parse(
        bundle(patient(), obs("o1", "hb", 131, effectiveDateTime=None, effectivePeriod=period))
    )
    assert request.basis == ["urn:uuid:o1"]


# --- the patient --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "age", "warned"),
    [
        ("1955-11-21", 70, False),
        ("1955-11-20", 71, False),
        ("1955-03", 71, False),
        ("1955-11", 71, True),
        ("1955", 71, True),
        ("1955-12", 70, False),
    ],
)
def test_partial_birth_dates(birth: str, age: int, warned: bool) -> None:
    """Issue: `birthDate "1955"` gave a 500. A partial date is read as mid-span (1 July, the
    15th); a warning says so when the possible ages differ."""
    request = parse(bundle(patient(birthDate=birth), obs("o1", "hb", 131)))
    assert request.record["age"] == age
    codes = [w.code for w in request.warnings]
    assert codes == (["birth_date_partial"] if warned else [])
    if warned:
        assert "70 to 71" in request.warnings[0].message


def test_a_patient_known_by_an_absolute_url_matches_its_relative_reference() -> None:
    url = "https://ehr.example/fhir/Patient/77"
    entry = {
        "fullUrl": url,
        "resource": Patient.model_validate({"gender": "female", "birthDate": "1960-05-05"}),
    }
    request = parse(bundle(entry, obs("o1", "hb", 131, subject={"reference": "Patient/77"})))
    assert request.subject == url and request.basis == ["urn:uuid:o1"]


def test_patient_errors_are_coded_and_collected() -> None:
    with pytest.raises(FhirError) as caught:
        parse(
            bundle(patient(gender=None, birthDate=None), obs("o1", "hb", 131, status="preliminary"))
        )
    codes = [(i.severity, i.code) for i in caught.value.issues]
    assert codes == [
        ("error", "missing_birth_date"),
        ("error", "missing_sex"),
        ("warning", "observation_ignored"),
    ]
    assert "None" not in str(caught.value), "no Python reprs in messages"


@pytest.mark.parametrize("gender", ["other", "unknown"])
def test_other_genders_are_refused_clearly(gender: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse(bundle(patient(gender=gender)))
    (issue,) = caught.value.issues
    assert issue.code == "unsupported_sex" and "male and female" in issue.message


def test_no_reference_is_ever_made_of_none() -> None:
    anonymous = {"resource": Patient.model_validate({"gender": "male", "birthDate": "1955-01-01"})}
    with pytest.raises(FhirError) as caught:
        parse(bundle(anonymous))
    assert [i.code for i in caught.value.issues] == ["missing_patient_reference"]
    by_id = {
        "resource": Patient.model_validate(
            {"id": "p9", "gender": "male", "birthDate": "1955-01-01"}
        )
    }
    body = obs("o1", "hb", 131)["resource"].model_dump(mode="json", exclude_none=True)
    body = {k: v for k, v in body.items() if k != "id"} | {"subject": {"reference": "Patient/p9"}}
    nameless = {"resource": Observation.model_validate(body)}
    request = parse(bundle(by_id, nameless, {**obs("o2", "hb", 1), "fullUrl": None}))
    assert request.subject == "Patient/p9"
    assert request.ignored == {"Bundle.entry[1]": "no_id", "Observation/o2": "other_patient"}
    assert "None" not in json.dumps([request.basis, [w.field for w in request.warnings]])


@pytest.mark.parametrize(
    "data",
    [
        [],
        "Bundle",
        3,
        None,
        {},
        {"resourceType": "Patient"},
        {"resourceType": ["Bundle"]},
        {"resourceType": "Bundle", "entry": "x"},
        {"resourceType": "Bundle", "entry": [1]},
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Foo"}}]},
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Quantity"}}]},
        {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "Patient", "id": "a_b"}}],
        },
        {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "Patient", "birthDate": "19x"}}],
        },
        {"resourceType": "Bundle", "unknown": 1},
        {"resourceType": "Bundle"},
    ],
)
def test_anything_else_is_invalid_fhir_in_plain_words(data: Any) -> None:
    with pytest.raises(FhirError) as caught:
        parse(data)
    _assert_plain(caught.value)


def _assert_plain(error: FhirError) -> None:
    assert error.issues and all(i.code == "invalid_fhir" for i in error.issues)
    text = " ".join(f"{i.field} {i.message}" for i in error.issues)
    for internal in ("pydantic", "fhir.resources", "<class", "``", "Value error", "Input should"):
        assert internal not in text, f"library internals leak: {text}"
    OperationOutcome.model_validate(operation_outcome(error.issues))


# --- output -------------------------------------------------------------------------------------


def _score() -> Score:
    driver = Driver("crp", 14.0, "mg/L", "0-5", "above", 0.4, "CRP 14 mg/L increased the risk")
    return Score(
        eligible=True,
        issues=(),
        probability=0.3456789,
        band="amber",
        recommendation="Refer",
        drivers=[driver],
    )


def _assessment(request: FhirRequest, request_id: str = "req-1.a") -> dict[str, Any]:
    return risk_assessment(
        _score(),
        request,
        model_name="lower_gi",
        model_version="3",
        outcome="cancer within 12 months",
        request_id=request_id,
        warnings=request.warnings,
    )


def test_risk_assessment_contains_and_references_its_warnings() -> None:
    request = parse(
        bundle(
            patient(birthDate="1955"),
            obs("o1", "hb", 131),
            obs("o2", "crp", 5, quantity={"comparator": "<"}),
        )
    )
    out = _assessment(request)
    RiskAssessment.model_validate(out)
    (contained,) = out["contained"]
    assert contained["resourceType"] == "OperationOutcome" and contained["id"] == "warnings"
    assert {
        "url": "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo",
        "valueReference": {"reference": "#warnings"},
    } in out["extension"]
    assert out["basis"] == [{"reference": "urn:uuid:o1"}], "only the Observations used"
    codes = [[c["code"] for c in i["details"]["coding"]] for i in contained["issue"]]
    assert codes == [["birth_date_partial"], ["observation_ignored", "comparator"]]
    assert out["prediction"][0]["probabilityDecimal"] == 0.3456789
    assert out["subject"] == {"reference": P} and "None" not in json.dumps(out)


def test_risk_assessment_without_warnings_contains_nothing() -> None:
    out = _assessment(parse(bundle(patient(), obs("o1", "hb", 131))))
    assert "contained" not in out and "extension" not in out
    RiskAssessment.model_validate(out)


@pytest.mark.parametrize("bad", ["int_fhir_24761", "int:fhir:23955", "x" * 65, "", "a b"])
def test_request_ids_that_are_not_fhir_ids_are_refused_before_sending(bad: str) -> None:
    with pytest.raises(ValueError, match="FHIR id"):
        _assessment(parse(bundle(patient(), obs("o1", "hb", 131))), bad)
    assert _assessment(parse(bundle(patient())), "A" * 64)["id"] == "A" * 64


def test_capability_statement_is_valid_r4b() -> None:
    out = capability_statement("1.2.3")
    CapabilityStatement.model_validate(out)
    assert (out["status"], out["kind"], out["fhirVersion"], out["format"]) == (
        "active",
        "instance",
        "4.3.0",
        ["json"],
    )
    assert out["software"] == {"name": "cancer-triage", "version": "1.2.3"}
    (operation,) = out["rest"][0]["operation"]
    assert operation["definition"] == "#" + out["contained"][0]["id"], "dom-3: referenced"
    assert "POST /v1/fhir/score" in out["rest"][0]["documentation"]


# --- generated bundles --------------------------------------------------------------------------

FHIR_IDS = st.from_regex(r"\A[A-Za-z0-9\-.]{1,64}\Z")
DAYS = st.dates(date(2010, 1, 1), date(2030, 12, 31))
PARTIAL = st.one_of(
    DAYS.map(date.isoformat),
    DAYS.map(lambda d: d.isoformat()[:7]),
    DAYS.map(lambda d: d.isoformat()[:4]),
    st.builds(
        lambda d, h, m, z: f"{d.isoformat()}T{h:02d}:{m:02d}:00{z}",
        DAYS,
        st.integers(0, 23),
        st.integers(0, 59),
        st.sampled_from(["Z", "+01:00", "-10:00", "+14:00"]),
    ),
)
STATUSES = st.sampled_from(
    [
        "final",
        "amended",
        "corrected",
        "preliminary",
        "registered",
        "entered-in-error",
        "cancelled",
        "unknown",
    ]
)


@st.composite
def bundles(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pid = draw(FHIR_IDS)
    birth = draw(
        st.one_of(
            st.none(),
            st.dates(date(1930, 1, 1), date(1990, 12, 31)).map(date.isoformat),
            st.integers(1930, 1990).map(str),
        )
    )
    gender = draw(st.sampled_from(["male", "female", "other", "unknown", None]))
    body = {"id": pid, "gender": gender, "birthDate": birth}
    known = {k: v for k, v in body.items() if v is not None}
    entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": Patient.model_validate(known)}]
    facts = []
    for i in range(draw(st.integers(0, 6))):
        test = draw(st.sampled_from(sorted(LAB)))
        fact = {
            "ref": f"urn:uuid:obs-{i}",
            "test": test,
            "when": draw(PARTIAL),
            "status": draw(STATUSES),
            "comparator": draw(st.sampled_from([None, "<", ">="])),
            "subject": draw(
                st.sampled_from([f"urn:uuid:{pid}", f"Patient/{pid}", "Patient/someone-else"])
            ),
        }
        entry = obs(
            f"obs-{i}",
            test,
            draw(st.floats(1, 400)),
            effectiveDateTime=fact["when"],
            status=fact["status"],
            subject={"reference": fact["subject"]},
            quantity={"comparator": fact["comparator"]} if fact["comparator"] else {},
        )
        entries.append(entry)
        facts.append(fact)
    return bundle(*entries), facts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundles(), DAYS)
def test_generated_bundles_follow_the_rules(case: Any, as_of: date) -> None:
    data, facts = case
    try:
        request = parse(data, as_of=as_of)
    except FhirError as error:
        codes = {i.code for i in error.issues}
        OperationOutcome.model_validate(operation_outcome(error.issues))
        allowed = {"missing_birth_date", "missing_sex", "unsupported_sex", "observation_ignored"}
        assert codes <= allowed | {"birth_date_partial"}, codes
        return
    start = as_of - timedelta(days=90)
    by_ref = {f["ref"]: f for f in facts}
    for ref in request.basis:
        fact = by_ref[ref]
        assert fact["status"] in {"final", "amended", "corrected"} and not fact["comparator"]
        assert fact["subject"] != "Patient/someone-else"
        first, last = _span(fact["when"])
        assert start <= first and last <= as_of, "used only when wholly inside the window"
    assert set(request.basis).isdisjoint(request.ignored)
    assert set(request.basis) | set(request.ignored) == set(by_ref), "each one used or warned"
    birth = data["entry"][0]["resource"]["birthDate"]
    if len(birth) == 10:
        assert request.record["age"] == _age_by_counting(date.fromisoformat(birth), as_of)
    out = _assessment(request)
    RiskAssessment.model_validate(out)
    assert "None" not in json.dumps(out)


def _age_by_counting(birth: date, on: date) -> int:
    """Birthdays passed, counted one by one (29 February's falls on 1 March in other years)."""
    years = 0
    while True:
        year = birth.year + years + 1
        leap_day = (birth.month, birth.day) == (2, 29) and not calendar.isleap(year)
        birthday = date(year, 3, 1) if leap_day else birth.replace(year=year)
        if birthday > on:
            return years
        years += 1


def _span(when: str) -> tuple[date, date]:
    """The days a FHIR date may mean, worked out independently of the reader."""
    if len(when) == 4:
        return date(int(when), 1, 1), date(int(when), 12, 31)
    if len(when) == 7:
        first = date.fromisoformat(when + "-01")
        return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return date.fromisoformat(when[:10]), date.fromisoformat(when[:10])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "entry",
                    "resource",
                    "type",
                    "id",
                    "birthDate",
                    "fullUrl",
                    "Bundle",
                    "Patient",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(JSON, st.sampled_from(["Bundle", "Patient", None]))
def test_arbitrary_json_raises_nothing_but_fhir_error(data: Any, kind: str | None) -> None:
    if isinstance(data, dict) and kind:
        data = {**data, "resourceType": kind}
    try:
        parse(data)
    except FhirError as error:
        text = " ".join(i.message for i in error.issues)
        assert "pydantic" not in text and "<class" not in text and "``" not in text
        OperationOutcome.model_validate(operation_outcome(error.issues))
