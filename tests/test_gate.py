"""The input gate's logic on inputs with known answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumo.gate import Assessment, FeatureGate, image_checks
from pneumo.imaging import DecodedImage, load_image
from synthetic import encode, synthetic_xray


def _gaussian_features(rng, n, shift=0.0, dims=64):
    scales = np.linspace(3.0, 0.2, dims)
    return rng.normal(0, 1, (n, dims)) * scales + shift


def test_feature_gate_rejects_about_one_percent_of_new_in_distribution_samples():
    rng = np.random.default_rng(0)
    gate = FeatureGate.fit(_gaussian_features(rng, 3000), _gaussian_features(rng, 2000),
                           n_components=16)
    fresh = gate.score(_gaussian_features(rng, 5000))
    assert 0.003 < np.mean(fresh > gate.reject_above) < 0.025
    assert gate.warn_above < gate.reject_above


def test_feature_gate_rejects_shifted_samples_inside_and_outside_its_subspace():
    rng = np.random.default_rng(1)
    gate = FeatureGate.fit(_gaussian_features(rng, 3000), _gaussian_features(rng, 2000),
                           n_components=16)
    far_along_top = _gaussian_features(rng, 200) + np.r_[30.0, np.zeros(63)]  # 10 sd
    far_along_tail = _gaussian_features(rng, 200) + np.r_[np.zeros(16), np.full(48, 2.5)]
    assert np.mean(gate.score(far_along_top) > gate.reject_above) > 0.95
    assert np.mean(gate.score(far_along_tail) > gate.reject_above) > 0.95


def test_feature_gate_round_trips_through_a_file(tmp_path):
    rng = np.random.default_rng(2)
    gate = FeatureGate.fit(_gaussian_features(rng, 500), _gaussian_features(rng, 300), 8)
    gate.save(tmp_path / "gate.npz")
    loaded = FeatureGate.load(tmp_path / "gate.npz")
    probe = _gaussian_features(rng, 10)
    np.testing.assert_allclose(loaded.score(probe), gate.score(probe), rtol=1e-4)
    assert loaded.reject_above == pytest.approx(gate.reject_above)


def test_a_generated_xray_passes_the_image_checks():
    assert image_checks(load_image(encode(synthetic_xray(0, size=(512, 480))))).status == "ok"


@pytest.mark.parametrize("pixels, rgb, expected, reason", [
    (np.full((400, 400), 128, np.uint8), False, "rejected", "almost blank"),
    (synthetic_xray(1, size=(40, 40)), False, "rejected", "very low resolution"),
    (synthetic_xray(1, size=(150, 150)), False, "warning", "low resolution"),
    (synthetic_xray(1, size=(200, 800)), False, "warning", "unusual shape"),
    (None, True, "rejected", "colour photograph"),
    (np.random.default_rng(2).integers(0, 256, (300, 300), dtype=np.uint8), False, "rejected",
     "random noise"),
    (np.where(np.random.default_rng(3).random((300, 300)) < 0.5, 0, 255).astype(np.uint8),
     False, "rejected", "random noise"),
])
def test_image_checks_explain_refusals(pixels, rgb, expected, reason):
    if rgb:
        rng = np.random.default_rng(0)
        photo = np.zeros((300, 300, 3), np.uint8)
        photo[..., 0] = 200
        photo[..., 1] = rng.integers(0, 255, (300, 300))
        image = load_image(encode(photo))
    else:
        image = DecodedImage(pixels=pixels, format="PNG")
    result = image_checks(image)
    assert result.status == expected
    assert any(reason in r for r in result.reasons)


def test_assessment_keeps_the_worst_status():
    result = Assessment()
    result.add("warning", "a")
    result.add("rejected", "b")
    result.add("warning", "c")
    assert result.status == "rejected" and result.reasons == ["a", "b", "c"]


def test_neighbour_correlation_tells_radiographs_from_noise():
    from pneumo.gate import MIN_NEIGHBOUR_CORRELATION, neighbour_correlation

    assert neighbour_correlation(synthetic_xray(0, (512, 480))) > 0.9
    noise = np.random.default_rng(0).integers(0, 256, (512, 480), dtype=np.uint8)
    assert abs(neighbour_correlation(noise)) < 0.1 < MIN_NEIGHBOUR_CORRELATION
    assert neighbour_correlation(np.zeros((10, 10), np.uint8)) == 1.0  # flat: blank's job


def test_assessment_summary_and_json():
    result = Assessment()
    assert result.summary() == "ok"
    assert result.to_dict() == {"status": "ok", "reasons": [], "feature_score": None}
    result.add("warning", "low resolution (150x150 pixels)")
    result.feature_score = 1.23456
    assert result.summary() == "warning: low resolution (150x150 pixels)"
    assert result.to_dict()["feature_score"] == 1.235
    result.add("rejected", "almost blank")
    assert result.summary() == "rejected: low resolution (150x150 pixels); almost blank"


def test_shape_and_resolution_are_judged_on_the_image_as_sent_not_as_decoded():
    wide = Image.fromarray(synthetic_xray(2, size=(700, 2100)))
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", quality=90)
    decoded = load_image(buffer.getvalue(), reduce_to=200)
    assert decoded.pixels.shape == (350, 1050)  # decoded at half scale
    result = image_checks(decoded)
    assert result.status == "warning"
    assert result.reasons == ["unusual shape for a chest film (2100x700)"]


def test_cut_offs_hold_for_every_source_not_just_the_largest():
    """A small source whose X-rays sit further from the pooled training features (adults
    beside children) must not be refused more often than the percentile says."""
    rng = np.random.default_rng(3)
    train = np.concatenate([rng.normal(0, 1, (900, 16)), rng.normal(1.5, 1, (100, 16))])
    large, small = rng.normal(0, 1, (900, 16)), rng.normal(1.5, 1.3, (100, 16))
    val = np.concatenate([large, small])
    sources = np.array(["kids"] * 900 + ["adults"] * 100)
    pooled = FeatureGate.fit(train, val, n_components=8, reject_percentile=99.0)
    per_source = FeatureGate.fit(train, val, n_components=8, reject_percentile=99.0,
                                 val_sources=sources)
    assert np.mean(pooled.score(small) > pooled.reject_above) > 0.01
    for part in (large, small):
        assert np.mean(per_source.score(part) > per_source.reject_above) <= 0.01
    assert per_source.reject_above == pytest.approx(max(
        np.percentile(per_source.score(part), 99.0) for part in (large, small)))
