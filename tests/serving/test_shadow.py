"""Shadow (silent-run) models in the service: a second lower_gi version, released as
`lower_gi@challenger`, scores every record lower_gi's champion answers, into `audit_shadow` only.

The release is a real one (a registry and a BentoML store of its own, `release_champions` with
`extra`); the service runs in-process (TestClient), reading that release."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bentoml
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from serving.audit import AuditStore
from serving.audit_replay import predictors_by_version, replay_rows
from serving.audit_schema import SHADOW
from serving.examples import EXAMPLE_PATIENT, fhir_bundle
from serving.middleware import current_config
from serving.release import BUNDLE_NAME, RELEASE_FILE, load_release
from serving.server import free_port
from serving.triage import _metrics
from tests.serving.conftest import Released
from tests.serving.test_ehr import _hook, _prefetch, _referral
from tests.small_specs import small_cohort_spec
from training.fit.train import TrainOptions, train_model
from training.registry.promote import promote
from training.registry.runs import log_training
from training.registry.store import Tracking

SHADOW_REF = "lower_gi@challenger"
HMAC = "shadow-test-hmac-key"
RELEASE = """
import sys
from serving.release import release_champions
release_champions(sys.argv[1], extra=[sys.argv[2]])
"""


@pytest.fixture(scope="module")
def shadow_release(released: Released, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of its own: any_cancer and lower_gi champions (v1, the session's models) and a
    second lower_gi, trained with another seed (another early-stopping slice: another model),
    registered as v2 (`challenger`) and released with `--pin lower_gi@challenger`."""
    root = tmp_path_factory.mktemp("shadow")
    tracking = Tracking(root / "var")
    for name in ("any_cancer", "lower_gi"):
        log_training(released.results[name], tracking)
        promote(tracking, released.results[name].spec, "1", override_reason="test fixture")
    cohort = released.tracking.workdir.parent / "cohort"
    other = train_model(small_cohort_spec("lower_gi"), TrainOptions(cohort, n_boot=10, seed=99))
    assert str(log_training(other, tracking).version) == "2"  # registered as challenger
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    done = subprocess.run(
        [sys.executable, "-c", RELEASE, tracking.uri, SHADOW_REF],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (manifest,) = (root / "bentoml" / "models" / BUNDLE_NAME).glob(f"*/{RELEASE_FILE}")
    return manifest.parent


@pytest.fixture
def serve(
    asgi_app: Any, shadow_release: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Any]:
    """`serve(home, shadow=...)`: a context manager giving a TestClient of the service over the
    shadow release, with its own work folder (audit store) and `TRIAGE_SHADOW`."""
    real_get = bentoml.models.get

    def get(tag: str) -> Any:
        if str(tag).startswith(BUNDLE_NAME):
            return SimpleNamespace(path=str(shadow_release))
        return real_get(tag)

    monkeypatch.setattr(bentoml.models, "get", get)
    monkeypatch.setenv("TRIAGE_HMAC_KEY", HMAC)

    @contextmanager
    def client(home: str, shadow: str | None = SHADOW_REF) -> Iterator[TestClient]:
        monkeypatch.setenv("TRIAGE_HOME", str(tmp_path / home))
        if shadow is None:
            monkeypatch.delenv("TRIAGE_SHADOW", raising=False)
        else:
            monkeypatch.setenv("TRIAGE_SHADOW", shadow)
        current_config.cache_clear()
        try:
            with TestClient(asgi_app) as test_client:
                yield test_client
        finally:
            current_config.cache_clear()

    return client


def store_of(tmp_path: Path, home: str) -> AuditStore:
    return AuditStore(f"sqlite:///{tmp_path / home / 'serving' / 'audit.db'}", HMAC)


def shadow_rows(store: AuditStore) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        found = connection.execute(sa.select(SHADOW).order_by(SHADOW.c.trail_seq))
        return [dict(row._mapping) for row in found]


def shadow_counts() -> dict[str, float]:
    """`triage_shadow_scores` of lower_gi v2 by band, as this process counts them."""
    counter = _metrics()["shadow_scores"]
    return {
        band: counter.labels(model="lower_gi", version="2", band=band)._value.get()
        for band in ("red", "amber", "green", "refused")
    }


def patient(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_PATIENT)
    data.update(changes)
    return data


def anaemic(n: int) -> dict[str, Any]:
    """The example patient with another haemoglobin and CRP (the bands vary)."""
    data = patient(age=55 + n, patient_reference=f"shadow-patient-{n}")
    data["analytes"]["haemoglobin"] = {"value": 8.0 + 0.9 * n, "unit": "g/dL"}
    data["analytes"]["crp"] = {"value": 3 + 17 * n, "unit": "mg/L"}
    return data


BATCH = [
    anaemic(0),
    anaemic(1),
    patient(age=10),  # refused by the predictors' own eligibility: shadow rows (refused)
    anaemic(2),
    {"age": "old"},  # schema failure: no model reached, no shadow row
    patient(model="no_such_model"),  # routing failure: no shadow row
    patient(model="lower_gi/1"),  # pinned by the client: no shadow row
    anaemic(3),
    patient(model="any_cancer"),  # another model's champion: it has no shadow
]


def post_all(client: TestClient) -> list[tuple[str, bytes]]:
    """The same requests, with fixed ids, on every endpoint; each answer's bytes."""
    answers = []
    for n, body in enumerate([EXAMPLE_PATIENT, anaemic(4), patient(age=10)]):
        answer = client.post("/v1/score", json=body, headers={"x-request-id": f"single-{n}"})
        answers.append((f"single-{n}", answer.content))
    batch = client.post("/v1/score/batch", json={"patients": BATCH},
                        headers={"x-request-id": "batch-1"})  # fmt: skip
    fhir = client.post("/v1/fhir/score?model=lower_gi", json=fhir_bundle(),
                       headers={"x-request-id": "fhir-1"})  # fmt: skip
    hook = _hook(_prefetch()) | {
        "hook": "order-sign",
        "hookInstance": "0b7c9e4e-4a3f-4d8e-9f0a-1c2b3d4e5f60",
    }
    hook["context"]["draftOrders"] = _referral("lower_gi")
    cds = client.post("/v1/cds-services/cancer-triage-order-sign", json=hook)
    fhir_json = fhir.json()
    fhir_json.pop("occurrenceDateTime")  # the time it was answered
    return [*answers, ("batch-1", batch.content), ("fhir-1", json.dumps(fhir_json).encode()),
            (hook["hookInstance"], cds.content)]  # fmt: skip


def test_shadows_change_no_answer_and_audit_what_the_shadow_version_gives(
    serve: Any, shadow_release: Path, tmp_path: Path
) -> None:
    with serve("plain", shadow=None) as client:
        plain = post_all(client)
    with serve("shadowed") as client:
        assert client.get("/readyz").status_code == 200
        counted = shadow_counts()
        shadowed = post_all(client)
        counted = {band: n - counted.get(band, 0) for band, n in shadow_counts().items()}
    assert shadowed == plain, "the response bodies are byte for byte the same"
    assert all(json.loads(body).get("band") for _, body in plain[:2]), "scored"
    assert shadow_rows(store_of(tmp_path, "plain")) == []
    release = load_release(shadow_release)  # an independent load of the same release
    shadow = release.resolve(SHADOW_REF)
    assert shadow is not None and shadow.version == "2" and release["lower_gi"].version == "1"
    store = store_of(tmp_path, "shadowed")
    trail = {row["seq"]: row for row in store.rows()}
    rows = shadow_rows(store)
    expected = [  # lower_gi's champion scored it, or its predictor refused it (age 10)
        row for row in trail.values()
        if row["model_name"] == "lower_gi" and json.loads(row["request"])["model"] != "lower_gi/1"
        and (row["outcome"] == "scored" or json.loads(row["request"])["record"]["age"] == 10)
    ]  # fmt: skip
    assert sorted(r["trail_seq"] for r in rows) == sorted(r["seq"] for r in expected)
    endpoints = {trail[r["trail_seq"]]["endpoint"] for r in rows}
    assert endpoints == {"score", "score/batch", "fhir/score", "cds/order-sign"}
    assert len([r for r in rows if trail[r["trail_seq"]]["endpoint"] == "score/batch"]) == 5
    differs = 0
    for row in rows:
        served = trail[row["trail_seq"]]
        request = json.loads(served["request"])
        assert request["shadows"] == ["lower_gi/2"], "the served row lists its shadow"
        assert (row["model_name"], row["model_version"], row["run_id"], row["shadow"]) == (
            "lower_gi", "2", shadow.run_id, True)  # fmt: skip
        score = shadow.predictor.score(request["record"], pathway=request["pathway"])
        assert row["outcome"] == ("scored" if score.eligible else "refused")
        assert row["outcome"] == served["outcome"], "the same model spec: the same eligibility"
        if not score.eligible:
            assert row["probability"] is row["band"] is row["contributions"] is None
            assert json.loads(row["reason_codes"])[0] == "ineligible"
            continue
        assert (row["probability"], row["band"], row["base"]) == (
            score.probability, score.band, score.base)  # fmt: skip
        assert json.loads(row["contributions"]) == score.contributions
        assert json.loads(row["inputs"]) == score.values
        assert json.loads(row["warnings"]) == [i.code for i in score.issues]
        differs += row["probability"] != served["probability"]
    assert differs == len([r for r in rows if r["outcome"] == "scored"]), "another model"
    assert sum(r["outcome"] == "refused" for r in rows) == 2  # single-2 and the batch's age 10
    report = store.verify()
    assert report.ok and report.shadows == len(rows), report.describe()
    assert f"{len(rows):,} shadow rows" in report.describe()
    predictors = predictors_by_version(release)
    replayed = replay_rows(store.rows(), predictors) + replay_rows(
        store.shadow_rows(), predictors, shadow=True
    )
    scored = [r for r in [*trail.values(), *rows] if r["outcome"] == "scored"]
    assert replayed.ok and replayed.checked == len(scored), replayed
    by_band = Counter(r["band"] or "refused" for r in rows)
    assert {b: n for b, n in counted.items() if n} == by_band, "triage_shadow_scores"
    edited = next(r for r in rows if r["outcome"] == "scored")
    with store.engine.begin() as connection:
        connection.execute(sa.update(SHADOW).where(SHADOW.c.trail_seq == edited["trail_seq"])
                           .values(probability=edited["probability"] / 2))  # fmt: skip
    replayed = replay_rows(store.shadow_rows(), predictors, shadow=True)
    assert [(m.seq, m.shadow, m.output) for m in replayed.mismatches] == [
        (edited["trail_seq"], "lower_gi/2", "probability")]  # fmt: skip
    assert store.verify().problem == "shadow_changed"
    store.close()


def test_pinned_requests_and_replayed_ids_add_no_shadow_rows(serve: Any, tmp_path: Path) -> None:
    with serve("pins", shadow="lower_gi/2") as client:  # NAME/VERSION names a shadow too
        for n, model in enumerate(["lower_gi/1", "lower_gi@champion", SHADOW_REF, "lower_gi/2"]):
            answer = client.post("/v1/score", json=patient(model=model),
                                 headers={"x-request-id": f"pinned-{n}"})  # fmt: skip
            assert answer.status_code == 200, answer.text
        first = client.post("/v1/score", json=EXAMPLE_PATIENT, headers={"x-request-id": "once"})
        again = client.post("/v1/score", json=EXAMPLE_PATIENT, headers={"x-request-id": "once"})
    assert again.content == first.content, "a retry gets the stored answer"
    store = store_of(tmp_path, "pins")
    served = {row["request_id"]: row["model_version"] for row in store.rows()}
    assert served == {"pinned-0": "1", "pinned-1": "1", "pinned-2": "2", "pinned-3": "2",
                      "once": "1"}  # fmt: skip
    rows = shadow_rows(store)
    assert [(r["trail_seq"], r["model_version"]) for r in rows] == [(5, "2")], (
        "only the champion-answered request, once"
    )
    assert store.verify().ok
    store.close()


@pytest.mark.parametrize(
    ("shadow", "why"),
    [
        ("lower_gi@staging", "is not in the release; release it with `triage release --pin "
         "lower_gi@staging`"),
        ("lower_gi/7", "is not in the release; release it with `triage release --pin lower_gi/7`"),
        ("lower_gi/1", "is lower_gi's champion (v1) itself"),
        ("myeloma@challenger", "no champion of myeloma is released"),
    ],
)  # fmt: skip
def test_a_shadow_the_release_cannot_serve_keeps_the_server_not_ready(
    serve: Any, shadow: str, why: str
) -> None:
    with serve("unready", shadow=f"{SHADOW_REF},{shadow}") as client:
        assert client.get("/readyz").status_code == 503
        answer = client.post("/v1/score", json=EXAMPLE_PATIENT)
        models = client.get("/v1/models")
    assert answer.status_code == models.status_code == 503
    message = models.json()["error"]["message"]
    assert f"TRIAGE_SHADOW {shadow!r}" in message and why in message, message


def test_serve_refuses_to_start_with_a_shadow_the_release_lacks(
    shadow_release: Path, tmp_path: Path
) -> None:
    bentoml_home = shadow_release.parents[2]  # {home}/models/{name}/{version}
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "TRIAGE_HOME": str(tmp_path),
           "TRIAGE_SHADOW": "lower_gi@staging", "COLUMNS": "200"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "serve", "--port", str(free_port()),
         "--workdir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = " ".join(done.stdout.split())
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refusing to serve: TRIAGE_SHADOW 'lower_gi@staging' is not in the release" in output
    assert "`triage release --pin lower_gi@staging`" in output


def test_a_shadow_that_raises_never_fails_the_request(
    serve: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import serving.release

    real_load = serving.release.load_release

    def load_with_a_broken_shadow(folder: Path, **options: Any) -> Any:
        release = real_load(folder, **options)
        broken = release.resolve(SHADOW_REF)
        assert broken is not None

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the shadow's booster is broken")

        monkeypatch.setattr(broken.predictor, "score", fail)
        return release

    monkeypatch.setattr(serving.release, "load_release", load_with_a_broken_shadow)
    with serve("plain-2", shadow=None) as client:
        plain = client.post("/v1/score", json=EXAMPLE_PATIENT, headers={"x-request-id": "r-1"})
    with serve("broken") as client:
        answer = client.post("/v1/score", json=EXAMPLE_PATIENT, headers={"x-request-id": "r-1"})
        batch = client.post("/v1/score/batch", json={"patients": [anaemic(0), anaemic(1)]})
    assert answer.status_code == 200 and answer.content == plain.content
    assert batch.status_code == 200
    assert [r["status"] for r in batch.json()["results"]] == ["scored", "scored"]
    store = store_of(tmp_path, "broken")
    rows = shadow_rows(store)
    assert len(rows) == 3 and {r["outcome"] for r in rows} == {"refused"}
    assert {r["reason_codes"] for r in rows} == {'["shadow_error"]'}
    assert all(r["probability"] is None and r["model_version"] == "2" for r in rows)
    assert store.verify().ok
    store.close()
