"""The bundle shipped in models/: it loads, it is consistent, and it still works.

On generated inputs always; on real validation X-rays (the card's own split,
re-derived) where ../shared/data is present.
"""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.bundle import MODEL_FILE, load_bundle, sha256_of
from pneumo.predictor import Predictor
from synthetic import encode, synthetic_xray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(shipped_bundle):
    return Predictor.from_bundle(shipped_bundle)


def test_bundle_is_under_100_mb_and_matches_its_checksum(shipped_bundle):
    size = sum(p.stat().st_size for p in shipped_bundle.rglob("*") if p.is_file())
    assert size < 100 * 1024 * 1024
    model, card = load_bundle(shipped_bundle)
    assert sha256_of(shipped_bundle / MODEL_FILE) == card["files"][MODEL_FILE]


def test_card_describes_the_model(shipped_bundle):
    _, card = load_bundle(shipped_bundle)
    assert card["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert card["training"]["command"].startswith("pneumo train")
    assert 0.0 < card["threshold"] < 1.0
    assert card["calibration"]["temperature"] > 0
    validation = card["validation"]
    assert validation["roc_auc_ci95"][0] <= validation["roc_auc"] <= validation["roc_auc_ci95"][1]
    assert card["calibration"]["ece_after"] <= card["calibration"]["ece_before"] + 1e-9
    for plot in ("roc.png", "confusion_matrix.png", "learning_curves.png", "reliability.png"):
        assert (shipped_bundle / "plots" / plot).is_file()


def test_predicts_generated_inputs_of_any_size(shipped):
    # Xception halves the input five times: the heatmap has one cell per 32 input pixels
    side = -(-shipped.image_size // 32)
    for size in ((224, 224), (1024, 800), (300, 900)):
        result = shipped.predict(encode(synthetic_xray(7, size=size)))
        assert result.heatmap.shape == (side, side)
        assert result.probability == pytest.approx(
            float(shipped.calibrate(np.array([result.logit]))[0]))
        assert (result.label == "PNEUMONIA") == (result.probability >= shipped.threshold)


def test_batch_and_single_predictions_agree(shipped):
    images = [encode(synthetic_xray(s, opacity=bool(s % 2))) for s in range(4)]
    batch = np.stack([shipped.prepare(image) for image in images])
    together = shipped.predict_batch(batch, heatmaps=False)
    alone = [shipped.predict(image, heatmap=False) for image in images]
    np.testing.assert_allclose([r.probability for r in together], [r.probability for r in alone],
                               atol=1e-5)


def test_real_validation_images_are_still_recognised(shipped, shipped_bundle, train_data):
    """Re-derive the card's validation split and check a sample of it."""
    from sklearn.metrics import roc_auc_score

    from pneumo.config import TrainConfig
    from pneumo.data import load_images
    from pneumo.train import prepare_split

    _, card = load_bundle(shipped_bundle)
    settings = card["training"]["config"]
    config = TrainConfig(data_dir=str(train_data), seed=settings["seed"],
                         validation_design=settings["validation_design"],
                         val_fraction=settings["val_fraction"])
    _, val, _ = prepare_split(config)
    rng = np.random.default_rng(0)
    sample = [val[i] for i in sorted(rng.choice(len(val), size=min(160, len(val)), replace=False))]
    sample, images = load_images(sample, shipped.image_size, normalization=shipped.normalization,
                                 use_cache=False, progress=False)
    y = np.array([s.label for s in sample])
    p = np.concatenate([[r.probability for r in shipped.predict_batch(images[i:i + 32], False)]
                        for i in range(0, len(images), 32)])
    assert roc_auc_score(y, p) > 0.95
    assert ((p >= shipped.threshold) == y).mean() > 0.88
