"""End to end in a real headless browser: Debian's chromium driven by Playwright,
against the real app served by waitress on a free loopback port.

Screenshots land in ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from browsing import CHROMIUM, CHROMIUM_ARGS, MARKS, served
from conftest import encode, synthetic_xray
from pneumo.web import create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = MARKS
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect


@pytest.fixture(scope="module")
def live_server(tiny_predictor):
    with served(create_app({"PNEUMO_PREDICTOR": tiny_predictor})) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh page that records every request and every console complaint."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.requests = []
    page.problems = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("console", lambda message: page.problems.append(message.text)
            if message.type == "error" and "status of 4" not in message.text else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(live_server + "/")
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.wait_for_timeout(300)  # let the fade-in finish
    page.screenshot(path=str(path), full_page=True)
    return path


def xray_file(name: str = "chest.png", seed: int = 5) -> dict:
    return {"name": name, "mimeType": "image/png",
            "buffer": encode(synthetic_xray(seed, (480, 400), opacity=True))}


def test_upload_shows_result_heatmap_and_slider(page, live_server, tiny_predictor):
    upload = xray_file()
    expected = tiny_predictor.predict(upload["buffer"])
    page.set_input_files("#file-input", upload)
    page.wait_for_selector("#state-result", state="visible")

    assert page.text_content("#result-label") == expected.label
    shown = page.text_content("#result-probability")
    assert shown == f"{expected.probability * 100:.1f}%"
    assert page.text_content("#result-file") == "chest.png"
    threshold_text = page.text_content("#threshold-text")
    assert f"at least {tiny_predictor.threshold * 100:.1f}%" in threshold_text
    assert page.is_visible("text=Second opinion, not a diagnosis.")
    assert page.text_content("#result-model") == (
        f"{tiny_predictor.name} {tiny_predictor.version}")

    heatmap = page.locator("#heatmap")
    heatmap.wait_for(state="visible")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('heatmap').naturalWidth") > 0
    xray_box, heat_box = page.locator("#xray").bounding_box(), heatmap.bounding_box()
    assert heat_box == pytest.approx(xray_box, abs=1)  # drawn exactly over the X-ray

    page.fill("#opacity", "25")
    assert page.evaluate("document.getElementById('heatmap').style.opacity") == "0.25"
    assert page.text_content("#opacity-value") == "25%"
    page.wait_for_timeout(400)  # past the CSS transition
    assert page.evaluate("getComputedStyle(document.getElementById('heatmap')).opacity") \
        == "0.25"
    page.fill("#opacity", "90")
    assert page.evaluate("document.getElementById('heatmap').style.opacity") == "0.9"

    page.click("label.switch")  # compare with the original
    assert heatmap.is_hidden()
    assert page.is_disabled("#opacity")
    page.click("label.switch")
    assert heatmap.is_visible()

    path = screenshot(page, "browser-result.png")
    assert path.stat().st_size > 20_000
    assert page.problems == []
    outside = [url for url in page.requests
               if not url.startswith((live_server, "data:", "blob:"))]
    assert outside == []  # works offline: nothing is fetched from elsewhere


def test_drag_and_drop_works_too(page, tiny_predictor):
    upload = xray_file("dropped.png", seed=9)
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""", base64.b64encode(upload["buffer"]).decode())
    page.dispatch_event("#upload-form", "dragenter", {"dataTransfer": transfer})
    assert "is-dragover" in page.get_attribute("#upload-form", "class")
    page.dispatch_event("#upload-form", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#state-result", state="visible")
    assert page.text_content("#result-file") == "dropped.png"
    assert page.text_content("#result-label") == tiny_predictor.predict(upload["buffer"]).label


def test_progress_is_shown_while_the_model_works(page):
    # Hold the API's answer until the progress state has been seen.
    held = []
    page.route("**/api/v1/predict*", lambda route: held.append(route))
    page.set_input_files("#file-input", xray_file())
    page.wait_for_selector("#state-progress", state="visible")
    assert page.is_visible("#progress")
    assert page.is_visible("#stage-busy")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_selector("#state-result", state="visible")
    assert page.is_hidden("#state-progress") and page.is_hidden("#stage-busy")


def test_a_non_image_gives_a_plain_words_error(page):
    page.set_input_files("#file-input", {"name": "report.png", "mimeType": "image/png",
                                         "buffer": b"<html><body>not an x-ray</body></html>"})
    page.wait_for_selector("#state-error", state="visible")
    assert page.text_content("#error-title") == \
        "This file is not a chest X-ray image we can read."
    detail = page.text_content("#error-detail")
    assert "PNG, JPEG or DICOM" in detail
    assert "{" not in detail and "Traceback" not in page.content()
    assert page.text_content("#error-file") == "report.png"
    assert page.is_visible("#upload-form")  # ready for another try
    screenshot(page, "browser-error.png")

    page.set_input_files("#file-input", {"name": "notes.txt", "mimeType": "text/plain",
                                         "buffer": b"hello"})
    expect(page.locator("#error-file")).to_have_text("notes.txt")
    assert ".txt are not accepted" in page.text_content("#error-detail")


def test_a_photo_is_refused_in_plain_words_with_its_reasons(page, tiny_predictor, monkeypatch):
    """The input gate on the page: no label, the reasons as sentences, a way forward."""
    import skimage.data

    calls = []
    original = tiny_predictor.predict_batch
    monkeypatch.setattr(tiny_predictor, "predict_batch",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    page.set_input_files("#file-input", {"name": "holiday.jpg", "mimeType": "image/jpeg",
                                         "buffer": encode(skimage.data.chelsea(), "JPEG")})
    page.wait_for_selector("#state-error", state="visible")
    assert page.text_content("#error-title") == \
        "This does not look like a chest X-ray the model can read."
    reasons = page.locator("#error-reasons li").all_text_contents()
    assert reasons == ["Looks like a colour photograph, not a radiograph."]
    detail = page.text_content("#error-detail")
    assert "No result is given" in detail and "frontal (PA or AP) chest radiograph" in detail
    assert page.is_hidden("#state-result") and page.text_content("#result-label") == ""
    assert calls == []  # refused before the network
    screenshot(page, "browser-refused.png")

    # the next good image shows a result, and no stale reasons linger
    page.set_input_files("#file-input", xray_file("plain.png"))
    expect(page.locator("#result-file")).to_have_text("plain.png")
    assert page.is_visible("#state-result") and page.is_hidden("#result-warning")
    assert page.problems == []


def test_a_doubtful_image_shows_its_warning_next_to_the_result(page, tiny_predictor):
    small = encode(synthetic_xray(6, (150, 160), opacity=True))
    page.set_input_files("#file-input", {"name": "small.png", "mimeType": "image/png",
                                         "buffer": small})
    page.wait_for_selector("#state-result", state="visible")
    assert page.text_content("#result-label") == tiny_predictor.predict(small).label
    warning = page.locator("#result-warning")
    assert warning.is_visible()
    assert "Read this result with care" in warning.text_content()
    assert page.locator("#warning-reasons li").all_text_contents() == [
        "Low resolution (160x150 pixels)."]
    verdict, box = page.locator("#verdict").bounding_box(), warning.bounding_box()
    assert 0 <= box["y"] - (verdict["y"] + verdict["height"]) < 80  # right under the verdict
    assert "is-doubtful" in page.get_attribute("#verdict", "class")
    screenshot(page, "browser-warning.png")
    page.click("#reset")
    page.set_input_files("#file-input", xray_file("plain.png"))
    expect(page.locator("#result-file")).to_have_text("plain.png")
    assert page.is_visible("#state-result") and page.is_hidden("#result-warning")
    assert "is-doubtful" not in page.get_attribute("#verdict", "class")


def test_a_truncated_image_and_an_oversized_file_are_explained(page, tmp_path):
    data = encode(synthetic_xray(2, (300, 300)))
    page.set_input_files("#file-input", {"name": "cut.png", "mimeType": "image/png",
                                         "buffer": data[: len(data) // 2]})
    page.wait_for_selector("#state-error", state="visible")
    assert page.text_content("#error-title") == "This image could not be read."
    assert "truncated" in page.text_content("#error-detail").lower()

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:  # sparse: no 32 MB written, none sent to the browser
        handle.truncate(32 * 2**20 + 10)
    page.set_input_files("#file-input", huge)
    expect(page.locator("#error-file")).to_have_text("huge.png")
    assert page.text_content("#error-title") == "This file is too large."
    assert "32 MB" in page.text_content("#error-detail")


@pytest.mark.reliability(7)
def test_a_hostile_file_name_is_shown_as_text(page):
    name = '"><img src=x onerror="window.__pwned=1">.png'
    page.set_input_files("#file-input", {"name": name, "mimeType": "image/png",
                                         "buffer": b"GIF89a not really"})
    page.wait_for_selector("#state-error", state="visible")
    assert page.text_content("#error-file") == name
    assert page.locator("#error-file img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.set_input_files("#file-input", {**xray_file(), "name": name})
    page.wait_for_selector("#state-result", state="visible")
    assert page.text_content("#result-file") == name
    assert page.evaluate("window.__pwned") is None


def test_about_page_shows_the_model_card(page, live_server, tiny_predictor):
    page.click("text=About this model")
    page.wait_for_url(live_server + "/about")
    assert page.is_visible("h2:text('Intended use')")
    assert page.is_visible("h2:text('Known limitations')")
    assert page.is_visible("h2:text('Validation metrics')")
    assert page.locator(".bullets li").count() == len(tiny_predictor.card["limitations"])
    broken = page.evaluate(
        "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    screenshot(page, "browser-about.png")
    assert page.problems == []


def test_the_page_fits_a_phone(browser, live_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(live_server + "/")
        page.set_input_files("#file-input", xray_file())
        page.wait_for_selector("#state-result", state="visible")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        viewer, result = page.locator(".viewer-panel").bounding_box(), \
            page.locator(".result-panel").bounding_box()
        assert result["y"] >= viewer["y"] + viewer["height"]  # stacked, not side by side
        screenshot(page, "browser-result-phone.png")
    finally:
        context.close()


def test_screenshots_directory_is_ignored_by_git():
    gitignore = (ARTIFACTS.parent / ".gitignore").read_text().split()
    assert "/test-artifacts/" in gitignore
