"""CDS Hooks 2.0 (STU2, 2.0.1): discovery, hook requests turned into a FHIR Bundle, and cards.

Pure functions; the routes live in the service. Two services: `patient-view` (the chart is opened)
and `order-sign` (an urgent suspected-cancer referral is about to be signed). Each asks the EHR to
prefetch the Patient and the patient's recent laboratory Observations by LOINC; the service never
calls the `fhirServer` named in a request (a scoring service makes no outbound requests, and the
`fhirAuthorization` token is dropped unread). What the prefetch lacks decides the answer:

| case                                               | answer                                   |
|----------------------------------------------------|------------------------------------------|
| body, hook, hookInstance or context malformed      | 400 `invalid_request` (coded issues)     |
| a prefetch value of the wrong kind / other patient | 400 `invalid_prefetch`                   |
| a prefetch key absent (the EHR did not satisfy it) | 412 `prefetch_missing` (the spec: SHALL) |
| key present, no data (null, empty Bundle, outcome) | 200, a card naming what is missing       |
| order-sign without an urgent referral              | 200, no card (nothing to advise on)      |

Indicators: a score card is `info` (green band), `warning` (amber) or `critical` (red). A card
for missing data is `info` on patient-view (it opens with every chart: a warning there would be
noise) and `warning` on order-sign (the referral is being signed without the bloods its triage
needs, and ordering them changes nothing else). A patient the model is not for (age, population)
is `info`; results the service could not read (unit, limits) are `warning`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.analytes import Catalogue
from models.spec import PATHWAYS
from models.validation import Issue
from serving.result_page import frequency_text, outcome_of, percent_text

PATIENT_VIEW, ORDER_SIGN = "cancer-triage-patient-view", "cancer-triage-order-sign"
HOOKS = {PATIENT_VIEW: "patient-view", ORDER_SIGN: "order-sign"}
PATIENT_KEY, OBSERVATIONS_KEY = "patient", "observations"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
PATIENT_REFERRAL = "3457005"  # SNOMED CT "Patient referral" (US Core ServiceRequest category)
PATHWAY_SYSTEM = "urn:cancer-triage:pathway"  # an EHR maps its referral order codes onto it
URGENT = frozenset({"urgent", "asap", "stat"})
RESULTS_PER_CODE = 10  # the latest of every code is on the page unless ten newer panels precede it
SUMMARY_LIMIT = 139  # the spec: a "<140-character summary"
TOP_DRIVERS = 3
USAGE = "Needs the prefetched Patient and laboratory Observations; it never queries the EHR."
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
INDICATOR = {"green": "info", "amber": "warning", "red": "critical"}
# Refusal codes (models.validation, serving.fhir) that mean "not there" / "not this patient".
_ABSENT = ("missing_required_panel", "missing_required_analyte", "missing_birth_date")
MISSING_DATA = frozenset((*_ABSENT, "missing_sex", "missing_pathway"))
NOT_FOR_PATIENT = frozenset(
    {"age_out_of_range", "invalid_sex", "unsupported_sex", "outside_population"}
)


@dataclass(frozen=True)
class HookRequest:
    """A valid hook call: the patient's record as a FHIR Bundle (Patient + Observations) for the
    FHIR parser, and for order-sign the referral's pathway (None: no pathway coded)."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str
    bundle: dict[str, Any]
    pathway: str | None = None
    referral: str | None = None  # `ServiceRequest/<id>` of the referral being signed
    notes: tuple[str, ...] = ()  # facts about the prefetch a clinician should see on the card


@dataclass(frozen=True)
class HookProblem:
    """A hook call that is not scored. `status` 200: answer `cards_for_problem(problem)`; any
    other: the service's coded error envelope with this status and code."""

    status: int
    code: str
    message: str
    service_id: str | None = None
    issues: tuple[Issue, ...] = ()
    missing: tuple[str, ...] = field(default=())  # what the model needs and did not get


# --- discovery ----------------------------------------------------------------------------------


def lab_codes(models: Sequence[Mapping[str, Any]], catalogue: Catalogue | None = None) -> list[str]:
    """The LOINC codes of every served model's inputs (with the catalogue's alternative codes,
    e.g. BUN for urea, when a catalogue is given), in first-seen order."""
    codes: list[str] = []
    for model in models:
        for item in model.get("inputs", []):
            alternatives: Sequence[str] = item.get("alt_loinc", ())
            if catalogue is not None and item["code"] in catalogue:
                alternatives = (*alternatives, *catalogue[item["code"]].alt_loinc)
            codes += [c for c in (item["loinc"], *alternatives) if c not in codes]
    return codes


def prefetch_templates(codes: Sequence[str]) -> dict[str, str]:
    """The Patient read and one Observation search, newest first (the spec's query subset:
    type-level search, token equality, `_sort` and `_count`)."""
    code_list = ",".join(f"{LOINC}|{code}" for code in codes)
    count = max(100, RESULTS_PER_CODE * len(codes))
    return {
        PATIENT_KEY: "Patient/{{context.patientId}}",
        OBSERVATIONS_KEY: (
            f"Observation?patient={{{{context.patientId}}}}&code={code_list}"
            f"&_sort=-date&_count={count}"
        ),
    }


def discovery(
    models: Sequence[Mapping[str, Any]], catalogue: Catalogue | None = None
) -> dict[str, Any]:
    """`GET /cds-services`: the two services (none while no model is served, as the spec asks)."""
    if not models:
        return {"services": []}
    prefetch = prefetch_templates(lab_codes(models, catalogue))
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": PATIENT_VIEW,
                "title": "Cancer triage from routine blood tests",
                "description": "Estimated probability of cancer from the patient's recent "
                "routine blood tests (full blood count, renal, liver, inflammatory markers), "
                "with a green/amber/red triage band and the results that moved it most.",
                "prefetch": prefetch,
                "usageRequirements": USAGE,
            },
            {
                "hook": "order-sign",
                "id": ORDER_SIGN,
                "title": "Cancer triage for an urgent suspected-cancer referral",
                "description": "When an urgent suspected-cancer referral (a draft ServiceRequest) "
                "is signed: the estimated probability of cancer and triage band on the referral's "
                f"pathway (coded in {PATHWAY_SYSTEM}), from recent routine blood tests.",
                "prefetch": prefetch,
                "usageRequirements": USAGE,
            },
        ]
    }


# --- the hook request ---------------------------------------------------------------------------


def _invalid(service_id: str, field_: str, message: str) -> HookProblem:
    issue = Issue("error", "invalid_request", field_, message)
    return HookProblem(400, "invalid_request", message, service_id, (issue,))


def _invalid_prefetch(service_id: str, key: str, message: str) -> HookProblem:
    issue = Issue("error", "invalid_prefetch", f"prefetch.{key}", message)
    return HookProblem(400, "invalid_prefetch", message, service_id, (issue,))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _envelope(body: Any, service_id: str) -> HookProblem | tuple[str, Mapping[str, Any]]:
    """The checks every hook shares: the service, `hook`, `hookInstance`, `context.patientId`."""
    if service_id not in HOOKS:
        known = ", ".join(HOOKS)
        return HookProblem(404, "unknown_service", f"no CDS service {service_id!r} ({known})")
    if not isinstance(body, Mapping):
        return _invalid(service_id, "body", "the request body must be a JSON object")
    hook, instance, context = body.get("hook"), body.get("hookInstance"), body.get("context")
    if hook != HOOKS[service_id]:
        message = f"hook must be {HOOKS[service_id]!r} for this service, got {hook!r}"
        return _invalid(service_id, "hook", message[:300])
    if not isinstance(instance, str) or not _is_uuid(instance):
        return _invalid(service_id, "hookInstance", "hookInstance must be a UUID")
    if not isinstance(context, Mapping):
        return _invalid(service_id, "context", "context must be an object")
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not FHIR_ID.match(patient_id):
        return _invalid(service_id, "context.patientId", "context.patientId must be a FHIR id")
    if "fhirAuthorization" in body and not isinstance(body.get("fhirServer"), str):
        # The spec makes fhirServer REQUIRED with fhirAuthorization; neither is ever used here.
        return _invalid(service_id, "fhirServer", "fhirServer is required with fhirAuthorization")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, Mapping):
        return _invalid(service_id, "prefetch", "prefetch must be an object")
    return patient_id, context


def _outcome_text(resource: Mapping[str, Any]) -> str:
    """What an OperationOutcome the EHR sent in place of data says, briefly."""
    issues = resource.get("issue")
    texts = [
        str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or "")
        for issue in (issues if isinstance(issues, list) else [])
        if isinstance(issue, Mapping) and isinstance(issue.get("details") or {}, Mapping)
    ]
    said = "; ".join(t for t in texts if t)[:200]
    return f" (the EHR said: {said})" if said else ""


def _no_data(service_id: str, code: str, message: str, missing: str) -> HookProblem:
    return HookProblem(200, code, message, service_id, missing=(missing,))


def _patient(value: Any, patient_id: str, service_id: str) -> dict[str, Any] | HookProblem:
    """The prefetched Patient (a read: one resource, null when the EHR has none)."""
    what = "the Patient (age and sex)"
    if value is None:
        return _no_data(service_id, "no_patient", "the EHR sent no Patient", what)
    if not isinstance(value, Mapping):
        return _invalid_prefetch(service_id, PATIENT_KEY, "prefetch.patient must be a resource")
    if value.get("resourceType") == "OperationOutcome":
        message = f"the EHR could not provide the Patient{_outcome_text(value)}"
        return _no_data(service_id, "no_patient", message, what)
    if value.get("resourceType") != "Patient":
        return _invalid_prefetch(service_id, PATIENT_KEY, "prefetch.patient is not a Patient")
    if value.get("id") != patient_id:
        message = "the prefetched Patient is not the patient in context.patientId"
        return _invalid_prefetch(service_id, PATIENT_KEY, message)
    return dict(value)


def _observations(
    value: Any, service_id: str
) -> tuple[list[dict[str, Any]], list[str]] | HookProblem:
    """The prefetched Observations as Bundle entries (fullUrl kept), and notes for the card."""
    what = "recent laboratory results (Observations)"
    if value is None:
        return _no_data(service_id, "no_observations", "the EHR sent no results", what)
    if not isinstance(value, Mapping):
        return _invalid_prefetch(service_id, OBSERVATIONS_KEY, "must be a Bundle or resource")
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        message = f"the EHR could not provide the results{_outcome_text(value)}"
        return _no_data(service_id, "no_observations", message, what)
    if kind == "Observation":
        return [{"resource": dict(value)}], []
    entries = value.get("entry", [])
    if kind != "Bundle" or not isinstance(entries, list):
        return _invalid_prefetch(service_id, OBSERVATIONS_KEY, "must be a searchset Bundle")
    kept: list[dict[str, Any]] = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            return _invalid_prefetch(service_id, OBSERVATIONS_KEY, "an entry has no resource")
        if resource.get("resourceType") != "Observation":
            continue  # search outcomes and included resources are not results
        full_url = entry.get("fullUrl")  # kept: the FHIR parser names results by it
        kept.append({"fullUrl": full_url} if isinstance(full_url, str) else {})
        kept[-1]["resource"] = dict(resource)
    if not kept:
        return _no_data(service_id, "no_observations", "the EHR found no results", what)
    links = value.get("link")
    paged = isinstance(links, list) and any(
        isinstance(link, Mapping) and link.get("relation") == "next" for link in links
    )
    notes = (
        [f"Only the newest {len(kept)} results were sent (the EHR paged them)."] if paged else []
    )
    return kept, notes


def _codings(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(system, code) of a ServiceRequest's `code` and `category` codings."""
    category = resource.get("category")
    concepts = [resource.get("code"), *(category if isinstance(category, list) else [])]
    return [
        (str(c.get("system")), str(c.get("code")))
        for concept in concepts
        if isinstance(concept, Mapping) and isinstance(concept.get("coding"), list)
        for c in concept["coding"]
        if isinstance(c, Mapping)
    ]


def _referral(
    context: Mapping[str, Any], patient_id: str
) -> tuple[str | None, str | None] | HookProblem | None:
    """The urgent referral among the draft orders: (pathway, `ServiceRequest/<id>`), None when
    there is none. A referral is a ServiceRequest coded with a pathway in PATHWAY_SYSTEM, or
    one with the SNOMED category/code "Patient referral" and an urgent priority."""
    orders = context.get("draftOrders")
    entries = orders.get("entry", []) if isinstance(orders, Mapping) else None
    if (
        not isinstance(orders, Mapping)
        or orders.get("resourceType") != "Bundle"
        or not isinstance(entries, list)
    ):
        return _invalid(ORDER_SIGN, "context.draftOrders", "draftOrders must be a FHIR Bundle")
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "ServiceRequest":
            continue
        codings = _codings(resource)
        pathways = [code for system, code in codings if system == PATHWAY_SYSTEM]
        urgent_referral = (SNOMED, PATIENT_REFERRAL) in codings and resource.get(
            "priority"
        ) in URGENT
        if not pathways and not urgent_referral:
            continue
        subject = resource.get("subject")
        reference = str(subject.get("reference")) if isinstance(subject, Mapping) else None
        if reference is not None and not f"/{reference}".endswith(f"/Patient/{patient_id}"):
            message = "the draft referral is for another patient than context.patientId"
            return _invalid(ORDER_SIGN, "context.draftOrders", message)
        if pathways and pathways[0] not in PATHWAYS:
            message = f"pathway {pathways[0][:40]!r} is not one of {', '.join(PATHWAYS)}"
            issue = Issue("error", "invalid_pathway", "context.draftOrders", message)
            return HookProblem(400, "invalid_request", message, ORDER_SIGN, (issue,))
        order_id = resource.get("id")
        referral = f"ServiceRequest/{order_id}" if isinstance(order_id, str) else None
        return (pathways[0] if pathways else None), referral
    return None


def parse_hook_request(body: Any, service_id: str) -> HookRequest | HookProblem:
    """Validate a hook call and turn its prefetch into a FHIR Bundle (Patient + Observations) for
    the FHIR parser. Never raises: anything unusable comes back as a coded HookProblem."""
    envelope = _envelope(body, service_id)
    if isinstance(envelope, HookProblem):
        return envelope
    patient_id, context = envelope
    pathway, referral = None, None
    if service_id == ORDER_SIGN:
        found = _referral(context, patient_id)
        if isinstance(found, HookProblem):
            return found
        if found is None:
            message = "no urgent suspected-cancer referral among the draft orders"
            return HookProblem(200, "no_referral", message, service_id)
        pathway, referral = found
    prefetch = body.get("prefetch") or {}
    absent = tuple(key for key in (PATIENT_KEY, OBSERVATIONS_KEY) if key not in prefetch)
    if absent:
        message = f"prefetch {', '.join(absent)} not provided; this service never queries the EHR"
        issues = tuple(Issue("error", "prefetch_missing", f"prefetch.{k}", message) for k in absent)
        return HookProblem(412, "prefetch_missing", message, service_id, issues, absent)
    patient = _patient(prefetch[PATIENT_KEY], patient_id, service_id)
    if isinstance(patient, HookProblem):
        return patient
    observations = _observations(prefetch[OBSERVATIONS_KEY], service_id)
    if isinstance(observations, HookProblem):
        return observations
    entries, notes = observations
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient}, *entries],
    }
    return HookRequest(
        service_id,
        HOOKS[service_id],
        body["hookInstance"],
        patient_id,
        bundle,
        pathway,
        referral,
        tuple(notes),
    )


# --- cards --------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def escape_markdown(text: str) -> str:
    """Text shown literally in GitHub-flavoured markdown (a unit or value from a request cannot
    become a link or a heading on the card)."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    # GFM's autolink extension links a bare `http://...` or `www.` even when escaped around it.
    return escaped.replace("://", ":\\/\\/").replace("www.", "www\\.")


def _card_id(key: str) -> str:
    """A card uuid derived from the request id: a retried hook gets the same cards."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:cancer-triage:card:{key}"))


def _source(
    model: Mapping[str, Any] | None, response: Mapping[str, Any] | None = None
) -> dict[str, str]:
    ref = (response or {}).get("model") or model or {}
    if not ref.get("name"):
        return {"label": "cancer-triage"}
    return {"label": f"cancer-triage model {ref['name']} version {ref.get('version', '?')}"}


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1].rstrip() + "…"


def cards_for_score(
    response: Mapping[str, Any],
    model: Mapping[str, Any],
    result_url: str | None,
    *,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """One card for a scored patient (a ScoreResponse as JSON; `model` as /v1/models lists it):
    band and probability in the summary, top drivers and warnings in the detail, a link to the
    result page when `result_url` is an absolute http(s) URL."""
    band, probability = str(response["band"]), float(response["probability"])
    outcome = outcome_of(model)
    frequency = frequency_text(probability, outcome)
    summary = _summary(
        f"{band.capitalize()} band: estimated probability of {outcome.name} "
        f"{percent_text(probability)} ({model.get('title') or response['model']['name']})"
    )
    lines = [
        f"**{band.capitalize()} band.** {escape_markdown(frequency[0].upper() + frequency[1:])}.",
        "",
        escape_markdown(str(response.get("recommendation", ""))),
    ]
    drivers = [d["text"] for d in response.get("drivers", [])[:TOP_DRIVERS]]
    if drivers:
        lines += [
            "",
            "**What moved the estimate most:**",
            *(f"- {escape_markdown(t)}" for t in drivers),
        ]
    warnings = [w["message"] for w in response.get("warnings", [])] + list(notes)
    if warnings:
        lines += ["", "**Warnings:**", *(f"- {escape_markdown(str(w))}" for w in warnings)]
    not_for = model.get("not_for") or []
    if not_for:
        lines += ["", "Not for: " + escape_markdown("; ".join(map(str, not_for))) + "."]
    card: dict[str, Any] = {
        "uuid": _card_id(str(response["request_id"])),
        "summary": summary,
        "detail": "\n".join(lines),
        "indicator": INDICATOR[band],
        "source": _source(model, response),
    }
    if result_url is not None and re.match(r"^https?://[^\s]+$", result_url):
        card["links"] = [
            {"label": "Full result and explanation", "url": result_url, "type": "absolute"}
        ]
    return {"cards": [card]}


def problem_for_refusal(error: Mapping[str, Any], service_id: str) -> HookProblem:
    """A scoring refusal (the service's error body: code, message, issues) as a card problem:
    missing inputs, a patient the model is not for, or results that could not be read. Its
    warnings (e.g. results ignored as too old) are kept: they say why an input is missing."""
    given = [i for i in error.get("issues", []) if isinstance(i, Mapping)]
    issues = tuple(
        Issue(
            "warning" if i.get("severity") == "warning" else "error",
            str(i.get("code", "")),
            str(i.get("field", "")),
            str(i.get("message", "")),
        )
        for i in given
    )
    codes = {i.code for i in issues if i.severity == "error"}
    message = str(error.get("message", "the record cannot be scored"))
    if codes & MISSING_DATA:
        missing = tuple(i.message for i in issues if i.code in MISSING_DATA)
        return HookProblem(200, "missing_data", message, service_id, issues, missing)
    if codes and codes <= NOT_FOR_PATIENT:
        return HookProblem(200, "not_for_patient", message, service_id, issues)
    return HookProblem(200, "unreadable_results", message, service_id, issues)


def _problem_indicator(problem: HookProblem) -> str:
    if problem.code in ("no_patient", "no_observations", "missing_data"):
        return "warning" if problem.service_id == ORDER_SIGN else "info"
    return "info" if problem.code == "not_for_patient" else "warning"


def cards_for_problem(
    problem: HookProblem, model: Mapping[str, Any] | None = None, *, key: str | None = None
) -> dict[str, Any]:
    """The answer to a hook that was not scored (status 200 problems): one card saying what is
    missing or why the model does not apply; no card for an order-sign without a referral.
    `key` (the request id) makes the card's uuid stable across retries."""
    if problem.code == "no_referral":
        return {"cards": []}
    if problem.code == "not_for_patient":
        summary = "Cancer triage score not shown: the model is not for this patient"
    elif problem.code == "unreadable_results":
        summary = "Cancer triage score not available: some results could not be read"
    else:
        summary = "Cancer triage score not available: " + (
            "; ".join(problem.missing) or "data missing"
        )
    lines = [escape_markdown(problem.message[:500])]
    details = list(problem.missing) if problem.code != "missing_data" else []
    details += [i.message for i in problem.issues if i.message not in details]
    if details:
        lines += ["", *(f"- {escape_markdown(d[:300])}" for d in details[:20])]
    if problem.code in ("no_patient", "no_observations", "missing_data"):
        lines += ["", "The score needs age, sex and the model's required blood tests."]
    return {
        "cards": [
            {
                "uuid": _card_id(f"{key or uuid.uuid4().hex}:{problem.code}"),
                "summary": _summary(summary),
                "detail": "\n".join(lines),
                "indicator": _problem_indicator(problem),
                "source": _source(model),
            }
        ]
    }
