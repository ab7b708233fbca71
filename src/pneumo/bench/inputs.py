"""Generated uploads for the benchmark: X-ray-like pictures of any size, or
resized copies of real X-rays (``pneumo bench --source``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_xray(seed: int, side: int) -> np.ndarray:
    """A grayscale picture shaped like a frontal chest film: dark lungs in a brighter
    body, a spine, ribs, sometimes a bright patch, noise. Not a radiograph: a
    stand-in of realistic size and texture for timing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = 165 + 35 * np.exp(-((xx - 0.5) ** 2) / 0.01) - 40 * yy ** 2
    for centre in (0.3 + rng.uniform(-0.02, 0.02), 0.7 + rng.uniform(-0.02, 0.02)):
        lung = ((xx - centre) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
        image[lung] = 60 + 20 * yy[lung]
        ribs = lung & (np.sin(yy * 38 + np.abs(xx - 0.5) * 8) > 0.6)
        image[ribs] += 35
    if seed % 2:
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.7)
        image += 60 * np.exp(-(((xx - cx) / 0.07) ** 2 + ((yy - cy) / 0.09) ** 2))
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int, side: int, source: str | None = None,
                 fmt: str = "png") -> list[Path]:
    """``count`` PNG or JPEG uploads of ``side`` x ``side`` pixels: drawn, or made from the
    X-rays under ``source`` (resized, with detector-like noise so that no two are
    the same file)."""
    from PIL import Image

    originals = []
    if source:
        from ..predict_files import expand_paths

        originals = list(expand_paths([source])) if Path(source).is_dir() else []
        if not originals:
            raise FileNotFoundError(f"no image files under {source}")
        originals = [originals[i] for i in np.random.default_rng(0).permutation(len(originals))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if originals:
            from ..imaging import load_image

            gray = Image.fromarray(load_image(originals[i % len(originals)]).pixels)
            resized = np.asarray(gray.resize((side, side), Image.BILINEAR), dtype=np.float32)
            noise = np.random.default_rng(i).normal(0, 2, resized.shape)
            pixels = np.clip(resized + noise, 0, 255).astype(np.uint8)
        else:
            pixels = synthetic_xray(i, side)
        path = folder / f"xray-{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        if fmt == "jpeg":
            Image.fromarray(pixels).save(path, quality=90)
        else:
            Image.fromarray(pixels).save(path, compress_level=1)
        paths.append(path)
    return paths
