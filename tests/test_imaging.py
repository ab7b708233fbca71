"""The loader against the image-decoding rows (9-13) of RELIABILITY.md, PNG and JPEG side.

Every input is generated here; the DICOM rows (14-20) are in test_dicom.py and
the mutation fuzzing of row 13 in test_fuzz_imaging.py.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from pneumo import imaging
from pneumo.imaging import (
    DecodedImage,
    ImageError,
    ImageTooLarge,
    UnreadableImage,
    UnsupportedFormat,
    load_image,
    sniff_format,
)
from synthetic import encode, synthetic_xray

SRC = Path(__file__).resolve().parents[1] / "src"


def assert_plain(exc: ImageError) -> str:
    """An error message is one plain sentence a clinician could read: no Python internals."""
    message = str(exc)
    assert message[:1].isupper() and message.endswith("."), message
    assert not re.search(r"\.\s+[A-Z]", message), f"more than one sentence: {message}"
    for internal in ("Error", "Exception", "Traceback", "<", "0x", "PIL", "pydicom", "numpy",
                     "BytesIO", "None", "MAX_", "\n"):
        assert internal not in message, f"{internal!r} in {message!r}"
    return message


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(rows: np.ndarray, bit_depth: int, color_type: int) -> bytes:
    """A PNG written byte by byte (for layouts Pillow does not write, e.g. 16-bit RGB)."""
    height, width = rows.shape[:2]
    samples = rows.astype(">u2" if bit_depth == 16 else "u1").reshape(height, -1)
    body = b"".join(b"\x00" + row.tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(body)) + png_chunk(b"IEND", b""))


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The same small PNG whose IHDR claims another size (the pixel data stays tiny)."""
    header = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", header) + png[33:]


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same small JPEG whose SOF segment claims another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    return synthetic_xray(3, size=(96, 80))


@pytest.fixture(scope="module")
def png(xray) -> bytes:
    return encode(xray, "PNG")


@pytest.fixture(scope="module")
def jpeg(xray) -> bytes:
    return encode(xray, "JPEG", quality=92)


# ---------------------------------------------------------------------------- the API


def test_png_and_jpeg_decode_to_uint8_grayscale(xray, png, jpeg):
    for data, fmt in ((png, "PNG"), (jpeg, "JPEG")):
        image = load_image(data)
        assert isinstance(image, DecodedImage)
        assert image.format == fmt and image.metadata == {} and image.colorfulness == 0.0
        assert image.pixels.dtype == np.uint8 and image.pixels.shape == xray.shape
    assert np.array_equal(load_image(png).pixels, xray)
    assert np.abs(load_image(jpeg).pixels.astype(int) - xray).mean() < 3


def test_paths_bytes_bytearray_and_memoryview_agree(tmp_path, png):
    path = tmp_path / "scan.PNG"
    path.write_bytes(png)
    expected = load_image(png).pixels
    for source in (path, str(path), bytearray(png), memoryview(png)):
        assert np.array_equal(load_image(source).pixels, expected)


def test_error_classes_carry_http_status_and_code():
    assert issubclass(ImageError, ValueError)
    assert (ImageError.status, ImageError.code) == (422, "unreadable_image")
    assert (UnsupportedFormat.status, UnsupportedFormat.code) == (415, "unsupported_type")
    assert (UnreadableImage.status, UnreadableImage.code) == (422, "unreadable_image")
    assert (ImageTooLarge.status, ImageTooLarge.code) == (413, "too_large")
    for cls in (UnsupportedFormat, UnreadableImage, ImageTooLarge):
        assert issubclass(cls, ImageError)


def test_sniff_format_reads_content_only(png, jpeg):
    assert sniff_format(png[:132]) == "PNG"
    assert sniff_format(jpeg[:132]) == "JPEG"
    assert sniff_format(b"\x00" * 128 + b"DICM") == "DICOM"
    assert sniff_format(b"MZ" + b"\x00" * 126 + b"DICM") == "DICOM"
    assert sniff_format(png[:128] + b"DICM") == "DICOM"  # the preamble may hold anything
    assert sniff_format(b"GIF89a") is None and sniff_format(b"") is None


@pytest.mark.parametrize("case", ["missing", "directory", "empty"])
def test_unreadable_paths_are_refused_plainly(tmp_path, case):
    path = tmp_path / "scan.png"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(UnreadableImage) as caught:
        load_image(path)
    assert str(tmp_path) not in assert_plain(caught.value)


def test_files_over_the_byte_limit_are_refused_before_reading(tmp_path, png, monkeypatch):
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", len(png) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(png)
    for source in (path, png):
        with pytest.raises(ImageTooLarge) as caught:
            load_image(source)
        assert_plain(caught.value)


# ---------------------------------------------------------------------------- row 9


def _just_over(limit: int) -> int:
    side = int(limit ** 0.5) + 1
    assert limit < side * side < limit * 1.01
    return side


@pytest.mark.parametrize("kind", ["over MAX_PIXELS", "between 1x and 2x Pillow's limit",
                                  "over 2x Pillow's limit"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_row09_pixel_bombs_are_refused_before_decoding(kind, fmt, png, jpeg):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    side = {"over MAX_PIXELS": _just_over(imaging.MAX_PIXELS),
            "between 1x and 2x Pillow's limit": _just_over(pillow_limit),
            "over 2x Pillow's limit": _just_over(2 * pillow_limit)}[kind]
    data = with_png_size(png, side, side) if fmt == "PNG" else with_jpeg_size(jpeg, side, side)
    assert len(data) < 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing is merely warned about
        with pytest.raises(ImageTooLarge) as caught:
            load_image(data)
    assert caught.value.status == 413
    assert_plain(caught.value)


def test_row09_our_limit_holds_even_when_pillows_is_switched_off(png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    side = _just_over(imaging.MAX_PIXELS)
    with pytest.raises(ImageTooLarge):
        load_image(with_png_size(png, side, side))
    with pytest.raises(ImageTooLarge):
        load_image(with_png_size(png, 200_000, 200_000))


def test_row09_an_image_at_the_limit_is_accepted(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 64 * 48)
    assert load_image(encode(synthetic_xray(0, (48, 64)))).pixels.shape == (48, 64)
    with pytest.raises(ImageTooLarge):
        load_image(encode(synthetic_xray(0, (49, 64))))


# ---------------------------------------------------------------------------- row 10


def _text_bomb(kind: bytes) -> bytes:
    inflated = zlib.compress(b"A" * 3_000_000, 9)  # ~3 KB that inflate to 3 MB
    if kind == b"zTXt":
        return png_chunk(b"zTXt", b"Comment\x00\x00" + inflated)
    return png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + inflated)


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
@pytest.mark.parametrize("where", ["before IDAT", "after IDAT"])
def test_row10_text_chunk_bombs_are_refused(png, kind, where):
    at = 33 if where == "before IDAT" else len(png) - 12  # after IHDR, or before IEND
    data = png[:at] + _text_bomb(kind) + png[at:]
    assert len(data) < len(png) + 10_000
    with pytest.raises(ImageTooLarge) as caught:
        load_image(data)
    assert "text" in assert_plain(caught.value)


def test_row10_ordinary_text_chunks_are_fine(png, xray):
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"PA chest, inspiration " * 500))
    assert np.array_equal(load_image(png[:33] + text + png[33:]).pixels, xray)


# ---------------------------------------------------------------------------- row 11


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.03, 0.2, 0.5, 0.9, 0.99])
def test_row11_truncated_files_are_refused_as_truncated(png, jpeg, fmt, keep):
    data = png if fmt == "PNG" else jpeg
    cut = data[:max(12, int(len(data) * keep))]
    with pytest.raises(UnreadableImage) as caught:
        load_image(cut)
    assert caught.value.status == 422
    assert "truncated" in assert_plain(caught.value)


def test_row11_nothing_sets_load_truncated_images():
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    offenders = [str(path) for path in SRC.rglob("*.py")
                 if re.search(r"LOAD_TRUNCATED_IMAGES\s*=(?!=)", path.read_text(encoding="utf-8"))]
    assert offenders == []


# ---------------------------------------------------------------------------- row 12


def _psd() -> bytes:
    width, height = 4, 3
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, height, width, 8, 1)
            + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(range(width * height)))


def _fits() -> bytes:
    cards = [f"{key:<8}= {value:>20}" for key, value in
             (("SIMPLE", "T"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 4), ("NAXIS2", 3))] + ["END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode()
    return header + bytes(range(12)).ljust(2880, b"\x00")


def _pillow(fmt: str, **options) -> bytes:
    return encode(synthetic_xray(0, (16, 16)), fmt, **options)


FOREIGN = {
    "TIFF": lambda: _pillow("TIFF"),
    "PSD": _psd,
    "FITS": _fits,
    "EPS": lambda: _pillow("EPS"),
    "PDF": lambda: _pillow("PDF"),
    "JPEG 2000 (jp2)": lambda: _pillow("JPEG2000"),
    "JPEG 2000 (codestream)": lambda: _pillow("JPEG2000", no_jp2=True),
    "GIF": lambda: _pillow("GIF"),
    "BMP": lambda: _pillow("BMP"),
    "WebP": lambda: _pillow("WEBP"),
    "PCX": lambda: _pillow("PCX"),
    "SVG": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "HTML": lambda: b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
}
PILLOW_CAN_READ = {"TIFF", "PSD", "FITS", "EPS", "JPEG 2000 (jp2)", "JPEG 2000 (codestream)",
                   "GIF", "BMP", "WebP", "PCX"}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_row12_other_formats_renamed_png_are_refused_before_decoding(name, tmp_path, monkeypatch):
    if name.startswith("JPEG 2000") and not features.check("jpg_2000"):
        pytest.skip("this Pillow cannot write JPEG 2000")
    if name == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow cannot write WebP")
    data = FOREIGN[name]()
    if name in PILLOW_CAN_READ:  # a real file that an unrestricted Image.open would decode
        Image.open(io.BytesIO(data)).close()
    path = tmp_path / "scan.png"
    path.write_bytes(data)

    def decoder_reached(*args, **kwargs):
        raise AssertionError("a decoder saw a file that should have been refused")

    import pydicom

    monkeypatch.setattr(Image, "open", decoder_reached)
    monkeypatch.setattr(pydicom, "dcmread", decoder_reached)
    for source in (path, data):
        with pytest.raises(UnsupportedFormat) as caught:
            load_image(source)
        assert caught.value.status == 415
        assert_plain(caught.value)


def test_row12_pillow_is_opened_with_an_allow_list(png, jpeg, monkeypatch):
    seen = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        seen.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    load_image(png)
    load_image(jpeg)
    assert seen == [["PNG"], ["JPEG"]]


# ---------------------------------------------------------------------------- row 13


def _gradient16() -> np.ndarray:
    return (np.arange(24 * 20, dtype=np.uint32).reshape(24, 20) * 97 + 1000).astype(np.uint16)


def _apng(first: int, second: int) -> bytes:
    frames = [Image.fromarray(np.full((12, 10), value, np.uint8)) for value in (first, second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _mpo(first: int, second: int) -> bytes:
    frames = [Image.fromarray(np.full((12, 10), value, np.uint8)).convert("RGB")
              for value in (first, second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:], quality=95)
    return buffer.getvalue()


def test_row13_sixteen_bit_png_is_stretched_over_its_range():
    values = _gradient16()
    image = load_image(encode(values, "PNG"))
    expected = np.round((values - values.min()) * (255 / (values.max() - values.min())))
    assert image.pixels.dtype == np.uint8
    assert np.array_equal(image.pixels, expected.astype(np.uint8))


def test_row13_sixteen_bit_rgb_and_gray_alpha_pngs_decode():
    gray = (_gradient16() // 256).astype(np.uint16) * 257
    rgb = load_image(raw_png(np.stack([gray] * 3, axis=-1), 16, 2))
    assert rgb.pixels.shape == gray.shape and rgb.colorfulness == 0.0
    assert np.abs(rgb.pixels.astype(int) - gray // 257).max() <= 1
    opaque = np.full_like(gray, 65535)
    gray_alpha = load_image(raw_png(np.stack([gray, opaque], axis=-1), 16, 4))
    assert np.abs(gray_alpha.pixels.astype(int) - gray // 257).max() <= 1


def test_row13_rgba_is_composited_on_black_and_colour_is_measured():
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :6, 3] = 255  # left half opaque, right half transparent
    image = load_image(encode(rgba, "PNG"))
    assert (image.pixels[:, :6] == 200).all() and (image.pixels[:, 6:] == 0).all()
    assert image.colorfulness == 0.0
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert load_image(encode(red, "PNG")).colorfulness == pytest.approx(255.0)


def test_row13_palette_pngs_with_and_without_transparency():
    gray = synthetic_xray(5, (20, 24))
    palette = Image.fromarray(gray).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    assert np.array_equal(load_image(buffer.getvalue()).pixels, np.asarray(palette.convert("L")))
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=int(np.asarray(palette)[0, 0]))
    image = load_image(buffer.getvalue())
    assert image.pixels.shape == gray.shape and image.pixels[0, 0] == 0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_row13_one_by_one_images(fmt):
    image = load_image(encode(np.full((1, 1), 128, np.uint8), fmt))
    assert image.pixels.shape == (1, 1) and abs(int(image.pixels[0, 0]) - 128) <= 2


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "CMYK", "I;16"])
def test_row13_other_pillow_modes(mode):
    base = Image.fromarray(synthetic_xray(2, (16, 20)))
    image = base.convert(mode) if mode != "I;16" else base.convert("I").convert("I;16")
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = load_image(encode(np.asarray(image), fmt) if mode not in ("1", "CMYK", "LA")
                         else _save(image, fmt))
    assert decoded.pixels.shape == (16, 20) and decoded.pixels.dtype == np.uint8


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("variant", ["grayscale", "progressive", "optimized", "4:2:0 colour"])
def test_row13_jpeg_variants(variant, xray):
    options = {"progressive": {"progressive": True}, "optimized": {"optimize": True},
               "4:2:0 colour": {"subsampling": 2}}.get(variant, {})
    source = Image.fromarray(xray).convert("RGB") if variant == "4:2:0 colour" \
        else Image.fromarray(xray)
    decoded = load_image(_save(source, "JPEG", quality=92, **options))
    assert np.abs(decoded.pixels.astype(int) - xray).mean() < 3
    assert decoded.colorfulness < 2


@pytest.mark.parametrize("fmt, data", [("PNG", _apng(40, 220)), ("JPEG", _mpo(40, 220))],
                         ids=["APNG", "MPO"])
def test_row13_multi_frame_files_give_their_first_frame(fmt, data):
    image = load_image(data)
    assert image.format == fmt and image.metadata == {"frames": 2}
    assert abs(float(image.pixels.mean()) - 40) < 3


# The stored orientation o is undone by _EXIF_TRANSPOSE[o]; store the inverse of the upright image.
_INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_row13_exif_orientation_is_applied(orientation, fmt):
    upright = synthetic_xray(4, (48, 32))
    upright[:8, :8] = 255  # a marker in the top-left corner
    stored = Image.fromarray(upright)
    if orientation != 1:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if fmt == "JPEG" else {}
    decoded = load_image(_save(stored, fmt, exif=exif, **options))
    assert decoded.pixels.shape == upright.shape
    assert np.abs(decoded.pixels.astype(int) - upright).mean() < 3


def test_row13_corrupt_exif_does_not_stop_decoding(xray):
    jpeg = encode(xray, "JPEG", quality=90)
    tiff = b"MM\x00\x2a" + b"\xff" * 12  # a TIFF header whose first IFD lies past the end
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    decoded = load_image(jpeg[:2] + app1 + jpeg[2:])
    assert decoded.pixels.shape == xray.shape


def test_row13_real_training_xrays_decode(train_data):
    """A few files of the real collection (skipped where ../shared/data is absent)."""
    for folder in sorted(p for p in train_data.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:8]:
            image = load_image(path)
            assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
            assert min(image.pixels.shape) >= 64 and image.colorfulness < 5


# ---------------------------------------------------------------------------- threads


def test_concurrent_loads_agree_and_leave_warning_filters_alone(png, jpeg):
    """Training decodes in threads; catch_warnings is process-global before Python 3.14."""
    bomb = with_png_size(png, 11_000, 11_000)
    expected = {"png": load_image(png).pixels, "jpeg": load_image(jpeg).pixels}
    filters_before = list(warnings.filters)
    failures = []

    def work(seed: int) -> None:
        try:
            for i in range(12):
                kind = ("png", "jpeg", "bomb")[(seed + i) % 3]
                if kind == "bomb":
                    with pytest.raises(ImageTooLarge):
                        load_image(bomb)
                else:
                    pixels = load_image(png if kind == "png" else jpeg).pixels
                    assert np.array_equal(pixels, expected[kind])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert list(warnings.filters) == filters_before


# ---------------------------------------------------------------------------- messages


def test_raster_error_messages_are_plain_sentences(png, jpeg):
    damaged_png = png[:40] + bytes(b ^ 0x55 for b in png[40:80]) + png[80:]
    damaged_jpeg = jpeg[:200] + b"\xff\xd9"  # ends properly, but the scan stops short
    cases = [b"GIF89a" + b"\x00" * 40, png[:20], damaged_png, damaged_jpeg,
             with_png_size(png, 0, 5), b"\x89PNG\r\n\x1a\n" + b"\x00" * 200]
    for data in cases:
        with pytest.raises(ImageError) as caught:
            load_image(data)
        assert_plain(caught.value)


# -- decoding for the model: large JPEGs at a reduced DCT scale ---------------------------

@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_reduce_to_decodes_a_large_jpeg_smaller_but_never_below_it(orientation):
    upright = synthetic_xray(7, (1200, 900))  # (height, width)
    stored = Image.fromarray(upright)
    if orientation != 1:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(stored, "JPEG", quality=92, exif=exif)
    full, reduced = load_image(data), load_image(data, reduce_to=300)
    assert full.pixels.shape == (1200, 900) and full.size == (900, 1200)
    assert reduced.size == (900, 1200)  # the size as sent, upright
    # the largest DCT scale (1/2, 1/4, 1/8) keeping both sides at least 300: 1/2
    assert reduced.pixels.shape == (600, 450)
    # the same picture: the full decode, shrunk, is within a few grey levels of it
    shrunk = np.asarray(Image.fromarray(full.pixels).resize((450, 600), Image.BILINEAR))
    assert np.abs(shrunk.astype(int) - reduced.pixels).mean() < 3


def test_reduce_to_leaves_small_jpegs_and_other_formats_alone(xray):
    png = encode(synthetic_xray(3, (1024, 1024)))
    assert load_image(png, reduce_to=224).pixels.shape == (1024, 1024)
    small = _save(Image.fromarray(xray), "JPEG", quality=95)
    assert load_image(small, reduce_to=224).pixels.shape == xray.shape
