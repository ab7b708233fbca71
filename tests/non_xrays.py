"""Images that are not chest X-rays, for the input gate (RELIABILITY.md row 24).

Natural photos come from scikit-image's bundled sample images (``skimage.data``,
no download); documents, drawings, knee-like radiographs, noise and blanks are
drawn here. Colour images are also given in grayscale, so the colour check is
not the only thing that can refuse them. Nothing is read from ../shared/data.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

#: skimage.data sample images shipped inside the wheel.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "colorwheel", "logo", "camera", "moon",
                  "coins", "brick", "grass", "gravel", "clock", "cell", "page", "text", "horse",
                  "checkerboard", "shepp_logan_phantom", "binary_blobs")


@dataclasses.dataclass
class Sample:
    category: str  # photo | document | drawing | knee-like | noise | blank
    name: str
    data: bytes  # an encoded PNG or JPEG file

    @property
    def filename(self) -> str:
        return self.name + (".jpg" if self.data.startswith(b"\xff\xd8\xff") else ".png")


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        return np.round((array - low) / max(high - low, 1e-12) * 255).astype(np.uint8)
    return array


def photos() -> list[Sample]:
    """scikit-image's sample photographs, each in colour (if it has colour) and grayscale."""
    import skimage.data

    samples = []
    for name in SKIMAGE_PHOTOS:
        pixels = _to_uint8(np.asarray(getattr(skimage.data, name)()))
        image = Image.fromarray(pixels)
        if image.mode in ("RGB", "RGBA"):
            samples.append(Sample("photo", f"{name}-colour", _encode(image.convert("RGB"),
                                                                     "JPEG")))
        samples.append(Sample("photo", f"{name}-gray", _encode(image.convert("L"))))
    return samples


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


_WORDS = ("patient", "report", "screening", "result", "radiology", "department", "chest",
          "clinical", "history", "findings", "impression", "normal", "follow", "up",
          "recommended", "date", "signature", "page", "summary", "laboratory", "values")


def documents(seed: int = 0) -> list[Sample]:
    """Rendered pages of text: black on white, blue on cream, white on black; gray and colour."""
    rng = np.random.default_rng(seed)
    samples = []
    styles = [("white", "black", None), ("#fdf6e3", "#1f3a93", "#c0392b"),
              ("black", "white", None), ("#eeeeee", "#333333", "#2e86c1")]
    for i, (paper, ink, accent) in enumerate(styles):
        page = Image.new("RGB", (850, 1100), paper)
        draw = ImageDraw.Draw(page)
        if accent:
            draw.rectangle([0, 0, 850, 110], fill=accent)
        draw.text((60, 40), "REPORT", fill=ink if not accent else "white", font=_font(48))
        y = 160
        while y < 1040:
            words = " ".join(rng.choice(_WORDS, size=int(rng.integers(6, 11))))
            draw.text((60, y), words, fill=ink, font=_font(26))
            y += 38 + int(rng.integers(0, 3)) * 20
        if i % 2:
            draw.rectangle([520, 700, 790, 960], outline=ink, width=4)  # a table-like box
        samples.append(Sample("document", f"document-{i}-colour", _encode(page)))
        samples.append(Sample("document", f"document-{i}-gray", _encode(page.convert("L"))))
    return samples


def drawings(seed: int = 0) -> list[Sample]:
    """Shapes, line art and a bar chart, in colour and grayscale."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(3):
        image = Image.new("RGB", (640, 640), tuple(int(v) for v in rng.integers(180, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(14):
            box = sorted(rng.integers(0, 640, 2)), sorted(rng.integers(0, 640, 2))
            xy = [box[0][0], box[1][0], box[0][1] + 20, box[1][1] + 20]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.ellipse(xy, fill=colour, outline="black", width=3)
            elif shape == 1:
                draw.rectangle(xy, fill=colour, outline="black", width=3)
            else:
                draw.polygon([tuple(int(v) for v in rng.integers(0, 640, 2)) for _ in range(5)],
                             fill=colour)
        samples.append(Sample("drawing", f"shapes-{i}-colour", _encode(image)))
        samples.append(Sample("drawing", f"shapes-{i}-gray", _encode(image.convert("L"))))
    lines = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(lines)
    for _ in range(40):
        draw.line([tuple(int(v) for v in rng.integers(0, 800, 2)) for _ in range(2)], fill=0,
                  width=int(rng.integers(2, 6)))
    samples.append(Sample("drawing", "line-art-gray", _encode(lines)))
    chart = Image.new("RGB", (800, 600), "white")
    draw = ImageDraw.Draw(chart)
    draw.line([(60, 40), (60, 540), (760, 540)], fill="black", width=3)
    for k, height in enumerate(rng.integers(60, 480, 8)):
        draw.rectangle([90 + 82 * k, 540 - int(height), 150 + 82 * k, 540],
                       fill=("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")[k % 4])
    samples.append(Sample("drawing", "bar-chart-colour", _encode(chart)))
    samples.append(Sample("drawing", "bar-chart-gray", _encode(chart.convert("L"))))
    return samples


def knee_like(seed: int = 0, size: tuple[int, int] = (512, 420)) -> np.ndarray:
    """A grayscale picture shaped like a frontal knee radiograph: soft tissue on black,
    femur from the top and tibia from the bottom with rounded ends and a joint gap."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    image = np.where(np.abs(xx - 0.5) < 0.36 - 0.05 * np.cos(yy * 3), 60.0, 8.0)
    shift = rng.uniform(-0.04, 0.04)
    femur = (np.abs(xx - 0.5 - shift) < 0.13) & (yy < 0.42)
    condyles = (((xx - 0.39 - shift) / 0.1) ** 2 + ((yy - 0.42) / 0.07) ** 2 < 1) | \
        (((xx - 0.61 - shift) / 0.1) ** 2 + ((yy - 0.42) / 0.07) ** 2 < 1)
    tibia = (np.abs(xx - 0.5 - shift) < 0.12 + 0.1 * np.clip(0.62 - yy, 0, 1)) & (yy > 0.52)
    fibula = (np.abs(xx - 0.74 - shift) < 0.03) & (yy > 0.6)
    patella = ((xx - 0.5 - shift) / 0.09) ** 2 + ((yy - 0.33) / 0.08) ** 2 < 1
    for part, value in ((femur | condyles, 200), (tibia, 195), (fibula, 185), (patella, 215)):
        image[part] = value
    cortex = np.exp(-((np.abs(xx - 0.5 - shift) - 0.12) ** 2) / 0.0004) * (yy < 0.4)
    image += 30 * cortex + rng.normal(0, 5, image.shape)
    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(2))
    return np.asarray(blurred)


def knees() -> list[Sample]:
    samples = []
    for seed, size in ((0, (512, 420)), (1, (640, 480)), (2, (400, 400)), (3, (900, 700))):
        pixels = knee_like(seed, size)
        samples.append(Sample("knee-like", f"knee-{seed}", _encode(Image.fromarray(pixels))))
    pixels = knee_like(4, (600, 500))
    samples.append(Sample("knee-like", "knee-4-jpeg", _encode(Image.fromarray(pixels), "JPEG")))
    return samples


def noise(seed: int = 0) -> list[Sample]:
    """White noise (uniform, Gaussian, salt and pepper; gray and colour) and smooth noise
    (blurred: it passes the pixel-level noise check, the feature gate has to catch it)."""
    rng = np.random.default_rng(seed)
    side = (512, 512)
    gray = {
        "uniform": rng.integers(0, 256, side, dtype=np.uint8),
        "gaussian": np.clip(rng.normal(128, 40, side), 0, 255).astype(np.uint8),
        "salt-and-pepper": np.where(rng.random(side) < 0.5, 0, 255).astype(np.uint8),
    }
    samples = [Sample("noise", f"noise-{k}-gray", _encode(Image.fromarray(v)))
               for k, v in gray.items()]
    colour = rng.integers(0, 256, (*side, 3), dtype=np.uint8)
    samples.append(Sample("noise", "noise-uniform-colour", _encode(Image.fromarray(colour))))
    for radius in (4, 12):
        smooth = Image.fromarray(gray["uniform"]).filter(ImageFilter.GaussianBlur(radius))
        smooth = Image.fromarray(_to_uint8(np.asarray(smooth).astype(np.float64)))
        samples.append(Sample("noise", f"noise-smooth-{radius}-gray", _encode(smooth)))
    smooth_colour = Image.fromarray(colour).filter(ImageFilter.GaussianBlur(6))
    samples.append(Sample("noise", "noise-smooth-colour", _encode(smooth_colour)))
    return samples


def blanks() -> list[Sample]:
    """Flat or nearly flat images, in gray and colour."""
    yy = np.mgrid[0:480, 0:400][0]
    images = {
        "white": np.full((480, 400), 255, np.uint8),
        "black": np.zeros((480, 400), np.uint8),
        "mid-gray": np.full((480, 400), 128, np.uint8),
        "faint-gradient": (120 + yy / 480 * 20).astype(np.uint8),
    }
    samples = [Sample("blank", f"blank-{k}", _encode(Image.fromarray(v)))
               for k, v in images.items()]
    samples.append(Sample("blank", "blank-red", _encode(Image.new("RGB", (400, 480),
                                                                  (200, 30, 30)))))
    samples.append(Sample("blank", "blank-white-jpeg",
                          _encode(Image.new("RGB", (400, 480), "white"), "JPEG")))
    return samples


def all_samples() -> list[Sample]:
    """The whole non-X-ray set, in a fixed order."""
    return photos() + documents() + drawings() + knees() + noise() + blanks()
