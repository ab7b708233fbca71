"""The screening flow (``pneumo.screening``) on the tiny real model: one refusal
before the network, one after it, and the same answer through the API and the CLI."""

from __future__ import annotations

import io

import numpy as np
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from pneumo.predict_files import predict_paths
from pneumo.imaging import ImageError
from pneumo.screening import Admitted, Refusal, Screened, admit, conclude, screen
from pneumo.web import create_app
from synthetic import encode, synthetic_xray


def test_unreadable_bytes_are_refused_with_the_decoders_error(tiny_predictor):
    refusal = admit(tiny_predictor, b"not an image at all")
    assert isinstance(refusal, Refusal) and isinstance(refusal.error, ImageError)
    assert refusal.assessment is None and refusal.reason == str(refusal.error)


def test_a_blank_is_refused_before_the_network_with_its_reasons(tiny_predictor, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the network ran on an input the image checks refuse")

    monkeypatch.setattr(tiny_predictor, "predict_batch", never)
    refusal = screen(tiny_predictor, encode(np.full((300, 300), 128, np.uint8)))
    assert isinstance(refusal, Refusal) and refusal.assessment.status == "rejected"
    assert refusal.reason.startswith("rejected: ") and refusal.assessment.reasons


def test_an_xray_is_admitted_then_screened_with_the_cards_label(tiny_predictor):
    admitted = admit(tiny_predictor, encode(synthetic_xray(4, (256, 256))))
    assert isinstance(admitted, Admitted)
    assert admitted.model_input.shape == (tiny_predictor.image_size,) * 2 + (1,)
    prediction = tiny_predictor.predict_batch(admitted.model_input[None])[0]
    screened = conclude(tiny_predictor, admitted.checks, prediction)
    assert isinstance(screened, Screened)
    assert screened.prediction.label == ("PNEUMONIA" if prediction.probability
                                         >= tiny_predictor.threshold else "NORMAL")
    assert admitted.checks.feature_score is None  # the checks are copied, not changed


def test_the_api_and_the_cli_answer_one_file_alike(tiny_predictor, tmp_path):
    """Both translate the same flow: same probability, label and status for a file."""
    files = {"xray.png": encode(synthetic_xray(5, (256, 256))),
             "blank.png": encode(np.full((300, 300), 128, np.uint8))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rows = {row["path"]: row for row in predict_paths(
        tiny_predictor, sorted(tmp_path.iterdir()), progress=False)}
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor}).test_client()
    for name, data in files.items():
        boundary, body = encode_multipart(
            MultiDict([("file", FileStorage(io.BytesIO(data), filename=name))]))
        answer = client.post("/api/v1/predict?heatmap=false&keep=false", data=body,
                             content_type=f"multipart/form-data; boundary={boundary}")
        row = rows[str(tmp_path / name)]
        if answer.status_code == 200:
            body = answer.get_json()
            assert row["label"] == body["label"]
            assert float(row["probability"]) == round(body["probability"], 6)
            assert row["status"].split(":")[0] == body["input_check"]["status"]
        else:
            assert answer.status_code == 422 and row["label"] == ""
            assert row["status"] == "rejected: " + "; ".join(
                answer.get_json()["input_check"]["reasons"])
