"""Bundle save/load: checksums, clear errors, and the card's contents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.bundle import BundleError, ModelCard, load_bundle, read_card
from pneumo.predictor import Predictor
from synthetic import encode, synthetic_xray


def test_bundle_round_trip_keeps_weights_and_card(tiny_bundle):
    model, card = load_bundle(tiny_bundle)
    assert card["threshold"] == 0.5
    assert card["files"]["model.keras"]
    assert card["libraries"]["keras"].startswith("3.")
    assert "intended_use" in card and card["limitations"]
    assert model.get_layer("logit").get_weights()[0].shape == (2048, 1)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Predictor.from_bundle(tmp_path / "nowhere")


def test_folder_without_card_is_not_a_bundle(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="card.json is missing"):
        read_card(tmp_path / "b")


def test_corrupt_model_file_fails_the_checksum(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    with open(copy / "model.keras", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(copy)


def test_incompatible_format_version_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    card = json.loads((copy / "card.json").read_text())
    card["format_version"] = 99
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(copy)


def test_unparsable_card_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    (copy / "card.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        read_card(copy)


def test_threshold_and_temperature_come_from_the_card(tiny_bundle, tmp_path):
    """Change the card and the labels change: nothing is a constant in the code."""
    from conftest import build_tiny_bundle

    image = encode(synthetic_xray(5))
    low = Predictor.from_bundle(build_tiny_bundle(tmp_path / "low", threshold=0.0))
    high = Predictor.from_bundle(build_tiny_bundle(tmp_path / "high", threshold=1.0 + 1e-9))
    assert low.predict(image, heatmap=False).label == "PNEUMONIA"
    assert high.predict(image, heatmap=False).label == "NORMAL"
    hot = Predictor.from_bundle(build_tiny_bundle(tmp_path / "hot", temperature=1e-3))
    p_cold = low.predict(image, heatmap=False)
    p_hot = hot.predict(image, heatmap=False)
    assert p_cold.logit == pytest.approx(p_hot.logit, abs=1e-4)
    if abs(p_cold.logit) > 1e-3:
        assert abs(p_hot.probability - 0.5) > abs(p_cold.probability - 0.5)


def test_heatmap_is_the_exact_decomposition_of_the_logit(tiny_predictor):
    """With GAP + dense, mean(CAM) + bias equals the logit: the heatmap is not decoration."""
    from pneumo.explain import class_activation_maps

    batch = np.stack([tiny_predictor.prepare(encode(synthetic_xray(s, opacity=s % 2 == 1)))
                      for s in range(3)])
    features, logits = tiny_predictor.engine(batch)
    cams = class_activation_maps(features, tiny_predictor.engine.logit_weights)
    bias = tiny_predictor.engine.logit_bias
    np.testing.assert_allclose(cams.mean(axis=(1, 2)) + bias, np.asarray(logits).ravel(),
                               rtol=1e-4, atol=1e-5)
    for result in tiny_predictor.predict_batch(batch):
        assert result.heatmap.shape == features.shape[1:3]
        assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0


def test_the_shipped_card_reads_as_a_typed_card_and_writes_back_unchanged(tmp_path):
    path = Path(__file__).resolve().parents[1] / "models" / "pneumo-xception" / "card.json"
    card = ModelCard.read(path)
    assert card.schema_version == 1 and card.class_names == ("NORMAL", "PNEUMONIA")
    raw = json.loads(path.read_text())
    assert card.input.size == raw["input"]["size"] and card.threshold == raw["threshold"]
    assert card.calibration.temperature == raw["calibration"]["temperature"] > 0
    card.write(tmp_path / "card.json")
    assert json.loads((tmp_path / "card.json").read_text()) == json.loads(path.read_text())


def test_a_typed_card_names_the_bad_field_and_says_how_to_update_an_old_one(tiny_bundle):
    card = json.loads((tiny_bundle / "card.json").read_text())
    with pytest.raises(BundleError, match=r"'calibration.temperature' must be a positive"):
        ModelCard.from_dict({**card, "calibration": {"temperature": -1}})
    with pytest.raises(BundleError, match="format None.*use the pneumo that wrote it"):
        ModelCard.from_dict({k: v for k, v in card.items() if k != "format_version"})
