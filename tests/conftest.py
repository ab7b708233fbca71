"""Shared fixtures: generated X-ray-like images, a tiny real bundle, the shipped bundle.

The tiny bundle is the real Xception builder at a small input size with random
weights: every code path runs for real, in seconds.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN_DATA = SHARED / "data" / "chest_xray" / "train"
BACKBONE_WEIGHTS = SHARED / "weights" / "xception_imagenet_notop.weights.h5"
SHIPPED_BUNDLE = ROOT / "models" / "pneumo-xception"
TINY_SIZE = 71  # the smallest input Xception accepts


def synthetic_xray(seed: int = 0, size: tuple[int, int] = (256, 256), opacity: bool = False) -> np.ndarray:
    """A grayscale picture shaped like a frontal chest film: dark lungs in a bright body,
    a spine, ribs, and optionally a bright patch (a consolidation-like opacity)."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    image = 170 + 30 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    for centre in (0.3, 0.7):
        lung = ((xx - centre) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        image[lung] = 70
        ribs = lung & (np.sin(yy * 40 + (xx - centre) * 6) > 0.7)
        image[ribs] += 40
    if opacity:
        patch = ((xx - 0.68) / 0.09) ** 2 + ((yy - 0.62) / 0.1) ** 2 < 1
        image[patch] += 70
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def make_dataset(root: Path, n_per_class: int = 6, size: tuple[int, int] = (96, 96)) -> Path:
    """A labelled folder in the user-facing layout, two images per patient id."""
    for label, opacity in (("NORMAL", False), ("PNEUMONIA", True)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            if label == "NORMAL":
                name = f"IM-{i // 2:04d}-{i % 2 + 1:04d}.png"
            else:
                name = f"person{i // 2}_bacteria_{i}.png"
            (folder / name).write_bytes(encode(synthetic_xray(i + (100 if opacity else 0), size,
                                                              opacity)))
    return root


def build_tiny_bundle(path: Path, threshold: float = 0.5, temperature: float = 1.0) -> Path:
    from pneumo.bundle import save_bundle
    from pneumo.models import build_model

    model = build_model(TINY_SIZE, "random", dropout=0.0)
    card = {
        "name": "pneumo-xception-tiny-test",
        "version": "0.0.0+test",
        "class_names": ["NORMAL", "PNEUMONIA"],
        "input": {"size": TINY_SIZE, "channels": 1, "dtype": "uint8", "value_range": [0, 255],
                  "preprocessing": "test", "preprocessing_version": 1},
        "threshold": threshold,
        "threshold_method": "test",
        "calibration": {"method": "temperature scaling", "temperature": temperature},
        "validation": {"roc_auc": 0.5},
    }
    return save_bundle(path, model, card)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real bundle (random-weight Xception at 71x71), built once per test session."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_predictor(tiny_bundle):
    from pneumo.predictor import Predictor

    return Predictor.from_bundle(tiny_bundle)


@pytest.fixture
def xray_png() -> bytes:
    return encode(synthetic_xray(1, opacity=True))


@pytest.fixture
def train_data() -> Path:
    if not TRAIN_DATA.is_dir():
        pytest.skip(f"real training X-rays not found at {TRAIN_DATA} (../shared/data)")
    return TRAIN_DATA


@pytest.fixture(scope="session")
def shipped_bundle() -> Path:
    if not (SHIPPED_BUNDLE / "card.json").is_file():
        pytest.skip(f"no shipped bundle at {SHIPPED_BUNDLE}")
    return SHIPPED_BUNDLE
