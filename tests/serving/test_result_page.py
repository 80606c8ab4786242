"""The result page: self-contained, accessible HTML of one stored score, checked as text and in a
real headless browser (Debian's chromium driven by Playwright; .ci/run installs it)."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

from serving.result_page import (
    BAND_COLOURS,
    DECREASE,
    INCREASE,
    INK,
    PAGE,
    render_result,
    render_stored,
)
from tests.browser import artifact, chromium
from tests.serving.test_cds_hooks import CONTRIBUTIONS, described, score_response

RECEIVED = "2026-03-02T10:15:00+00:00"


def page(**changes: Any) -> str:
    return render_result(
        {**score_response(), **changes}, described("lower_gi"), received_at=RECEIVED
    )


def bars(html: str) -> list[dict[str, Any]]:
    """The waterfall's steps as drawn: kind, start and end (log-odds) of each shape."""
    return [
        {"kind": kind, "start": float(start), "end": float(end)}
        for kind, start, end in re.findall(
            r'class="step" data-kind="(\w+)" data-start="([^"]+)" data-end="([^"]+)"', html
        )
    ]


# --- structure ------------------------------------------------------------------------------------


def test_the_page_is_self_contained_with_no_script_and_no_external_address() -> None:
    html = page(warnings=[])  # (the fixture's warnings quote a URL as text: see the escaping test)
    assert not re.search(r"https?://", html), "no URL of any host (no asset, no link out)"
    assert not re.search(r"\s(href|src|srcset|action|poster)=", page()), "nothing to follow"
    assert "<script" not in html.lower() and " src=" not in html, "no scripts, no fetched media"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html, "the browser is told to fetch nothing"
    assert '<html lang="en-GB">' in html and html.count("<h1>") == 1
    assert html.count("<h2") == 4, "Result, drivers, warnings, model: a heading each"


def test_the_page_shows_band_in_words_probability_and_its_meaning() -> None:
    html = page()
    assert "Amber band</span>" in html and "intermediate estimated risk" in html
    assert "<strong>5.7%</strong>" in html
    # 0.05676 x 1000 = 56.8 -> about 57; lower_gi: cancer within 365 days = 12 months.
    expected = "about 57 in 1,000 patients like this are diagnosed with cancer within 12 months"
    assert expected in html
    assert "green below 0.50%, red at or above 10.3%" in html, "the thresholds, in words"


def test_the_waterfall_adds_up_from_the_base_to_the_final_log_odds() -> None:
    response = score_response()
    drawn = bars(page())
    drivers = response["drivers"]
    assert len(drawn) == 1 + len(drivers) + 1 + 1, "base, each driver, the others, final"
    assert drawn[0]["kind"] == "base" and drawn[0]["end"] == pytest.approx(response["base"])
    for before, after in itertools.pairwise(drawn):
        assert after["start"] == pytest.approx(before["end"], abs=1e-12), "each step continues"
    for step, driver in zip(drawn[1:], drivers, strict=False):
        assert step["end"] - step["start"] == pytest.approx(driver["contribution"])
        assert step["kind"] == ("increase" if driver["contribution"] > 0 else "decrease")
    others = drawn[-2]["end"] - drawn[-2]["start"]
    assert others == pytest.approx(CONTRIBUTIONS["sex"] + CONTRIBUTIONS["mcv"], abs=1e-9), (
        "the others step is the sum of the features not listed as drivers"
    )
    assert drawn[-1]["end"] == pytest.approx(
        math.log(0.05676168215169888 / (1 - 0.05676168215169888))
    )
    assert "Other 2 features" in page()


def test_the_drivers_and_warnings_are_listed_and_escaped() -> None:
    hostile = "<script>alert(1)</script> & <b>bold</b>"
    response = score_response()
    response["drivers"][0]["text"] = hostile
    html = render_result(response, described("lower_gi"), received_at=RECEIVED)
    assert hostile not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in html
    listed = re.search(r'<ol class="drivers">(.*?)</ol>', html, re.S)
    assert listed and listed.group(1).count("<li>") == len(response["drivers"])
    warnings = re.search(r'<ul class="warnings">(.*?)</ul>', html, re.S)
    assert warnings and warnings.group(1).count("<li>") == 2
    assert "Haemoglobin converted from g/dL to g/L (x10)" in warnings.group(1)
    assert "<p>None.</p>" in page(warnings=[]), "no warnings: said so"


def test_the_model_section_gives_intended_use_and_every_not_for_item() -> None:
    model = described("lower_gi")
    html = page()
    assert "version 3" in html and model["title"] in html
    assert model["intended_use"].split(",")[0] in html
    for item in model["not_for"]:
        assert item.replace("'", "&#x27;") in html, item


def test_another_outcome_and_horizon_are_worded_from_the_model() -> None:
    html = render_result(score_response("red", 0.31), described("myeloma"), received_at=RECEIVED)
    assert (
        "about 310 in 1,000 patients like this are diagnosed with myeloma within 24 months" in html
    )
    green = render_result(score_response("green", 0.0004), {}, received_at=RECEIVED)
    assert "fewer than 1 in 1,000" in green and "0.04%" in green
    assert "gives no time horizon" in green, "a description without an outcome is said to lack it"


def test_the_stored_response_renders_with_its_own_model_version_only() -> None:
    stored = {**score_response(), "patient_reference": "NHS-943-476-5919"}
    html = render_stored(json.dumps(stored), [described("lower_gi")], received_at=RECEIVED)
    assert "NHS-943-476-5919" not in html, "nothing but the score's own fields is shown"
    assert described("lower_gi")["intended_use"][:40] in html
    replaced = {**described("lower_gi"), "version": "4"}
    html = render_stored(json.dumps(stored).encode(), [replaced], received_at=RECEIVED)
    assert "not available on this server" in html and "version 3" in html
    for garbage in ("[]", "{}", '{"band": "red"}'):
        with pytest.raises(ValueError, match="not a score response"):
            render_stored(garbage, [], received_at=RECEIVED)


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_colours_meet_wcag_contrast() -> None:
    assert contrast("#ffffff", "#000000") == pytest.approx(21), "the formula, on a known pair"
    for band, (background, text) in BAND_COLOURS.items():
        assert contrast(background, text) >= 4.5, f"{band} badge text (AA, normal text)"
    assert contrast(INK, PAGE) >= 7 and contrast("#4a4a4a", PAGE) >= 4.5
    for colour in (INCREASE, DECREASE):
        assert contrast(colour, PAGE) >= 3, "graphics against the page (AA, non-text)"


# --- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.mark.parametrize(("band", "probability"), [("amber", 0.05676168215169888), ("red", 0.2345)])
def test_the_page_renders_at_400_px_in_chromium_without_any_request(
    browser: Any, band: str, probability: float
) -> None:
    html = render_result(
        score_response(band, probability), described("lower_gi"), received_at=RECEIVED
    )
    tab = browser.new_page(viewport={"width": 400, "height": 900})
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.route("**/*", lambda route: route.abort())  # recorded above, never sent anywhere
    tab.set_content(html, wait_until="load")
    badge = tab.locator(".band")
    assert badge.is_visible() and badge.inner_text() == f"{band.capitalize()} band"
    text = tab.locator("main").inner_text()
    assert f"{100 * probability:.1f}%" in text and "What moved the estimate" in text
    chart = tab.get_by_role("img", name="How each result moved the estimate")
    assert chart.count() == 1, "the SVG has an accessible name from its <title>"
    box = chart.bounding_box()
    assert box and 300 <= box["width"] <= 400 and box["height"] > 100, box
    shapes = tab.locator("svg .step")
    assert shapes.count() == 7
    for index in range(shapes.count()):
        shape = shapes.nth(index).bounding_box()
        assert shape and shape["width"] > 0 and shape["height"] > 0, f"step {index} not drawn"
    assert tab.evaluate("document.documentElement.scrollWidth") <= 400, "no sideways scrolling"
    table = tab.locator("details table")
    assert not table.is_visible(), "the table is folded away..."
    tab.locator("details summary").click()
    assert table.is_visible() and table.locator("tbody tr").count() == 7, "...and opens"
    screenshot = artifact(f"result_page_{band}_400px.png")
    tab.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000, "a screenshot kept as a test artifact"
    tab.close()
    assert all(u.startswith(("about:", "data:")) for u in requests), f"network: {requests}"
