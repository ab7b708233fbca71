"""Small uploads that declare huge images: each is well under the upload limit, and
each, decoded naively, costs hundreds of megabytes or gigabytes of memory.

Every byte is made here. The compressed DICOM files are real codestreams of a
small image whose own header (JPEG SOF, JPEG 2000 SIZ, JPEG-LS SOF55) was then
rewritten to claim a far larger one, while the DICOM Rows and Columns still
state the small size: the decoder trusts its codestream, not the DICOM header.
"""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
from PIL import Image
from pydicom import uid

from dicom_factory import make_dataset, radiograph, to_bytes
from dicom_factory import compress as _compress


def _patch_jpeg_sof(codestream: bytes, width: int, height: int,
                    markers=(0xC0, 0xC1, 0xC3, 0xF7)) -> bytes:
    """The codestream with its frame header (SOFn, or JPEG-LS SOF55) claiming ``width``
    x ``height``."""
    at = 2
    data = bytearray(codestream)
    while at < len(data):
        marker = data[at + 1]
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in markers:
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
        at += 2 + length
    raise ValueError("no frame header found")


def _patch_in_file(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def _dicom_with_codestream(syntax: str, pixels: np.ndarray,
                           bits_stored: int) -> tuple[bytes, bytes]:
    """(file, its single-fragment codestream) of ``pixels`` compressed in ``syntax``."""
    import pydicom
    from pydicom.encaps import generate_frames

    ds = make_dataset(pixels, bits_stored=bits_stored)
    _compress(ds, pixels, syntax)
    data = to_bytes(ds)
    frame = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData,
                                 number_of_frames=1))
    return data, bytes(frame)


def dicom_jpeg2000_siz(side: int = 24000) -> bytes:
    """A 100 x 100 JPEG 2000 DICOM whose SIZ says ``side`` x ``side``."""
    data, stream = _dicom_with_codestream(uid.JPEG2000Lossless, radiograph(12, (100, 100)), 12)
    siz = stream.index(b"\xff\x51")
    patched = bytearray(stream)
    struct.pack_into(">II", patched, siz + 6, side, side)  # Xsiz, Ysiz (origin 0)
    struct.pack_into(">II", patched, siz + 22, side, side)  # one tile: the whole image
    return _patch_in_file(data, stream, bytes(patched))


def dicom_jpeg_sof(side: int = 12000, syntax: str = uid.JPEGBaseline8Bit) -> bytes:
    """A 100 x 100 JPEG (baseline, lossless or JPEG-LS) DICOM whose frame header says
    ``side`` x ``side``."""
    bits = 8 if syntax == uid.JPEGBaseline8Bit else 12
    data, stream = _dicom_with_codestream(syntax, radiograph(bits, (100, 100)), bits)
    return _patch_in_file(data, stream, _patch_jpeg_sof(stream, side, side))


@functools.lru_cache(maxsize=None)
def png16(side: int = 7000) -> bytes:
    """A 16-bit grayscale PNG of ``side`` x ``side`` (under the pixel limit), a few
    tens of kB: a smooth ramp compresses to almost nothing."""
    row = (np.arange(side, dtype=np.uint32) * 65535 // max(1, side - 1)).astype(np.uint16)
    image = Image.fromarray(np.broadcast_to(row, (side, side)).copy())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def png_rgba(side: int = 7000) -> bytes:
    """A flat RGBA PNG of ``side`` x ``side``, a few hundred kB."""
    image = Image.new("RGBA", (side, side), (90, 90, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def dicom_one_bit(side: int = 6800) -> bytes:
    """An uncompressed 1-bit DICOM of ``side`` x ``side``: about 5.8 MB of packed bits."""
    ds = make_dataset(radiograph(8, (8, 8)))
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    stripes = np.zeros(side * side // 8 + (side * side // 8) % 2, dtype=np.uint8)
    stripes[::3] = 0b10110010
    ds.PixelData = stripes.tobytes()
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def dicom_jpeg2000_large(side: int = 7000) -> bytes:
    """A genuine ``side`` x ``side`` 16-bit JPEG 2000 DICOM (a smooth ramp, small file)
    whose headers all agree: the largest honest compressed DICOM accepted."""
    row = (np.arange(side, dtype=np.uint32) * 4095 // max(1, side - 1)).astype(np.uint16)
    pixels = np.broadcast_to(row, (side, side)).copy()
    ds = make_dataset(pixels, bits_stored=12)
    _compress(ds, pixels, uid.JPEG2000Lossless)
    return to_bytes(ds)


def dicom_large(syntax: str, side: int, bits: int) -> bytes:
    """A genuine ``side`` x ``side`` DICOM in ``syntax`` (a smooth ramp, a small file) whose
    headers all agree."""
    top = 2**bits - 1
    row = (np.arange(side, dtype=np.uint32) * top // max(1, side - 1)).astype(
        np.uint8 if bits == 8 else np.uint16)
    pixels = np.broadcast_to(row, (side, side)).copy()
    ds = make_dataset(pixels, bits_stored=bits)
    _compress(ds, pixels, syntax)
    return to_bytes(ds)


def dicom_deflated(side: int = 5600) -> bytes:
    """A deflated 16-bit DICOM of ``side`` x ``side`` (a smooth ramp): a few hundred kB
    that inflate to about 60 MB, under the 64 MB the loader allows."""
    from pydicom import uid as uids

    row = (np.arange(side, dtype=np.uint32) * 4095 // max(1, side - 1)).astype(np.uint16)
    pixels = np.broadcast_to(row, (side, side)).copy()
    ds = make_dataset(pixels, bits_stored=12)
    _compress(ds, pixels, uids.DeflatedExplicitVRLittleEndian)
    return to_bytes(ds)


#: name -> (builder, what it is), for the tests and the report.
HOSTILE = {
    "DICOM, JPEG 2000 SIZ 24000x24000, Rows=Columns=100": dicom_jpeg2000_siz,
    "DICOM, JPEG baseline SOF 12000x12000, Rows=Columns=100": dicom_jpeg_sof,
    "DICOM, JPEG lossless SOF 12000x12000, Rows=Columns=100":
        functools.partial(dicom_jpeg_sof, syntax=uid.JPEGLosslessSV1),
    "DICOM, JPEG-LS SOF55 12000x12000, Rows=Columns=100":
        functools.partial(dicom_jpeg_sof, syntax=uid.JPEGLSLossless),
    "PNG, 16-bit 7000x7000": png16,
    "PNG, RGBA 7000x7000": png_rgba,
    "DICOM, 1-bit 6800x6800 uncompressed": dicom_one_bit,
    "PNG, RGBA 5700x5700 (largest colour size accepted)": functools.partial(png_rgba, 5700),
    "DICOM, JPEG 2000 7000x7000 12-bit, headers agree": dicom_jpeg2000_large,
    "DICOM, JPEG 2000 6200x6200 12-bit, near the decoder budget":
        functools.partial(dicom_jpeg2000_large, 6200),
    "DICOM, deflated 5600x5600 16-bit": dicom_deflated,
    "DICOM, JPEG baseline 6200x6200 8-bit, near the decoder budget":
        functools.partial(dicom_large, uid.JPEGBaseline8Bit, 6200, 8),
    "DICOM, JPEG-LS 6000x6000 12-bit": functools.partial(dicom_large, uid.JPEGLSLossless, 6000, 12),
}
