"""The JSON API through Flask's test client on a real tiny model: predictions,
heatmaps, batches, and every way an upload can be wrong (RELIABILITY.md rows
1-8, 22, 23)."""

from __future__ import annotations

import base64
import io
import os
import resource

import numpy as np
import pytest
from flask import request
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from conftest import encode, synthetic_xray
from pneumo.explain import heatmap_png
from pneumo.imaging import load_image
from pneumo.web import create_app


@pytest.fixture
def png() -> bytes:
    return encode(synthetic_xray(7, (300, 200), opacity=True))


def multipart(data: dict) -> tuple[bytes, str]:
    """``data`` (field -> value, ``(stream, name[, type])`` or a list of them) as a
    multipart body built in memory (the test client would spool big ones to an
    unclosed temporary file)."""
    items = MultiDict()
    for field, values in data.items():
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, tuple):
                stream, name, *kind = value
                value = FileStorage(stream, filename=name,
                                    content_type=kind[0] if kind else "image/png")
            items.add(field, value)
    boundary, body = encode_multipart(items)
    return body, f"multipart/form-data; boundary={boundary}"


def post(client, data, url="/api/v1/predict", **kwargs):
    body, content_type = multipart(data)
    return client.post(url, data=body, content_type=content_type, **kwargs)


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])), formats=["PNG"])


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


# -- predictions -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_predict_returns_the_predictors_answer(client, tiny_predictor, fmt):
    data = encode(synthetic_xray(3, (300, 200), opacity=True), fmt)
    response = post(client, {"file": (io.BytesIO(data), f"chest.{fmt.lower()}")})
    assert response.status_code == 200
    body = response.get_json()
    expected = tiny_predictor.predict(data)
    assert body["label"] == expected.label
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["threshold"] == tiny_predictor.threshold == tiny_predictor.card["threshold"]
    assert body["model"] == {"name": tiny_predictor.card["name"],
                             "version": tiny_predictor.card["version"]}
    assert body["filename"] == f"chest.{fmt.lower()}"
    assert body["input"] == {"format": fmt, "width": 200, "height": 300, "metadata": {}}
    assert "not a diagnosis" in body["disclaimer"]
    assert body["heatmap_shows"] == f"evidence for {expected.label}"


def test_heatmap_is_the_predictors_map_at_the_images_aspect_ratio(client, tiny_predictor, png):
    body = post(client, {"file": (io.BytesIO(png), "x.png")}).get_json()
    heatmap = decode_data_url(body["heatmap"])
    assert heatmap.mode == "P" and "transparency" in heatmap.info  # palette + alpha
    assert client.application.config["PNEUMO_HEATMAP_SIDE"] == 128
    assert heatmap.size == (85, 128)  # 200x300 scaled to a long side of PNEUMO_HEATMAP_SIDE
    expected = heatmap_png(tiny_predictor.predict(png).heatmap, (85, 128))
    assert base64.b64decode(body["heatmap"].split(",", 1)[1]) == expected


def test_heatmap_of_a_large_image_is_capped(client):
    """A 7x7 map needs no more than 128 pixels a side: upsampled bilinearly, 18 pixels
    per cell, it is as smooth as the browser's own scaling of it."""
    big = encode(synthetic_xray(1, (768, 1024)))
    body = post(client, {"file": (io.BytesIO(big), "big.png")}).get_json()
    assert body["input"]["width"] == 1024 and body["input"]["height"] == 768
    assert decode_data_url(body["heatmap"]).size == (128, 96)


@pytest.mark.parametrize("value", ["false", "0", "no", "FALSE"])
def test_heatmap_false_skips_it(client, png, value):
    body = post(client, {"file": (io.BytesIO(png), "x.png")},
                url=f"/api/v1/predict?heatmap={value}").get_json()
    assert body["heatmap"] is None and body["heatmap_shows"] is None
    assert body["label"] in ("NORMAL", "PNEUMONIA")


def test_image_true_returns_what_the_model_saw(client, png):
    body = post(client, {"file": (io.BytesIO(png), "x.png")},
                url="/api/v1/predict?image=true").get_json()
    image = decode_data_url(body["image"])
    assert image.mode == "L" and image.size == (200, 300)
    assert np.array_equal(np.asarray(image), load_image(png).pixels)
    assert "image" not in post(client, {"file": (io.BytesIO(png), "x.png")}).get_json()


def test_a_bad_flag_is_a_400(client, png):
    response = post(client, {"file": (io.BytesIO(png), "x.png")},
                    url="/api/v1/predict?heatmap=maybe")
    assert "heatmap" in assert_error(response, 400, "bad_request")


# -- uploads that are wrong (rows 1-5) -----------------------------------------------------

@pytest.mark.reliability(2)
def test_no_file_part_is_a_400(client):
    assert "'file'" in assert_error(post(client, {}), 400, "missing_file")
    message = assert_error(post(client, {"image": (io.BytesIO(b"x"), "x.png")}), 400,
                           "missing_file")
    assert "'image'" in message  # says which field it found instead
    assert_error(client.post("/api/v1/predict"), 400, "missing_file")
    assert_error(client.post("/api/v1/predict", data=b"raw bytes",
                             content_type="application/octet-stream"), 400, "missing_file")


@pytest.mark.reliability(2)
def test_an_empty_file_name_is_a_400(client, png):
    assert_error(post(client, {"file": (io.BytesIO(png), "")}), 400, "missing_file")


def test_two_files_on_the_single_endpoint_is_a_400(client, png):
    response = post(client, {"file": [(io.BytesIO(png), "a.png"), (io.BytesIO(png), "b.png")]})
    assert "batch" in assert_error(response, 400, "bad_request")


@pytest.mark.reliability(4)
def test_non_image_content_is_a_415(client):
    response = post(client, {"file": (io.BytesIO(b"just some text\n" * 20), "notes.png")})
    assert_error(response, 415, "unsupported_type")


@pytest.mark.reliability(4)
def test_html_disguised_as_png_is_refused_by_content(client):
    html = b"<!doctype html><html><script>alert(1)</script></html>"
    response = post(client, {"file": (io.BytesIO(html), "scan.png", "image/png")})
    assert_error(response, 415, "unsupported_type")


@pytest.mark.parametrize("name", ["x.jpg.php", "x.svg", "x.html", "scan.PHP", ".svg",
                                  "x.png.exe", "report.pdf"])
@pytest.mark.reliability(3)
def test_refused_extensions_even_with_png_content(client, png, name):
    message = assert_error(post(client, {"file": (io.BytesIO(png), name)}), 415,
                           "unsupported_type")
    assert name.rsplit(".", 1)[-1].lower() in message


@pytest.mark.parametrize("name", ["X.PNG", "scan.Jpeg", "IM-0001-0001", "x.php%00.jpg",
                                  "x.php\x00.png", "scan.dcm.png"])
@pytest.mark.reliability(3)
def test_allowed_names_pass_and_content_decides(client, png, name):
    response = post(client, {"file": (io.BytesIO(png), name)})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "\x00" not in response.get_json()["filename"]


@pytest.mark.parametrize("name, shown", [
    ("../../etc/passwd.png", "passwd.png"),
    ("/abs/path/x.png", "x.png"),
    ("C:/Users/me/x.png", "x.png"),
    ("r\u00f6ntgen-\u80f8\u90e8.png", "r\u00f6ntgen-\u80f8\u90e8.png"),
    ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(1)>.png"),
    ("tab\there\x7f.png", "tabhere.png"),
])
@pytest.mark.reliability(5)
def test_file_names_are_echoed_without_folders(client, png, name, shown):
    body = post(client, {"file": (io.BytesIO(png), name)}).get_json()
    assert body["filename"] == shown


@pytest.mark.reliability(5)
def test_a_very_long_name_is_shortened(client, png):
    body = post(client, {"file": (io.BytesIO(png), "a" * 300 + ".png")}).get_json()
    assert len(body["filename"]) == 120 and body["filename"].endswith("\u2026")


@pytest.mark.reliability(11)
def test_truncated_and_empty_images_are_a_422(client, png):
    assert "truncated" in assert_error(
        post(client, {"file": (io.BytesIO(png[: len(png) // 2]), "cut.png")}), 422,
        "unreadable_image").lower()
    assert_error(post(client, {"file": (io.BytesIO(b""), "empty.png")}), 422,
                 "unreadable_image")


@pytest.mark.reliability(1)
def test_a_body_over_the_default_limit_is_a_413(client):
    over = b"\0" * (32 * 2**20 + 1)
    message = assert_error(post(client, {"file": (io.BytesIO(over), "huge.png")}), 413,
                           "too_large")
    assert "32 MB" in message


@pytest.mark.reliability(1)
def test_upload_limit_is_configurable(tiny_predictor, png):
    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "MAX_CONTENT_LENGTH": 64 * 1024})
    client = app.test_client()
    assert post(client, {"file": (io.BytesIO(png), "ok.png")}).status_code == 200
    noise = np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)
    message = assert_error(post(client, {"file": (io.BytesIO(encode(noise)), "big.png")}),
                           413, "too_large")
    assert "64 kB" in message
    assert post(client, {"file": (io.BytesIO(png), "ok.png")}).status_code == 200


@pytest.mark.reliability(1)
@pytest.mark.parametrize("parts", [65, 500, 2000])
def test_thousands_of_parts_are_a_413(client, parts):
    """Our limit is 64 parts: 65 and 500 would pass Flask's default of 1,000."""
    fields = {f"field{i}": "x" for i in range(parts)}
    assert_error(post(client, fields), 413, "too_large")


def test_sixty_four_parts_are_still_read(client, xray_png):
    fields = {f"field{i}": "x" for i in range(63)}
    fields["file"] = (io.BytesIO(xray_png), "x.png")
    assert post(client, fields).status_code == 200


@pytest.mark.reliability(5)
def test_uploads_are_kept_in_memory(app):
    big = encode(np.random.default_rng(1).integers(0, 255, (900, 900), dtype=np.uint8))
    assert len(big) > 600_000  # Flask's default would spool this to a temporary file
    body, content_type = multipart({"file": (io.BytesIO(big), "big.png")})
    with app.test_request_context("/api/v1/predict", method="POST", data=body,
                                  content_type=content_type):
        assert isinstance(request.files["file"].stream, io.BytesIO)


# -- batch -----------------------------------------------------------------------------------

def test_batch_gives_one_entry_per_file_in_order(client, tiny_predictor):
    good = [encode(synthetic_xray(i, (160, 128), opacity=i % 2 == 0)) for i in range(3)]
    files = [(io.BytesIO(good[0]), "one.png"),
             (io.BytesIO(b"not an image"), "two.png"),
             (io.BytesIO(good[1]), "three.png"),
             (io.BytesIO(good[2][:100]), "four.png"),
             (io.BytesIO(good[2]), "five.exe"),
             (io.BytesIO(good[2]), "six.png")]
    response = post(client, {"file": files}, url="/api/v1/predict/batch")
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == {"name": tiny_predictor.name, "version": tiny_predictor.version}
    assert body["count"] == 6 and body["succeeded"] == 3
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["filename"] for r in results] == ["one.png", "two.png", "three.png", "four.png",
                                                "five.exe", "six.png"]
    assert [r["ok"] for r in results] == [True, False, True, False, False, True]
    assert [r["status"] for r in results] == [200, 415, 200, 422, 415, 200]
    assert results[1]["error"]["code"] == "unsupported_type"
    assert results[3]["error"]["code"] == "unreadable_image"
    for entry, data in zip((results[0], results[2], results[5]), (good[0], good[1], good[2])):
        expected = tiny_predictor.predict(data)
        assert entry["label"] == expected.label
        assert entry["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert entry["threshold"] == tiny_predictor.threshold
        assert decode_data_url(entry["heatmap"]).size == (102, 128)  # 128x160, long side 128


def test_batch_without_heatmaps_and_with_nothing_usable(client):
    files = [(io.BytesIO(encode(synthetic_xray(1))), "a.png"), (io.BytesIO(b"zz"), "b.png")]
    body = post(client, {"file": files}, url="/api/v1/predict/batch?heatmap=false").get_json()
    assert body["results"][0]["heatmap"] is None
    body = post(client, {"file": [(io.BytesIO(b"zz"), "b.png"), (io.BytesIO(b""), "")]},
                url="/api/v1/predict/batch").get_json()
    assert body["succeeded"] == 0
    assert [r["status"] for r in body["results"]] == [415, 400]
    assert body["results"][1]["filename"] is None


def test_batch_without_files_or_with_too_many(client, tiny_predictor):
    assert_error(post(client, {}, url="/api/v1/predict/batch"), 400, "missing_file")
    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_MAX_BATCH_FILES": 2})
    png = encode(synthetic_xray(1, (64, 64)))
    files = [(io.BytesIO(png), f"{i}.png") for i in range(3)]
    message = assert_error(post(app.test_client(), {"file": files},
                                url="/api/v1/predict/batch"), 413, "too_many_files")
    assert "at most 2" in message


# -- the other routes and the error shape -------------------------------------------------------

def test_health_and_model_card(client, tiny_predictor):
    health = client.get("/api/v1/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "ready"
    card = client.get("/api/v1/model")
    assert card.status_code == 200 and card.mimetype == "application/json"
    public = card.get_json()
    assert public["threshold"] == tiny_predictor.card["threshold"]
    assert public["class_names"] == ["NORMAL", "PNEUMONIA"]
    for private in ("libraries", "files", "training", "format_version"):
        assert private not in public
    local = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                        "PNEUMO_LOCAL_USER": True, "PNEUMO_KEEP_STUDIES": False})
    assert local.test_client().get("/api/v1/model").get_json() == tiny_predictor.card


def test_the_public_card_hides_training_paths_and_versions(shipped_bundle):
    """The shipped card names training folders, commands and library versions."""
    from pneumo.bundle import read_card
    from pneumo.web.api import PUBLIC_CARD_FIELDS

    card = read_card(shipped_bundle)
    public = str({key: card[key] for key in PUBLIC_CARD_FIELDS if key in card})
    folders = [source["folder"] for source in card["training"]["data"]["sources"].values()]
    assert folders and all(folder in str(card) for folder in folders)
    for private in (*folders, card["training"]["command"], card["libraries"]["tensorflow"],
                    "model.keras"):
        assert private not in public, private
    # the figures per population are public: integrators choose by them
    assert "validation_by_set" in public and "development_sets" in public


def test_openapi_never_echoes_the_host_header(client):
    spec = client.get("/api/v1/openapi.json", headers={"Host": "evil.example"}).get_json()
    assert spec["servers"] == [{"url": "/"}]
    assert "evil.example" not in str(spec)


def test_model_card_with_undefined_metrics_is_still_valid_json(tiny_predictor):
    import copy
    import json

    predictor = copy.copy(tiny_predictor)
    predictor.card = {**tiny_predictor.card,
                      "validation": {"roc_auc": float("nan"), "ppv": float("inf"),
                                     "n": np.int64(3)}}
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": predictor}).test_client()
    text = client.get("/api/v1/model").get_data(as_text=True)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["validation"] == {"roc_auc": None, "ppv": None, "n": 3}


@pytest.mark.parametrize("method, path, status, code", [
    ("get", "/api/v1/nothing", 404, "not_found"),
    ("get", "/api/v2/predict", 404, "not_found"),
    ("get", "/api/v1/predict", 405, "method_not_allowed"),
    ("delete", "/api/v1/predict/batch", 405, "method_not_allowed"),
    ("post", "/api/v1/health", 405, "method_not_allowed"),
    ("put", "/api/v1/model", 405, "method_not_allowed"),
])
def test_api_404_and_405_are_json(client, method, path, status, code):
    response = getattr(client, method)(path)
    assert_error(response, status, code)
    if status == 405:
        assert response.headers["Allow"]


@pytest.mark.reliability(8)
def test_an_internal_error_is_a_generic_500(client, tiny_predictor, png, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("tensor exploded at /secret/internal/path.py")

    monkeypatch.setattr(tiny_predictor, "predict_batch", broken)
    response = post(client, {"file": (io.BytesIO(png), "x.png")})
    message = assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert "logged" in message
    assert "tensor exploded" in caplog.text


def test_a_model_that_is_not_ready_gives_503(tmp_path, png):
    app = create_app({"TESTING": True, "PNEUMO_MODEL": str(tmp_path / "none"),
                      "PNEUMO_MODEL_LOADING": "background"})
    app.extensions["pneumo.model"].wait(60)
    client = app.test_client()
    response = post(client, {"file": (io.BytesIO(png), "x.png")})
    assert_error(response, 503, "model_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert_error(client.get("/api/v1/model"), 503, "model_unavailable")


@pytest.mark.reliability(23)
def test_a_slow_inference_times_out_and_the_next_request_succeeds(app, png):
    """Row 23: the client gets an error, not a hung request; the service recovers."""
    client = app.test_client()
    app.config["PNEUMO_INFERENCE_TIMEOUT"] = 1e-4  # far less than one forward pass
    response = post(client, {"file": (io.BytesIO(png), "x.png")})
    assert "try again" in assert_error(response, 504, "timeout")
    app.config["PNEUMO_INFERENCE_TIMEOUT"] = 60
    response = post(client, {"file": (io.BytesIO(png), "x.png")})
    assert response.status_code == 200


# -- cross-site posts (row 7) --------------------------------------------------------------

@pytest.mark.reliability(7)
def test_posts_from_another_site_are_refused(client, png):
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"}):
        response = post(client, {"file": (io.BytesIO(png), "x.png")}, headers=headers)
        assert_error(response, 403, "cross_origin")
    for headers in ({"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
                    {"Origin": "http://localhost"},
                    # behind a proxy that rewrites Host, the browser's own word counts
                    {"Origin": "https://xray.hospital.example", "Sec-Fetch-Site": "same-origin"},
                    {}):
        same = post(client, {"file": (io.BytesIO(png), "x.png")}, headers=headers)
        assert same.status_code == 200, headers
    assert client.get("/api/v1/health", headers={"Origin": "https://evil.example"}
                      ).status_code == 200


# -- memory (row 22) ----------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.reliability(22)
def test_memory_stays_flat_over_many_predictions(client):
    data = encode(synthetic_xray(5, (128, 128)))
    for _ in range(20):  # warm-up: graph tracing, allocator pools
        post(client, {"file": (io.BytesIO(data), "x.png")})
    before = _rss_bytes()
    for _ in range(200):
        assert post(client, {"file": (io.BytesIO(data), "x.png")}).status_code == 200
    growth = _rss_bytes() - before
    assert growth < 25 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB"


@pytest.mark.reliability(26)
def test_a_batch_stops_decoding_when_its_time_budget_is_spent(tiny_predictor, xray_png):
    """Files not reached within the budget are answered 503 ``time_budget``, each; the
    ones decoded in time are predicted."""
    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_KEEP_STUDIES": False, "PNEUMO_BATCH_TIME_BUDGET": 1e-9})
    response = app.test_client().post("/api/v1/predict/batch", data={"file": [
        (io.BytesIO(xray_png), f"x{i}.png") for i in range(3)]})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results[0]["ok"] is True
    assert [(r["status"], r["error"]["code"]) for r in results[1:]] == [(503, "time_budget")] * 2
    assert "send it again" in results[1]["error"]["message"]
    assert create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor}).config[
        "PNEUMO_BATCH_TIME_BUDGET"] == 20.0
