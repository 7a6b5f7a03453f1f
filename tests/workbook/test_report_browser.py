"""The report in a real browser, offline: every section and every image renders.

Debian's Chromium (``support.needs("chromium")``) driven by playwright, with every request that is not
for a file:// URL aborted and recorded: a self-contained report makes none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import support
from support import CHROMIUM_ARGS, needs

from churnlab import runner

ARGS = CHROMIUM_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workbook")]


@pytest.fixture(scope="module")
def page_report(tmp_path_factory):
    """The default run's report, copied alone into an empty folder (nothing beside it)."""
    run = support.default_run(tmp_path_factory)
    assert run.returncode == 0, run.stdout + run.stderr
    folder = tmp_path_factory.mktemp("alone")
    shutil.copy(run.report, folder / "workbook.html")
    return folder / "workbook.html"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = needs("chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_offline(browser, path: Path):
    """A new page showing ``path``; returns (page, the non-file requests it attempted)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    attempted: list[str] = []

    def guard(route):
        url = route.request.url
        if url.startswith("file://") or url.startswith("data:"):
            route.continue_()
        else:
            attempted.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.goto(path.as_uri(), wait_until="load")
    return page, attempted


def test_report_renders_every_section_and_image_offline(browser, page_report):
    page, attempted = open_offline(browser, page_report)
    try:
        assert page.title() == "churnlab workbook"
        assert page.locator("#summary h1").inner_text() == "churnlab workbook"
        # the page opens with the student's work: name, four task verdicts, six questions
        opening = "() => document.querySelector('main').firstElementChild.id"
        assert page.evaluate(opening) == "your-work"
        work = page.locator("#your-work")
        assert work.locator("h1").inner_text() == "Your work" and work.is_visible()
        assert work.locator("tbody tr").count() == 4
        assert work.locator(".wb-question").count() == 6
        for name in runner.NOTEBOOKS:
            section = page.locator(f"#nb-{name}")
            assert section.count() == 1, name
            assert section.locator("h1").first.is_visible(), name
            assert section.locator("h1").first.inner_text().startswith(name[:2]), name
        images = page.locator("img")
        count = images.count()
        assert count >= 8  # ROC and confusion matrix x2, gate checks x2, timeline, drift
        page.evaluate(
            "() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))"
        )
        widths = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
        assert len(widths) == count and all(w > 0 for w in widths), widths
        # code is folded: a <details> per code cell, closed
        assert page.locator("details.wb-code[open]").count() == 0
        assert page.locator("details.wb-code").count() > 0
        assert page.locator("details.wb-code .jp-InputArea").first.is_hidden()
        # the summary tells the story from the registry
        summary = page.locator("#summary").inner_text()
        for words in ("Stages", "Versions and gate verdicts", "Stage history", "/health answers"):
            assert words in summary
        assert '"stage": "production"' in summary and '"stage": "staging"' in summary
        assert attempted == [], f"the report tried to reach the network: {attempted}"
    finally:
        page.context.close()


def test_the_guard_does_record_a_network_load(browser, tmp_path):
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<html><body><img src="https://example.invalid/x.png"></body></html>')
    page, attempted = open_offline(browser, leaky)
    page.context.close()
    assert attempted == ["https://example.invalid/x.png"]
