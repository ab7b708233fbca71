"""Every accepted file format -> one 8-bit grayscale array.

The format is decided by the file's bytes, never by its name or a
Content-Type header. Pillow is opened with an explicit allow-list, and its
lenient defaults (decompression-bomb *warnings*, truncated images) are turned
into errors. DICOM goes through pydicom: modality LUT, then VOI LUT or window,
then MONOCHROME1 inversion.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Largest image accepted, in pixels (a 7,000 x 7,000 radiograph fits).
MAX_PIXELS = 50_000_000
#: Largest file accepted, in bytes.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Modalities that can hold a projection chest radiograph.
RADIOGRAPHY_MODALITIES = {"CR", "DX", "DR", "RG", "PX"}
#: DICOM header fields that are safe to show (no patient identifiers).
SAFE_DICOM_FIELDS = ("Modality", "ViewPosition", "BodyPartExamined", "Rows", "Columns",
                     "PixelSpacing", "PhotometricInterpretation", "BitsStored")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An input that cannot become a model input. ``status`` is the HTTP
    status an API should answer with; ``code`` a stable machine-readable tag."""

    status = 422
    code = "unreadable_image"


class UnsupportedFormat(ImageError):
    status = 415
    code = "unsupported_type"


class UnreadableImage(ImageError):
    status = 422
    code = "unreadable_image"


class ImageTooLarge(ImageError):
    status = 413
    code = "too_large"


@dataclasses.dataclass
class DecodedImage:
    """A decoded input: the grayscale pixels and what is safe to say about it."""

    pixels: np.ndarray  # uint8, shape (height, width)
    format: str  # "PNG", "JPEG" or "DICOM"
    colorfulness: float = 0.0  # mean chroma of colour sources, 0 for grayscale
    metadata: dict = dataclasses.field(default_factory=dict)


def sniff_format(head: bytes) -> str | None:
    """The format named by a file's first bytes, or None if not accepted."""
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    return None


def load_image(source: bytes | str | Path) -> DecodedImage:
    """Decode ``source`` (raw bytes or a path) into an 8-bit grayscale image.

    Raises:
        ImageError: with a message fit to show a user, for anything that is
            not a readable PNG, JPEG or DICOM radiograph.
    """
    data = _read_bytes(source)
    fmt = sniff_format(data[:132])
    if fmt is None:
        raise UnsupportedFormat("not a PNG, JPEG or DICOM file (checked by content, not by name)")
    if fmt == "DICOM":
        return _load_dicom(data)
    return _load_raster(data, fmt)


def _read_bytes(source: bytes | str | Path) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageTooLarge(f"file is {size / 2**20:.0f} MB; the limit is "
                                    f"{MAX_FILE_BYTES // 2**20} MB")
            data = path.read_bytes()
        except OSError as exc:
            raise UnreadableImage(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLarge(f"file is larger than {MAX_FILE_BYTES // 2**20} MB")
    if not data:
        raise UnreadableImage("file is empty")
    return data


def _load_raster(data: bytes, fmt: str) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS: make it fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            if image.width * image.height > MAX_PIXELS:
                raise ImageTooLarge(f"image has {image.width}x{image.height} pixels; the limit is "
                                    f"{MAX_PIXELS // 1_000_000} megapixels")
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("image dimensions exceed the decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        if "truncated" in message.lower():
            raise UnreadableImage(f"{fmt} file is truncated") from None
        raise UnreadableImage(f"{fmt} file could not be decoded: {message}") from None
    pixels, colorfulness = _to_gray(image)
    return DecodedImage(pixels=pixels, format=fmt, colorfulness=colorfulness)


def _to_gray(image: Image.Image) -> tuple[np.ndarray, float]:
    """Grayscale uint8 pixels and the mean chroma of colour inputs.

    16-bit images are stretched over their own range rather than truncated.
    """
    colorfulness = 0.0
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _stretch_to_uint8(np.asarray(image, dtype=np.float64)), 0.0
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode not in ("L", "1"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
        colorfulness = float(np.mean(rgb.max(axis=2) - rgb.min(axis=2)))
    return np.asarray(image.convert("L"), dtype=np.uint8).copy(), colorfulness


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _load_dicom(data: bytes) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise UnsupportedFormat("not a valid DICOM file") from None
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise UnreadableImage(f"DICOM header could not be parsed: {type(exc).__name__}") from None

    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPHY_MODALITIES:
        raise UnsupportedFormat(f"DICOM modality {modality} is not a radiograph; "
                                "only CR/DX chest radiographs are accepted")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedFormat("multi-frame DICOM is not accepted; send a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedFormat(f"DICOM colour images ({photometric or 'unknown'}) are not accepted")
    if "PixelData" not in ds:
        raise UnreadableImage("DICOM file holds no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise UnreadableImage(f"DICOM pixel data could not be decoded "
                              f"(transfer syntax {name}): {type(exc).__name__}") from None
    if raw.ndim != 2:
        raise UnsupportedFormat("DICOM pixel data is not a single grayscale frame")
    if raw.size > MAX_PIXELS:
        raise ImageTooLarge("DICOM image exceeds the pixel limit")
    values = apply_modality_lut(raw, ds)
    values = apply_voi_lut(values, ds)
    pixels = _stretch_to_uint8(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    metadata = {name: _plain(ds.get(name)) for name in SAFE_DICOM_FIELDS if name in ds}
    return DecodedImage(pixels=pixels, format="DICOM", metadata=metadata)


def _plain(value):
    if isinstance(value, (int, float, str)):
        return value
    try:
        return [float(v) for v in value]
    except TypeError:
        return str(value)
