"""The study workflow in a real browser (Debian's chromium via Playwright, as in
test_browser.py): screen an X-ray, open its study, correct it, find it in the
history, download its report."""

from __future__ import annotations

import io

import pytest

from browsing import CHROMIUM, CHROMIUM_ARGS, MARKS, served
from pneumo.web import create_app
from test_browser import screenshot, xray_file

pytestmark = MARKS
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def live_server(tiny_predictor, tmp_path_factory):
    app = create_app({"PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_DATA_DIR": str(tmp_path_factory.mktemp("history")),
                      "PNEUMO_LOCAL_USER": True})
    with served(app) as url:
        yield url


@pytest.fixture
def page(live_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900},
                                      accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.goto(live_server + "/")
        yield page
        context.close()
        browser.close()


def test_screen_correct_find_and_download_a_report(page, live_server, tiny_predictor):
    page.set_input_files("#file-input", xray_file("Doe_John.png"))
    page.wait_for_selector("#state-result", state="visible")
    label = page.text_content("#result-label")
    assert page.is_visible("#report-link")
    assert page.get_attribute("#report-link", "href").endswith("/report.pdf")

    page.click("#study-link")
    page.wait_for_selector("[data-testid=study-label]")
    assert page.text_content("[data-testid=study-label]").startswith(label)
    correction = "NORMAL" if label == "PNEUMONIA" else "PNEUMONIA"
    page.check(f"input[name=verdict][value={correction}]")
    page.fill("textarea[name=comment]", "second reader disagrees")
    page.click("text=Save feedback")
    page.wait_for_selector("[data-testid=saved]")
    assert f"You corrected it to {correction}" in page.text_content(
        "[data-testid=current-feedback]")

    page.click("nav >> text=History")
    page.wait_for_selector("[data-testid=study-row]")
    assert f"corrected to {correction}" in page.text_content("[data-testid=study-row]")
    page.select_option("select[name=label]", correction)  # the model's label is the other
    page.click("text=Search")
    page.wait_for_selector("[data-testid=total]")
    assert page.text_content("[data-testid=total]").startswith("0 studies")
    page.select_option("select[name=label]", label)
    page.click("text=Search")
    page.click("[data-testid=study-row] >> text=Open")
    page.fill("textarea[name=notes]", "Reviewed at the morning meeting")
    with page.expect_download() as download:
        page.click("[data-testid=download-report]")
    pdf = download.value.path().read_bytes()
    from pypdf import PdfReader

    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "Reviewed at the morning meeting" in text and f"corrected to {correction}" in text
    assert "Doe" not in text
    screenshot(page, "browser-study.png")
    assert page.problems == []
