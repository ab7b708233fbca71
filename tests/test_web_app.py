"""The app factory, the model's life cycle, the pages and the security defaults,
through Flask's test client on a real tiny model."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import encode, synthetic_xray
from pneumo.bundle import BundleError
from pneumo.predictor import Predictor
from pneumo.web import MAX_UPLOAD_BYTES, create_app
from pneumo.web import ui as ui_module

WEB_DIR = Path(__file__).resolve().parents[1] / "src" / "pneumo" / "web"
PLOT_NAMES = [name for name, _, _ in ui_module.PLOTS]


def variant_bundle(source: Path, target: Path, **card_changes) -> Path:
    """A bundle sharing ``source``'s weights (a symlink) with an edited card."""
    target.mkdir(parents=True)
    (target / "model.keras").symlink_to(source / "model.keras")
    card = json.loads((source / "card.json").read_text())
    card.update(card_changes)
    (target / "card.json").write_text(json.dumps(card))
    return target


# -- the factory and the model's life cycle ---------------------------------------------

def test_importing_the_web_package_loads_no_tensorflow():
    code = ("import sys, pneumo.web, pneumo.web.server, pneumo.web.api, pneumo.web.ui; "
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.reliability(8)
def test_defaults_debug_off_no_secret_key_and_an_upload_limit(app):
    assert app.debug is False
    assert app.config["SECRET_KEY"] is None
    assert app.config["MAX_CONTENT_LENGTH"] == MAX_UPLOAD_BYTES == 32 * 2**20


def test_default_bundle_path_comes_from_config(monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMO_MODEL", str(tmp_path / "elsewhere"))
    app = create_app({"PNEUMO_MODEL_LOADING": "background"})
    assert app.config["PNEUMO_MODEL"] == str(tmp_path / "elsewhere")
    app.extensions["pneumo.model"].wait(60)
    assert app.extensions["pneumo.predictor"] is None


def test_model_is_loaded_once_at_creation_not_per_request(tiny_bundle, monkeypatch):
    calls = []
    original = Predictor.from_bundle.__func__

    def counting(cls, path=None):
        calls.append(path)
        return original(cls, path)

    monkeypatch.setattr(Predictor, "from_bundle", classmethod(counting))
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(tiny_bundle)})
    assert len(calls) == 1 and Path(calls[0]) == tiny_bundle
    predictor = app.extensions["pneumo.predictor"]
    assert isinstance(predictor, Predictor) and predictor.bundle_path == tiny_bundle
    client = app.test_client()
    png = encode(synthetic_xray(2))
    for _ in range(3):
        response = client.post("/api/v1/predict?heatmap=false",
                               data={"file": (io.BytesIO(png), "a.png")})
        assert response.status_code == 200
    assert client.get("/").status_code == 200
    assert len(calls) == 1
    assert app.extensions["pneumo.predictor"] is predictor


def test_eager_loading_fails_loudly_on_a_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        create_app({"PNEUMO_MODEL": str(tmp_path / "missing")})


def test_unknown_loading_mode_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="PNEUMO_MODEL_LOADING"):
        create_app({"PNEUMO_MODEL": str(tiny_bundle), "PNEUMO_MODEL_LOADING": "lazy"})


def test_background_loading_is_not_ready_until_loaded(tiny_bundle):
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(tiny_bundle),
                      "PNEUMO_MODEL_LOADING": "background"})
    client = app.test_client()
    # Loading the 80 MB bundle takes well over the milliseconds this request needs.
    early = client.get("/api/v1/health")
    assert early.status_code == 503
    assert early.get_json()["status"] == "loading"
    assert early.headers["Retry-After"]
    page = client.get("/")
    assert page.status_code == 503 and b"The model is loading" in page.data
    assert app.extensions["pneumo.model"].wait(120)
    ready = client.get("/api/v1/health")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready",
                                "model": {"name": "pneumo-xception-tiny-test",
                                          "version": "0.0.0+test"}}
    assert client.get("/").status_code == 200


def test_background_loading_failure_is_reported_without_internals(tmp_path):
    missing = tmp_path / "secret-location" / "bundle"
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(missing),
                      "PNEUMO_MODEL_LOADING": "background"})
    assert app.extensions["pneumo.model"].wait(60) is False
    client = app.test_client()
    health = client.get("/api/v1/health")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "failed" and body["error"]["code"] == "model_unavailable"
    assert "secret-location" not in health.get_data(as_text=True)
    page = client.get("/")
    assert page.status_code == 503 and b"could not be loaded" in page.data
    assert client.get("/about").status_code == 503


# -- pages -------------------------------------------------------------------------------

def test_index_page_shows_the_cards_operating_point_and_the_disclaimer(client, tiny_predictor):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "second opinion, not a diagnosis" in html.lower()
    assert f"{tiny_predictor.threshold * 100:.1f}%" in html
    assert tiny_predictor.name in html and tiny_predictor.version in html
    assert 'id="file-input"' in html and 'type="file"' in html
    assert 'id="opacity"' in html and 'id="heatmap-toggle"' in html
    assert 'data-max-size="32 MB"' in html


def test_threshold_on_the_page_comes_from_the_bundle(tiny_bundle, tmp_path):
    bundle = variant_bundle(
        tiny_bundle, tmp_path / "variant", threshold=0.731, threshold_method="youden_j",
        validation={"sensitivity": 0.912, "specificity": 0.804, "n": 300,
                    "sensitivity_ci95": [0.88, 0.94], "specificity_ci95": [0.75, 0.85]})
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle)})
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    assert "73.1%" in html and "91.2%" in html and "80.4%" in html
    assert "50.0%" not in html
    about = client.get("/about").get_data(as_text=True)
    assert "73.1%" in about and "Youden" in about
    assert "95% CI 88.0% – 94.0%" in about
    response = client.post("/api/v1/predict?heatmap=false",
                           data={"file": (io.BytesIO(encode(synthetic_xray(4))), "a.png")})
    body = response.get_json()
    assert body["threshold"] == 0.731
    assert body["label"] == ("PNEUMONIA" if body["probability"] >= 0.731 else "NORMAL")
    assert body["label"] == "NORMAL"  # a random tiny model scores about 0.5


def test_about_page_states_the_inconclusive_band_when_the_card_has_one(tiny_bundle, tmp_path):
    band = {"lower": 0.703, "upper": 0.916, "n": 1044, "n_inside": 46,
            "accuracy_inside": 0.587, "accuracy_outside": 0.964}
    bundle = variant_bundle(tiny_bundle, tmp_path / "variant", inconclusive=band)
    html = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle)}).test_client() \
        .get("/about").get_data(as_text=True)
    text = " ".join(html.split())
    assert "from <strong>70.3%</strong> to <strong>91.6%</strong> are marked" in text
    assert "46 of 1044 images fell there, and 58.7% of them were labelled correctly, " \
        "against 96.4% of the rest" in text


def test_about_page_renders_the_card_without_plots(client, tiny_predictor):
    response = client.get("/about")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    card = tiny_predictor.card
    assert card["name"] in html and card["version"] in html
    assert card["intended_use"] in html
    for limitation in card["limitations"]:
        assert limitation.replace("'", "&#39;") in html
    assert "ROC AUC" in html and "0.500" in html  # the tiny card's only metric
    assert "Validation plots" not in html and "/about/plots/" not in html
    assert client.get("/about/plots/roc.png").status_code == 404
    assert ("about-band" in html) == ("inconclusive" in card)  # no band, no sentence


@pytest.mark.reliability(6)
def test_about_page_shows_the_bundles_plots(tiny_bundle, tmp_path):
    bundle = variant_bundle(tiny_bundle, tmp_path / "with-plots")
    (bundle / "plots").mkdir()
    png = encode(synthetic_xray(0, (40, 60)))
    for name in ("roc.png", "confusion_matrix.png"):
        (bundle / "plots" / name).write_bytes(png)
    client = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle)}).test_client()
    html = client.get("/about").get_data(as_text=True)
    assert 'src="/about/plots/roc.png"' in html
    assert 'src="/about/plots/confusion_matrix.png"' in html
    assert "/about/plots/reliability.png" not in html  # absent from this bundle
    with client.get("/about/plots/roc.png") as image:
        assert image.status_code == 200 and image.mimetype == "image/png"
        assert image.data == png
        check_security_headers(image)
    assert client.get("/about/plots/reliability.png").status_code == 404
    (bundle / "card.json").rename(bundle / "secret.png")
    assert client.get("/about/plots/secret.png").status_code == 404
    assert client.get("/about/plots/..%2Fsecret.png").status_code == 404


@pytest.mark.parametrize("path", ["/", "/about", "/static/app.css", "/static/app.js",
                                  "/static/favicon.svg", "/nope", "/api/v1/health",
                                  "/api/v1/nope", "/api/v1/openapi.json"])
@pytest.mark.reliability(6)
def test_every_response_carries_the_security_headers(client, path):
    with client.get(path) as response:
        check_security_headers(response)


def check_security_headers(response):
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "img-src 'self' data: blob:" in policy


@pytest.mark.reliability(6)
def test_api_responses_are_not_cached_and_pages_name_their_type(client):
    assert client.get("/api/v1/health").headers["Cache-Control"] == "no-store"
    for path, types in (("/static/app.css", ["text/css"]),
                        ("/static/app.js", ["text/javascript", "application/javascript"]),
                        ("/static/favicon.svg", ["image/svg+xml"])):
        with client.get(path) as response:
            assert response.status_code == 200 and response.mimetype in types


def test_pages_and_assets_reference_nothing_outside_this_server(client):
    texts = [client.get(p).get_data(as_text=True) for p in ("/", "/about", "/nope")]
    texts += [path.read_text() for path in (WEB_DIR / "static").iterdir()]
    texts += [path.read_text() for path in (WEB_DIR / "templates").iterdir()]
    for text in texts:
        # An XML namespace name is an identifier, never fetched.
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), text[:200]
        assert "@import" not in text and "<script>" not in text
    html = texts[0]
    assert re.findall(r'<script src="([^"]+)"', html) == ["/static/app.js"]
    assert set(re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)) == {"/static/app.css"}


def test_page_errors_are_plain_pages(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "There is no page at this address." in response.get_data(as_text=True)
    response = client.post("/about")
    assert response.status_code == 405 and response.mimetype == "text/html"


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.reliability(8)
def test_an_internal_error_shows_no_traceback_even_in_debug(tiny_predictor, monkeypatch,
                                                             caplog, debug):
    app = create_app({"PNEUMO_PREDICTOR": tiny_predictor, "DEBUG": debug})
    assert app.debug is debug

    def broken():
        raise OSError("disk /very/secret/path exploded")

    monkeypatch.setattr(ui_module, "available_plots", broken)
    with caplog.at_level(logging.ERROR, logger="pneumo.web.errors"):
        response = app.test_client().get("/about")
    text = response.get_data(as_text=True)
    assert response.status_code == 500 and response.mimetype == "text/html"
    assert "Something went wrong on our side" in text
    assert "secret" not in text and "Traceback" not in text and "OSError" not in text
    assert "exploded" in caplog.text  # ...but the server log has it
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_template_filters_handle_missing_values():
    assert ui_module.pct(0.9342) == "93.4%"
    assert ui_module.pct(float("nan")) == ui_module.pct(None) == "\u2013"
    assert ui_module.num("x") == "\u2013"
    assert ui_module.when("2025-11-26T14:05:00+00:00") == "26 Nov 2025, 14:05 UTC"
    assert ui_module.method_label("sensitivity>=0.95") == \
        "the highest threshold reaching 95% sensitivity"
    view = ui_module.card_view({"threshold": 0.4, "limitations": "one string"}, [])
    assert view["limitations"] == ["one string"] and view["metrics"] == []


def test_about_page_gives_figures_per_population_and_what_calibrated(tiny_bundle, tmp_path):
    sets = {"chest_xray (validation part)": {
                "images": 1044, "refused": 3, "refused_rate": 3 / 1044, "roc_auc": 0.991,
                "roc_auc_ci95": [0.988, 0.995], "sensitivity": 0.95, "specificity": 0.9},
            "nih-dev (validation part), AP view": {
                "images": 51, "refused": 0, "refused_rate": 0.0, "roc_auc": 0.812,
                "roc_auc_ci95": [0.7, 0.9], "sensitivity": 0.7, "specificity": 0.8}}
    bundle = variant_bundle(tiny_bundle, tmp_path / "variant", development_sets={
        "measured": "2026-12-02", "by": "pneumo evaluate", "sets": sets},
        calibration={"method": "Platt", "temperature": 1.0, "bias": 0.0,
                     "fitted_on": {"chest_xray": 1044, "shift-dev": 295}})
    html = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle)}).test_client() \
        .get("/about").get_data(as_text=True)
    text = " ".join(html.split())
    assert 'data-testid="about-populations"' in html
    assert "<th scope=\"row\">nih-dev (validation part), AP view</th>" in text
    assert "0.812" in text and "0.700 – 0.900" in text and "3 (0.3%)" in text
    assert 'class="subgroup"' in html  # the view row sits under its set
    assert "Measured by pneumo evaluate;" in text
    assert "chest_xray (1,044 images), shift-dev (295 images), each set counting equally" in text


def test_about_page_without_population_figures_leaves_the_section_out(client):
    html = client.get("/about").get_data(as_text=True)
    assert 'data-testid="about-populations"' not in html


def broken_bundle(tiny_bundle: Path, folder: Path, damage) -> Path:
    """The tiny bundle with its card changed by ``damage(card)`` (the weights linked)."""
    folder.mkdir()
    (folder / "model.keras").symlink_to(tiny_bundle / "model.keras")
    card = json.loads((tiny_bundle / "card.json").read_text())
    damage(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _no_temperature(card):
    card["calibration"].pop("temperature")


def test_the_whole_card_is_checked_on_load_with_one_clear_error(tiny_bundle, tmp_path):
    from pneumo.bundle import BundleError, read_card

    def many(card):
        card["calibration"] = {"method": "x", "temperature": -1}
        card["input"].pop("size")
        card["threshold"] = "0.5"
        card["inconclusive"] = {"lower": 0.6}

    with pytest.raises(BundleError) as caught:
        read_card(broken_bundle(tiny_bundle, tmp_path / "many", many))
    message = str(caught.value)
    assert "\n" not in message and message.count("is invalid") == 1
    for part in ("'calibration.temperature' must be a positive number", "'input.size' is missing",
                 "'threshold' must be a number", "'inconclusive.upper' is missing"):
        assert part in message, message
    assert read_card(tiny_bundle)  # the real card passes


def test_background_loading_of_a_broken_card_reports_failed(tiny_bundle, tmp_path):
    """A card missing an inner field once left health at "loading" forever."""
    bundle = broken_bundle(tiny_bundle, tmp_path / "b", _no_temperature)
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle),
                      "PNEUMO_MODEL_LOADING": "background"})
    assert app.extensions["pneumo.model"].wait(60) is False
    health = app.test_client().get("/api/v1/health")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "failed"
    assert "calibration.temperature" in app.extensions["pneumo.model"].error


def test_serve_with_a_broken_card_is_one_line_and_exit_status_2(tiny_bundle, tmp_path):
    bundle = broken_bundle(tiny_bundle, tmp_path / "b", _no_temperature)
    result = subprocess.run(
        [sys.executable, "-m", "pneumo.cli", "serve", "--model", str(bundle), "--port", "0"],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 2, result.stderr[-500:]
    assert "calibration.temperature' is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_card_naming_an_unknown_normalisation_is_refused_on_load(tiny_bundle, tmp_path):
    from pneumo.bundle import BundleError, read_card

    def unknown(card):
        card["input"]["normalization"] = "gamma"

    with pytest.raises(BundleError, match="'input.normalization' must be one of none, clahe"):
        read_card(broken_bundle(tiny_bundle, tmp_path / "gamma", unknown))
