"""A real headless browser for the tests that look at pages: Debian's chromium (.ci/run installs
it), driven by Playwright, whose own browser download cannot reach its servers here. In CI a
missing browser fails the test; elsewhere it is skipped with the command that installs one."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Browser]:
    """A launched headless chromium, closed on exit."""
    missing = importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists()
    if missing and os.environ.get("CI"):
        pytest.fail("CI must provide chromium and playwright (.ci/run installs chromium)")
    if missing:
        pytest.skip("no chromium or playwright here (apt-get install chromium; CI does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def artifact(name: str) -> Path:
    """Where a test keeps a file for people to look at: TRIAGE_TEST_ARTIFACT_DIR (CI keeps it),
    else the run's temporary log folder."""
    folder = Path(os.environ.get("TRIAGE_TEST_ARTIFACT_DIR") or os.environ["TRIAGE_TEST_LOG_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def offline_page(browser: Browser, html: str, width: int) -> tuple[Page, list[str]]:
    """A tab showing `html` that may fetch nothing: every request is recorded (in the list
    returned) and aborted, so a page that needs the network shows it in the list and on screen."""
    tab = browser.new_page(viewport={"width": width, "height": 900})
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.route("**/*", lambda route: route.abort())
    tab.set_content(html, wait_until="load")
    return tab, requests
