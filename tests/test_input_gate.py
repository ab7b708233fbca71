"""The input gate wherever a prediction is shown: the API (one file and batch) and
``pneumo predict``; the page is in test_browser.py.

The tiny bundle has no feature gate, so a second one is made here: the same
random-weight Xception with a gate fitted, exactly as training fits it, on the
pooled features of generated X-rays. It refuses what the tiny network sees
as unlike those X-rays, which is enough to prove the plumbing; the shipped
model's gate is measured in test_gate_shipped.py.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SIZE, encode, synthetic_xray
from non_xrays import all_samples, knee_like
from pneumo.cli import main
from pneumo.gate import GATE_FILE, WARN_REASON, FeatureGate
from pneumo.predictor import Predictor
from pneumo.web import create_app
from test_api_openapi import upload, validate


def variant(source: Path, target: Path, gate: FeatureGate | None) -> Path:
    """``source``'s weights and card (the weights linked, not copied) with ``gate``."""
    target.mkdir(parents=True)
    (target / "model.keras").symlink_to(source / "model.keras")
    (target / "card.json").write_text((source / "card.json").read_text())
    if gate is not None:
        gate.save(target / GATE_FILE)
    return target


@functools.cache
def _xray_set(n: int) -> tuple[np.ndarray, ...]:
    sizes = [(256, 256), (300, 240), (512, 480), (400, 400), (640, 560), (150, 160), (200, 180)]
    return tuple(synthetic_xray(1000 + i, sizes[i % len(sizes)], opacity=i % 2 == 1)
                 for i in range(n))


def fitted(i: int, fmt: str = "PNG") -> bytes:
    """X-ray ``i`` of those the test gate was fitted on: 2 is 480x512, 5 is 160x150."""
    return encode(_xray_set(140)[i], fmt)


@pytest.fixture(scope="module")
def fitted_gate(tiny_bundle) -> FeatureGate:
    """A gate fitted like training fits it, on the pooled features of 80 "training" and
    60 "validation" generated X-rays through the tiny network.

    The tiny network has new random weights every session, so an X-ray near the
    97th-percentile cut-off would be "ok" in one session and "warning" in the next.
    The cut-offs are therefore moved above every X-ray the gate was fitted on (twice
    and four times the highest score); non-X-rays score thousands of times higher
    still. The percentile cut-offs themselves are tested in test_gate.py and measured
    on the shipped model in test_gate_shipped.py."""
    import keras

    from pneumo.bundle import load_bundle
    from pneumo.preprocessing import to_model_input

    model, _ = load_bundle(tiny_bundle)
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    batch = np.stack([to_model_input(x, TINY_SIZE) for x in _xray_set(140)])
    features = pooled.predict(batch, batch_size=50, verbose=0)
    gate = FeatureGate.fit(features[:80], features[80:])
    highest = float(gate.score(features).max())
    gate.warn_above, gate.reject_above = 2 * highest, 4 * highest
    return gate


@pytest.fixture(scope="module")
def gated_bundle(tiny_bundle, fitted_gate, tmp_path_factory) -> Path:
    return variant(tiny_bundle, tmp_path_factory.mktemp("gated") / "bundle", fitted_gate)


@pytest.fixture(scope="module")
def gated_predictor(gated_bundle) -> Predictor:
    predictor = Predictor.from_bundle(gated_bundle)
    assert predictor.gate is not None
    return predictor


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder of this module's own for kept studies."""
    return tmp_path_factory.mktemp("gate-data")


@pytest.fixture
def client(tiny_predictor, data_dir):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(data_dir), "PNEUMO_LOCAL_USER": True}).test_client()


@pytest.fixture
def gated_client(gated_predictor, data_dir):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": gated_predictor,
                       "PNEUMO_DATA_DIR": str(data_dir), "PNEUMO_LOCAL_USER": True}).test_client()


@pytest.fixture(scope="module")
def spec(tiny_predictor):
    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor})
    return app.test_client().get("/api/v1/openapi.json").get_json()


def colour_photo() -> bytes:
    import skimage.data

    return encode(skimage.data.astronaut(), "JPEG", quality=90)


def knee() -> bytes:
    return encode(knee_like(0))


def _refused(response, reason: str) -> dict:
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == "not_a_chest_xray"
    assert reason in body["error"]["message"]
    check = body["input_check"]
    assert check["status"] == "rejected" and any(reason in r for r in check["reasons"])
    assert "label" not in body and "probability" not in body
    return check


def _count_network_calls(monkeypatch, predictor) -> list[int]:
    """Count batches reaching the network (the real method still runs)."""
    calls = []
    original = predictor.predict_batch

    def counting(batch, *args, **kwargs):
        calls.append(len(batch))
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(predictor, "predict_batch", counting)
    return calls


# -- one file ------------------------------------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (colour_photo(), "colour photograph"),
    (encode(np.full((400, 400), 250, np.uint8)), "almost blank"),
    (encode(np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)),
     "random noise"),
    (encode(synthetic_xray(0, (40, 48))), "very low resolution (48x40 pixels)"),
], ids=["photo", "blank", "noise", "tiny"])
def test_image_checks_refuse_before_the_network_runs(client, tiny_predictor, spec, monkeypatch,
                                                     data, reason):
    calls = _count_network_calls(monkeypatch, tiny_predictor)
    response = upload(client, "/api/v1/predict", [("x.png", data)])
    check = _refused(response, reason)
    assert check["feature_score"] is None
    assert calls == []  # refused on the pixels alone: no inference spent
    validate(spec, response, "/api/v1/predict", "post")


def test_a_plain_xray_passes_with_an_ok_check(client, gated_client, gated_predictor, spec):
    data = fitted(2)
    body = upload(client, "/api/v1/predict", [("x.png", data)]).get_json()
    assert body["input_check"] == {"status": "ok", "reasons": [], "feature_score": None}
    response = upload(gated_client, "/api/v1/predict", [("x.png", data)])
    validate(spec, response, "/api/v1/predict", "post")
    body = response.get_json()
    expected = gated_predictor.predict(data)
    assert body["input_check"]["status"] == "ok" and body["input_check"]["reasons"] == []
    assert body["input_check"]["feature_score"] == pytest.approx(expected.feature_score, abs=1e-3)
    assert body["input_check"]["feature_score"] <= gated_predictor.gate.warn_above
    assert body["label"] == expected.label


def test_a_doubtful_input_keeps_its_prediction_and_says_why(client, tiny_predictor, spec):
    data = encode(synthetic_xray(4, (150, 150), opacity=True))
    response = upload(client, "/api/v1/predict", [("small.png", data)])
    validate(spec, response, "/api/v1/predict", "post")
    body = response.get_json()
    assert response.status_code == 200
    assert body["input_check"]["status"] == "warning"
    assert body["input_check"]["reasons"] == ["low resolution (150x150 pixels)"]
    expected = tiny_predictor.predict(data)
    assert body["label"] == expected.label
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)


def test_the_feature_gate_refuses_what_the_network_finds_unlike_xrays(gated_client,
                                                                      gated_predictor, spec):
    response = upload(gated_client, "/api/v1/predict", [("knee.png", knee())])
    check = _refused(response, "does not look like a chest X-ray")
    assert check["feature_score"] > gated_predictor.gate.reject_above
    validate(spec, response, "/api/v1/predict", "post")


def test_a_feature_warning_keeps_the_prediction(tiny_bundle, fitted_gate, tmp_path, spec):
    """A gate whose warn cut-off is below every score: every readable X-ray is warned about."""
    warn_all = FeatureGate(**{**fitted_gate.__dict__, "warn_above": -np.inf})
    bundle = variant(tiny_bundle, tmp_path / "warn-all", warn_all)
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(bundle),
                      "PNEUMO_DATA_DIR": str(tmp_path / "data")})
    response = upload(app.test_client(), "/api/v1/predict", [("x.png", fitted(2))])
    validate(spec, response, "/api/v1/predict", "post")
    body = response.get_json()
    assert body["input_check"]["status"] == "warning"
    assert body["input_check"]["reasons"] == [
        WARN_REASON]
    assert body["label"] in ("NORMAL", "PNEUMONIA")


# -- batch ---------------------------------------------------------------------------------

def test_batch_gives_each_file_its_verdict(gated_client, gated_predictor, spec, monkeypatch):
    good, small = fitted(2), fitted(5)
    files = [("good.png", good), ("photo.jpg", colour_photo()),
             ("blank.png", encode(np.zeros((300, 300), np.uint8))), ("knee.png", knee()),
             ("small.png", small)]
    calls = _count_network_calls(monkeypatch, gated_predictor)
    response = upload(gated_client, "/api/v1/predict/batch", files)
    validate(spec, response, "/api/v1/predict/batch", "post")
    assert calls == [3]  # the photo and the blank never reached the network
    body = response.get_json()
    results = body["results"]
    assert [r["status"] for r in results] == [200, 422, 422, 422, 200]
    assert body["succeeded"] == 2 and body["count"] == 5
    assert results[0]["input_check"]["status"] == "ok"
    assert results[4]["input_check"]["status"] == "warning"
    assert "low resolution" in results[4]["input_check"]["reasons"][0]
    for entry, reason in zip(results[1:4], ("colour photograph", "almost blank",
                                            "does not look like a chest X-ray")):
        assert entry["ok"] is False and "label" not in entry
        assert entry["error"]["code"] == "not_a_chest_xray"
        assert entry["input_check"]["status"] == "rejected"
        assert any(reason in r for r in entry["input_check"]["reasons"])


# -- pneumo predict ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_status_column_says_ok_warning_or_rejected(gated_bundle, tmp_path, fmt):
    folder = tmp_path / "images"
    folder.mkdir()
    files = {"a-good.png": fitted(2),
             "b-photo.jpg": colour_photo(),
             "c-small.png": fitted(5),
             "d-knee.png": knee(),
             "e-noise.png": encode(np.random.default_rng(1).integers(0, 256, (300, 300),
                                                                   dtype=np.uint8)),
             "f-broken.png": encode(synthetic_xray(9))[:200]}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out = tmp_path / f"rows.{fmt}"
    assert main(["predict", str(folder), "--model", str(gated_bundle), "--output", str(out),
                 "--format", fmt]) == 0
    if fmt == "csv":
        with open(out, newline="") as handle:
            rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    else:
        rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["a-good.png"]["status"] == "ok"
    assert rows["b-photo.jpg"]["status"] == \
        "rejected: looks like a colour photograph, not a radiograph"
    assert rows["c-small.png"]["status"] == "warning: low resolution (160x150 pixels)"
    assert rows["d-knee.png"]["status"].startswith(
        "rejected: does not look like a chest X-ray")
    assert rows["e-noise.png"]["status"] == "rejected: looks like random noise, not a radiograph"
    assert "truncated" in rows["f-broken.png"]["status"]
    for name in ("a-good.png", "c-small.png"):
        assert rows[name]["label"] in ("NORMAL", "PNEUMONIA")
        assert 0 <= float(rows[name]["probability"]) <= 1
    for name in ("b-photo.jpg", "d-knee.png", "e-noise.png", "f-broken.png"):
        assert not rows[name]["label"] and not rows[name]["probability"]


# -- row 24 --------------------------------------------------------------------------------

@pytest.mark.reliability(24)
def test_row24_non_xrays_are_never_a_confident_pneumonia_without_a_warning(
        gated_client, gated_predictor, reliability_figures):
    """Photos, documents, drawings, knee-like images, noise and blanks: each is refused
    or warned about, with the reason, on the tiny model with its fitted gate."""
    samples = all_samples()
    verdicts = {}
    for sample in samples:
        response = upload(gated_client, "/api/v1/predict?heatmap=false",
                          [(sample.filename, sample.data)])
        assert response.status_code in (200, 422), (sample.name, response.status_code)
        body = response.get_json()
        check = body["input_check"]
        assert check["reasons"], sample.name
        if response.status_code == 422:
            assert check["status"] == "rejected" and "label" not in body
            assert body["error"]["code"] == "not_a_chest_xray"
        else:  # a label may only come with a warning next to it
            assert check["status"] == "warning", (sample.name, body)
        verdicts[sample.name] = check["status"]
    refused = sum(v == "rejected" for v in verdicts.values())
    reliability_figures.add("Input gate on the tiny test model (row 24)",
                            "non-X-ray images sent (photos, documents, drawings, knee-like, "
                            "noise, blanks)", len(samples))
    reliability_figures.add("Input gate on the tiny test model (row 24)",
                            "refused (422 not_a_chest_xray)", refused)
    reliability_figures.add("Input gate on the tiny test model (row 24)",
                            "answered with a warning", len(samples) - refused)
    reliability_figures.add("Input gate on the tiny test model (row 24)",
                            "answered without a warning", 0)


def test_the_non_xray_set_is_what_it_says(tmp_path):
    """The generated set decodes, covers every category in gray and colour, and its
    knee-like images pass the pixel checks (so the feature gate is what refuses them)."""
    from pneumo.gate import image_checks
    from pneumo.imaging import load_image

    samples = all_samples()
    assert len({s.name for s in samples}) == len(samples) >= 60
    categories = {s.category for s in samples}
    assert categories == {"photo", "document", "drawing", "knee-like", "noise", "blank"}
    decoded = {s.name: load_image(s.data) for s in samples}
    for category in categories - {"knee-like"}:
        names = [s.name for s in samples if s.category == category]
        assert any(decoded[n].colorfulness > 12 for n in names), category
        assert any(decoded[n].colorfulness == 0 for n in names), category
    knees = [s.name for s in samples if s.category == "knee-like"]
    assert all(image_checks(decoded[n]).status == "ok" for n in knees)
    Image.open(io.BytesIO(samples[0].data)).verify()
