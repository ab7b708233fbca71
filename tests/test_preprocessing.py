"""One preprocessing path: training and prediction must see identical inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.data import decode_for_model, discover, load_images
from pneumo.preprocessing import to_model_input
from synthetic import encode, make_dataset, synthetic_xray


def test_training_and_prediction_inputs_are_identical(tmp_path, tiny_predictor):
    make_dataset(tmp_path, n_per_class=3, size=(300, 200))
    samples, _ = discover(tmp_path)
    kept, training_inputs = load_images(samples, tiny_predictor.image_size, use_cache=False,
                                        progress=False)
    for sample, training_input in zip(kept, training_inputs):
        served = tiny_predictor.prepare(sample.path.read_bytes())
        np.testing.assert_array_equal(served, training_input)
        np.testing.assert_array_equal(decode_for_model(sample.path, tiny_predictor.image_size),
                                      training_input)


def test_resize_ignores_aspect_ratio_like_the_training_collection():
    wide = synthetic_xray(0, size=(100, 300))
    out = to_model_input(wide, 64)
    assert out.shape == (64, 64, 1) and out.dtype == np.uint8


def test_input_of_the_right_size_passes_through_unchanged():
    image = synthetic_xray(2, size=(71, 71))
    np.testing.assert_array_equal(to_model_input(image, 71)[..., 0], image)


def test_colour_and_grayscale_encodings_of_one_image_agree(tiny_predictor):
    gray = synthetic_xray(3)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(tiny_predictor.prepare(encode(gray)),
                                  tiny_predictor.prepare(encode(rgb)))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32)])
def test_to_model_input_rejects_wrong_arrays(bad):
    with pytest.raises(ValueError):
        to_model_input(bad, 8)


def test_scaling_lives_in_the_model(tiny_bundle):
    """The [-1, 1] scaling is a layer of the saved model, so no caller can re-type it."""
    from pneumo.bundle import load_bundle

    model, _ = load_bundle(tiny_bundle)
    scale = model.get_layer("scale")
    assert scale.scale == pytest.approx(1 / 127.5) and scale.offset == pytest.approx(-1.0)
    assert model.input.dtype == "uint8"


def test_clahe_evens_out_exposure_and_keeps_the_shape():
    dark = (synthetic_xray(4).astype(np.float32) * 0.35).astype(np.uint8)  # an underexposed film
    out = to_model_input(dark, 71, "clahe")
    assert out.shape == (71, 71, 1) and out.dtype == np.uint8
    plain = to_model_input(dark, 71)
    assert out.std() > 1.5 * plain.std()  # contrast stretched
    equalized = to_model_input(dark, 71, "equalize")
    assert equalized.max() == 255 and plain.max() < 128
    with pytest.raises(ValueError, match="unknown intensity normalisation"):
        to_model_input(dark, 71, "gamma")


def test_the_cards_normalisation_is_applied_in_serving_as_in_training(tmp_path, tiny_bundle):
    import json
    import shutil

    from pneumo.predictor import Predictor

    bundle = tmp_path / "clahe-bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["input"]["normalization"] = "clahe"
    (bundle / "card.json").write_text(json.dumps(card))
    predictor = Predictor.from_bundle(bundle)
    make_dataset(tmp_path / "data", n_per_class=2, size=(300, 200))
    samples, _ = discover(tmp_path / "data")
    kept, training_inputs = load_images(samples, predictor.image_size, normalization="clahe",
                                        use_cache=False, progress=False)
    for sample, training_input in zip(kept, training_inputs):
        np.testing.assert_array_equal(predictor.prepare(sample.path.read_bytes()), training_input)
        assert not np.array_equal(training_input, decode_for_model(sample.path, predictor.image_size))
