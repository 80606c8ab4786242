"""What a reviewer sees, in a real headless browser (Debian's chromium; `tests.browser`): the
evaluation report of a logged run, the replay report of that version on its cohort, and the run's
page in the MLflow UI served by a real `mlflow server`. Each is checked as a reader would check it
(title, header facts, figures drawn, nothing cut off at the right edge, no network) and kept as a
screenshot in TRIAGE_TEST_ARTIFACT_DIR (CI keeps the folder).

TRIAGE_SCREENSHOT_README=1 also writes the README's picture, docs/images/evaluation-report.png
(the top of the evaluation report)."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from serving.server import free_port, wait_until_ok
from tests.browser import artifact, chromium, offline_page
from training.fit.train import TrainResult
from training.registry.runs import LoggedRun, log_training
from training.registry.store import Tracking
from training.replay.options import ReplayOptions
from training.replay.outputs import REPORT_FILE, ReplayResult
from training.replay.run import replay

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README_IMAGE = ROOT / "docs" / "images" / "evaluation-report.png"
README_ENV = "TRIAGE_SCREENSHOT_README"
WIDTH = 1200  # a laptop window: the reports must fit it without sideways scrolling
README_HEIGHT = 1300  # the README shows the report's top: title, facts, key findings, card...
README_MARGIN = 16  # white pixels below the cut
README_MAX_BYTES = 300_000
N_BOOT = 20
SERVER_START_SECONDS = 180  # the first start migrates the SQLite schema; CI machines are slow
UI_RENDER_MS = 120_000
CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag naming a dataset input's role in the run


@dataclass(frozen=True)
class Logged:
    """The session's any_cancer model logged and registered (version 1) in a SQLite store."""

    result: TrainResult
    tracking: Tracking
    run: LoggedRun


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def logged(any_cancer: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    tracking = Tracking(tmp_path_factory.mktemp("var"))
    return Logged(any_cancer, tracking, log_training(any_cancer, tracking))


@pytest.fixture(scope="module")
def replayed(
    logged: Logged, cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> ReplayResult:
    out = tmp_path_factory.mktemp("replay")
    reference = f"{logged.result.spec.name}/{logged.run.version}"
    return replay(
        logged.tracking, [reference], ReplayOptions(cohorts["referrals"], out, n_boot=N_BOOT)
    )


# --- the HTML reports -----------------------------------------------------------------------------


def header_facts(tab: Any) -> dict[str, str]:
    """The report header's `name: value` facts as shown."""
    shown = tab.locator("header ul.facts li").all_inner_texts()
    return dict(text.split(": ", 1) for text in shown)


def check_report_page(tab: Any, requests: list[str], title: str, facts: dict[str, str]) -> None:
    """What every report must give a reader in a 1200 px window."""
    assert tab.title() == title
    assert tab.locator("h1").inner_text() == title, "the title heads the page"
    shown = header_facts(tab)
    for name, value in facts.items():
        assert shown.get(name) == value, f"header fact {name!r}: {shown}"
    images = tab.evaluate(
        "[...document.images].map(i => ({alt: i.alt, complete: i.complete,"
        " width: i.naturalWidth, shown: i.getBoundingClientRect().width}))"
    )
    assert len(images) >= 4, "ROC, calibration, decision curve and subgroup figures at least"
    for image in images:
        assert image["complete"] and image["width"] > 0, f"a figure not decoded: {image}"
        assert 200 <= image["shown"] <= WIDTH, f"a figure drawn at an unreadable size: {image}"
    missing = tab.evaluate(
        "[...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))"
        ".filter(h => !document.getElementById(h.slice(1)))"
    )
    assert missing == [], f"contents links to no section: {missing}"
    wide = tab.evaluate(
        f"[...document.querySelectorAll('table, img, pre')]"
        f".filter(e => e.getBoundingClientRect().right > {WIDTH})"
        ".map(e => (e.closest('section') || document.body).id + ': '"
        " + e.textContent.slice(0, 60))"
    )
    assert wide == [], f"cut off at the right edge of a {WIDTH} px window: {wide}"
    assert tab.evaluate("document.documentElement.scrollWidth") <= WIDTH, "no sideways scrolling"
    external = [u for u in requests if not u.startswith(("about:", "data:"))]
    assert external == [], f"the report fetched something: {external}"


def screenshot(tab: Any, name: str) -> Path:
    """A full-page screenshot kept as a test artifact, checked to be the whole page."""
    path = artifact(name)
    tab.screenshot(path=str(path), full_page=True)
    height = tab.evaluate("document.documentElement.scrollHeight")
    with Image.open(path) as image:
        assert image.size == (WIDTH, height), "the whole page, at the window's width"
    assert path.stat().st_size > 50_000, "a page with figures, not a blank"
    return path


def readme_height(tab: Any) -> int:
    """Where the README's picture ends: below the last model-card row that ends within
    README_HEIGHT pixels (never through a line of text)."""
    bottoms = tab.evaluate(
        "[...document.querySelectorAll('header, section#card dd')]"
        ".map(e => e.getBoundingClientRect().bottom + window.scrollY)"
    )
    return math.ceil(max(b for b in bottoms if b <= README_HEIGHT)) + 1  # rows are 3 px apart


def readme_image(full: Path, height: int) -> Path:
    """The top `height` pixels of the report on a white margin, as a 256-colour PNG (the page is
    mostly flat colours and text, so it stays sharp at a tenth of the size)."""
    top = artifact("evaluation-report-top.png")
    picture = Image.new("RGB", (WIDTH, height + README_MARGIN), "white")
    with Image.open(full) as image:
        picture.paste(image.convert("RGB").crop((0, 0, WIDTH, height)))
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(top, optimize=True)
    return top


def test_the_evaluation_report_in_a_1200_px_window(logged: Logged, browser: Any) -> None:
    result, run = logged.result, logged.run
    tab, requests = offline_page(browser, run.report, WIDTH)
    evaluation = result.evaluation
    check_report_page(
        tab,
        requests,
        f"{result.spec.title}: evaluation report",
        {
            "model": result.spec.name,
            "version": str(run.version),
            "run": run.run_id,
            "spec digest": result.spec.digest,
            "evaluation scale": str(evaluation["scale"]),
        },
    )
    headline = tab.locator("section#headline").inner_text()
    auc = evaluation["auc"]
    for value in (auc["estimate"], auc["low"], auc["high"]):
        assert f"{value:.3f}" in headline, f"AUC {value:.3f} as the reader sees it: {headline}"
    assert f"{evaluation['n']:,}" in headline, "the evaluation rows, with thousands separators"
    assert tab.locator("section#subgroups img").count() == 1, "the forest plot"
    full = screenshot(tab, "evaluation-report.png")
    height = readme_height(tab)
    assert height > 600, "at least the header, the key findings and the start of the card"
    top = readme_image(full, height)
    with Image.open(top) as image:
        assert image.size == (WIDTH, height + README_MARGIN)
    assert top.stat().st_size < README_MAX_BYTES, "small enough for the README"
    if os.environ.get(README_ENV):
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        README_IMAGE.write_bytes(top.read_bytes())
    tab.close()


def test_the_replay_report_in_a_1200_px_window(
    logged: Logged, replayed: ReplayResult, browser: Any
) -> None:
    spec, run = logged.result.spec, logged.run
    html = (replayed.out / REPORT_FILE).read_text()
    tab, requests = offline_page(browser, html, WIDTH)
    cohort = Path(replayed.manifest["cohort"]["path"]).name
    check_report_page(
        tab,
        requests,
        f"Replay of {spec.title} v{run.version} on {cohort}",
        {"model": spec.name, "version": str(run.version), "run": run.run_id},
    )
    pinned = replayed.manifest["models"][0]["pinned"]
    text = tab.locator("body").inner_text()
    assert pinned["booster_sha256"][:16] in text, "the pinned booster, as the manifest has it"
    assert "What would have happened, by year" in text
    screenshot(tab, "replay-report.png")
    tab.close()


# --- the MLflow UI --------------------------------------------------------------------------------

# The UI keeps its choices in the browser's local storage: open on the "Model training" view
# (not the GenAI one) with the assistant panel folded, as a data scientist would have it.
UI_SETTINGS = """
for (const [key, value] of Object.entries({
  "mlflow.workflowType_v1": '"machine_learning"',
  "mlflow.assistant.panelOpen_v1": "false",
  "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
})) localStorage.setItem(key, value);
"""


@pytest.fixture(scope="module")
def mlflow_ui(logged: Logged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (from this virtual environment) on the run's SQLite store, on
    127.0.0.1; its URL. Stopped (its process group, by id) when the module's tests are done."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = Path(os.environ["TRIAGE_TEST_LOG_DIR"]) / "mlflow-ui-server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")), "server",
                "--backend-store-uri", logged.tracking.uri,
                "--artifacts-destination", str(folder / "artifacts"),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the uvicorn worker stops with it
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ok(f"{url}/health", server, time.monotonic(), SERVER_START_SECONDS, 0.25)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"mlflow server: {error}\n{log.read_text()[-3000:]}")
        yield url
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End the process group led by `process` (SIGTERM, then SIGKILL after 15 s)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


def test_the_run_page_in_the_mlflow_ui(logged: Logged, mlflow_ui: str, browser: Any) -> None:
    client = logged.tracking.client
    run = client.get_run(logged.run.run_id)
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    context.add_init_script(UI_SETTINGS)
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    context.route(
        re.compile(r"^(?!" + re.escape(mlflow_ui) + r"[/?#]|data:|blob:)"),
        lambda route: route.abort(),
    )
    tab = context.new_page()
    tab.goto(f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    tab.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=UI_RENDER_MS)
    metrics = tab.get_by_text(re.compile(r"^Metrics \(\d+\)$"))
    metrics.wait_for(timeout=UI_RENDER_MS)
    assert metrics.inner_text() == f"Metrics ({len(run.data.metrics)})", "every metric listed"
    tab.get_by_placeholder("Search metrics").fill(key := min(run.data.metrics))
    tab.get_by_role("link", name=key, exact=True).wait_for(timeout=UI_RENDER_MS)
    tab.get_by_placeholder("Search metrics").fill("")
    assert tab.get_by_text(run.info.run_id, exact=True).count() >= 1, "the run id is shown"
    inputs = run.inputs.dataset_inputs if run.inputs else []
    evaluate = [
        entry.dataset
        for entry in inputs
        if any(t.key == CONTEXT_TAG and t.value == "evaluate" for t in entry.tags)
    ]
    logged = [(i.dataset.name, [t.value for t in i.tags]) for i in inputs]
    assert evaluate, f"the run logs no dataset input with context evaluate: {logged}"
    check_dataset_listed(tab, f"{evaluate[0].name} ({evaluate[0].digest})", "evaluate")
    tab.wait_for_timeout(1000)  # the last panels settle (parameters, tags)
    screenshot_ui(tab)
    external = [u for u in requests if not u.startswith((mlflow_ui, "data:", "blob:"))]
    assert external == [], f"the MLflow UI reached outside the machine: {external}"
    context.close()


def check_dataset_listed(tab: Any, label: str, context: str) -> None:
    """The run page's Datasets area lists `label` (name and digest) tagged with its context; the
    UI shows the first input and folds the others behind a `+N` tag, opened here."""
    area = tab.locator("h4", has_text=re.compile(r"^Datasets$")).locator("..")
    area.wait_for(timeout=UI_RENDER_MS)
    folded = area.get_by_text(re.compile(r"^\+\d+$"))
    if folded.count():
        folded.click()
    entry = tab.get_by_role("button").filter(has_text=label)
    entry.wait_for(timeout=UI_RENDER_MS)
    assert entry.get_by_role("status").inner_text().lower() == context, entry.inner_text()


def screenshot_ui(tab: Any) -> None:
    path = artifact("mlflow-run.png")
    tab.screenshot(path=str(path), full_page=True)
    with Image.open(path) as image:
        assert image.width == 1400 and image.height >= 1300
    assert path.stat().st_size > 30_000, "a page, not a blank"
