"""Generated test inputs: nothing from ../shared/data is ever copied into the repo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


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
