"""The page at `/` in a real headless Chromium, against a real backend process.

A person opens the page, sees which stage and version the server serves, checks health,
fills in one customer and reads the churn probability; bad input shows the server's
message. The page loads nothing from outside the server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import CHROMIUM_ARGS, needs, running_backend

from churnlab.schema import EXAMPLE_RECORD

SHOTS = Path("/tmp/serving-helper")
ARGS = CHROMIUM_ARGS
WAIT_MS = 30_000  # as long as Playwright's own waits; a loaded CI machine can be slow

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    executable = needs("chromium")  # Debian's; playwright downloads no browser of its own
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_a_person_checks_health_and_scores_one_customer(registry, browser):
    from playwright.sync_api import expect

    registry.stage(2, override=True, reason="browser test")
    with running_backend("staging") as backend:
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        page.goto(backend.url + "/")
        # Playwright's expect polls without eval, which the page's CSP (script-src 'self')
        # refuses; wait_for_function with a string predicate fails whenever it has to poll
        expect(page.locator("#version")).not_to_have_text("-", timeout=WAIT_MS)
        assert page.text_content("#stage") == "staging"
        assert page.text_content("#version") == "v2"
        assert page.text_content("#model-name") == "churn-model"
        assert page.text_content("#health-status") == "ok"
        assert page.text_content("#run-id") == registry.version(2).run_id

        page.click("#health-button")
        # the click sets "checking…" until /health answers (checked-at is already set by
        # the check on load, so it cannot tell that this one has finished)
        expect(page.locator("#health-status")).not_to_have_text("checking…", timeout=WAIT_MS)
        assert page.text_content("#health-status") == "ok"

        # the form is built from /metadata's schema: selects for categories
        page.wait_for_selector("#predict-button:not([disabled])")
        options = page.eval_on_selector_all("#f-Contract option", "els => els.map(e => e.value)")
        assert options == ["Month-to-month", "One year", "Two year"]
        assert page.get_attribute("#f-tenure", "type") == "number"

        customer = {**EXAMPLE_RECORD, "Contract": "Two year", "tenure": 60, "TotalCharges": 1800.0}
        page.select_option("#f-Contract", "Two year")
        page.fill("#f-tenure", "60")
        page.fill("#f-TotalCharges", "1800")
        page.click("#predict-button")
        page.wait_for_selector("#result:not([hidden])")
        shown = float(page.text_content("#result-probability"))
        expected = backend.predict([customer])["predictions"][0]
        assert shown == pytest.approx(expected["churn_probability"], abs=5e-5)
        assert page.text_content("#result-churn") == ("yes" if expected["churn"] else "no")
        assert page.text_content("#result-model") == "churn-model v2 (staging)"
        page.screenshot(path=str(SHOTS / "page.png"), full_page=True)

        # a value the contract refuses: the person sees the server's message
        page.fill("#f-MonthlyCharges", "5000")
        page.click("#predict-button")
        page.wait_for_selector("#error:not([hidden])")
        error = page.text_content("#error")
        assert error.startswith("HTTP 422: records[0].MonthlyCharges:")
        assert page.is_hidden("#result")

        # the 422 above is logged by the browser as a failed load; nothing else went wrong
        assert [p for p in problems if "status of 422" not in p] == []
        assert requested and all(url.startswith(backend.url) for url in requested), requested
