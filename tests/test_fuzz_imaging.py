"""Row 13's mutated files: the loader returns an image or an ImageError, never anything else.

Hypothesis mutates valid PNG, JPEG and DICOM files (bit flips, overwrites with
boundary values, insertions, deletions, truncation, and for PNG chunk edits
with a recomputed CRC so that the decoder, not the checksum, meets them).
Positions favour the first few hundred bytes, where the headers are. The run
is derandomised, so CI sees the same inputs every time, and bounded to a few
seconds; any warning that escapes the loader fails the test too (pytest's
``filterwarnings = error``).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import uid

from dicom_factory import PHI, make_dicom, radiograph
from pneumo.imaging import DecodedImage, ImageError, load_image
from synthetic import encode, synthetic_xray
from test_imaging import assert_plain

#: Examples per file family; PNEUMO_FUZZ_EXAMPLES=20000 runs a deeper, randomised search.
EXAMPLES = int(os.environ.get("PNEUMO_FUZZ_EXAMPLES", "300"))


@functools.cache
def seeds(family: str) -> tuple[bytes, ...]:
    """Small valid files of one family, in its common variants."""
    gray = synthetic_xray(7, (24, 20))
    if family == "PNG":
        rgba = np.dstack([gray, gray, gray, np.full_like(gray, 200)])
        return (encode(gray, "PNG"), encode(gray.astype(np.uint16) * 257, "PNG"),
                encode(rgba, "PNG"), _saved(Image.fromarray(gray).convert("P"), "PNG"))
    if family == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = 6
        return (encode(gray, "JPEG", quality=90),
                _saved(Image.fromarray(gray).convert("RGB"), "JPEG", exif=exif),
                encode(gray, "JPEG", progressive=True))
    twelve = radiograph(bits=12, size=(36, 32))  # JPEG 2000 needs 32 px for its 6 levels
    return (make_dicom(twelve, bits_stored=12, WindowCenter=2000, WindowWidth=3000),
            make_dicom(twelve, uid.RLELossless, bits_stored=12, photometric="MONOCHROME1"),
            make_dicom(twelve, uid.JPEGLosslessSV1, bits_stored=12),
            make_dicom(twelve, uid.JPEG2000Lossless, bits_stored=12, RescaleSlope=2,
                       RescaleIntercept=-1024))


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


BOUNDARY = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff",
            b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"]


@st.composite
def mutated(draw, family: str, pool=None) -> bytes:
    """A file of ``family`` from ``pool(family)`` (default: ``seeds``), mutated 1-4 times."""
    data = bytearray(draw(st.sampled_from((pool or seeds)(family))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.one_of(st.integers(0, min(400, len(data) - 1)), st.integers(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "boundary", "random", "insert", "delete", "truncate",
                                     "png chunk"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "boundary":
            value = draw(st.sampled_from(BOUNDARY))
            data[at:at + len(value)] = value
        elif kind == "random":
            value = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(value)] = value
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif family == "PNG":
            data = bytearray(_mutate_png_chunk(bytes(data), draw))
    return bytes(data)


def _mutate_png_chunk(data: bytes, draw) -> bytes:
    """Overwrite part of one chunk's payload and fix its CRC, so the decoder meets the change."""
    chunks, at = [], 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        if at + 12 + length > len(data):
            break
        chunks.append((at, length))
        at += 12 + length
    if not chunks:
        return data
    start, length = draw(st.sampled_from(chunks))
    kind, payload = data[start + 4:start + 8], bytearray(data[start + 8:start + 8 + length])
    if payload:
        offset = draw(st.integers(0, len(payload) - 1))
        value = draw(st.one_of(st.sampled_from(BOUNDARY), st.binary(min_size=1, max_size=8)))
        payload[offset:offset + len(value)] = value
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    chunk = struct.pack(">I", len(payload)) + kind + bytes(payload) + crc
    return data[:start] + chunk + data[start + 12 + length:]


def check(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImageError as exc:
        assert exc.status in (413, 415, 422)
        assert_plain(exc)
        return
    assert isinstance(image, DecodedImage)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2 and image.pixels.size > 0
    assert image.format in ("PNG", "JPEG", "DICOM")
    assert np.isfinite(image.colorfulness)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="PNEUMO_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("family", ["PNG", "JPEG", "DICOM"])
def test_row13_the_seeds_decode(family):
    for data in seeds(family):
        check(data)
        assert load_image(data).format == family


@FUZZ
@given(data=mutated("PNG"))
def test_row13_mutated_png_gives_an_image_or_an_image_error(data):
    check(data)


@FUZZ
@given(data=mutated("JPEG"))
def test_row13_mutated_jpeg_gives_an_image_or_an_image_error(data):
    check(data)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@FUZZ
@given(data=mutated("DICOM"))
def test_row13_mutated_dicom_gives_an_image_or_an_image_error(data):
    """...and no patient identifier reaches a log, however the header is mangled (row 19)."""
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        check(data)
    finally:
        root.removeHandler(records)
    logged = "\n".join(records.lines)
    assert not any(value in logged for value in PHI.values()), logged[:500]
