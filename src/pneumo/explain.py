"""Heatmaps of where the model looked: computing them (here) is separate from
drawing them (``overlay``).

With a global-average-pooling + dense head, the logit is the mean over
positions of ``features[y, x] . w`` plus the bias, so the class activation map
``features . w`` (Zhou et al., 2016) is the exact spatial decomposition of the
score: Grad-CAM on this head gives the same map up to scale, without a
gradient pass.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image


def class_activation_maps(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Signed per-position contributions to the logit: ``(N, h, w)`` from ``(N, h, w, C)``."""
    return np.tensordot(np.asarray(features, dtype=np.float32),
                        np.asarray(weights, dtype=np.float32).reshape(-1), axes=([-1], [0]))


def evidence_map(cam: np.ndarray, positive: bool) -> np.ndarray:
    """Evidence for one class scaled to [0, 1]: positive positions for PNEUMONIA,
    negative ones for NORMAL. An image with no such evidence gives all zeros."""
    evidence = np.maximum(cam if positive else -cam, 0.0)
    peak = float(evidence.max())
    return (evidence / peak).astype(np.float32) if peak > 0 else np.zeros_like(evidence, np.float32)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse map to ``(width, height)``."""
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45,
            colormap: str = "jet") -> np.ndarray:
    """RGB uint8 picture of ``heatmap`` (any size, [0, 1]) drawn over a grayscale image."""
    from matplotlib import colormaps

    height, width = gray.shape
    heat = resize_map(heatmap, (width, height))
    colours = colormaps[colormap](heat)[..., :3]
    weight = (alpha * heat)[..., None]  # cold regions stay see-through
    base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return np.round((base * (1 - weight) + colours * weight) * 255).astype(np.uint8)


def heatmap_png(heatmap: np.ndarray, size: tuple[int, int], colormap: str = "jet") -> bytes:
    """The heatmap alone as a PNG whose transparency follows the evidence, for overlays
    drawn by a browser with an opacity slider.

    The colour map has 256 levels, so the PNG is a 256-colour palette with one
    alpha per colour: the same pixels as an RGBA image (alpha within 1/255),
    a quarter of the bytes to compress and send, and several times faster."""
    import io

    heat = resize_map(heatmap, size)
    colours, alpha = _palette(colormap)
    levels = np.minimum((heat * len(alpha)).astype(np.int32), len(alpha) - 1).astype(np.uint8)
    image = Image.frombytes("P", (levels.shape[1], levels.shape[0]), levels.tobytes())
    image.putpalette(colours)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=alpha, compress_level=1)  # smooth: level 1 suffices
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _palette(colormap: str) -> tuple[bytes, bytes]:
    """RGB palette and per-colour alpha of ``colormap``'s levels; level ``i`` holds the
    heat values in ``[i / n, (i + 1) / n)``, as matplotlib bins them."""
    from matplotlib import colormaps

    table = colormaps[colormap]
    levels = table.N
    colours = np.round(table(np.arange(levels))[:, :3] * 255).astype(np.uint8)
    alpha = np.clip((np.arange(levels) + 0.5) / levels * 1.25, 0.0, 1.0)
    return colours.tobytes(), np.round(alpha * 255).astype(np.uint8).tobytes()
