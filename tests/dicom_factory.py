"""Generated DICOM test files: every byte is made here, nothing is read from disk.

``make_dicom`` writes a Part 10 file (preamble, ``DICM``, file meta) around a
numpy array, uncompressed or in one of the compressed transfer syntaxes. It
uses pydicom's own encoders where they exist (RLE; JPEG-LS through pyjpegls;
JPEG 2000 through pylibjpeg-openjpeg) and otherwise encapsulates a codestream
made here: JPEG baseline from Pillow, JPEG lossless from ``jpeg_lossless``.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

#: Identifiers that must never leave the loader.
PHI = {"PatientName": "Doe^Jane^Quincy", "PatientID": "PID-8675309",
       "PatientBirthDate": "19700101", "private": "PRIVATE-SECRET-42"}

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def radiograph(bits: int = 12, size: tuple[int, int] = (48, 40), seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric image that fills most of ``bits`` (unsigned)."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    blob = np.exp(-((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.02)
    image = 0.15 + 0.6 * xx * (1 - 0.5 * yy) + 0.2 * blob
    image += rng.normal(0, 0.01, image.shape)
    top = 2**bits - 1
    image = np.clip(image, 0, 1) * top
    image[0, 0], image[-1, -1] = 0, top  # the full range is used
    return np.round(image).astype(np.uint8 if bits <= 8 else np.uint16)


def make_dataset(pixels: np.ndarray, *, bits_stored: int | None = None,
                 photometric: str = "MONOCHROME2", modality: str | None = "DX",
                 sop_class: str = DX_STORAGE, signed: bool = False) -> Dataset:
    """An uncompressed single-frame dataset holding ``pixels`` and some patient identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = PHI["PatientName"]
    ds.PatientID = PHI["PatientID"]
    ds.PatientBirthDate = PHI["PatientBirthDate"]
    block = ds.private_block(0x0029, "PNEUMO TEST", create=True)
    block.add_new(0x01, "LO", PHI["private"])
    if modality is not None:
        ds.Modality = modality
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PixelSpacing = [0.139, 0.139]
    bits_allocated = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 or pixels.shape[-1] != 3 else 3
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if ds.SamplesPerPixel == 3 else pixels.shape[-2:]
    if pixels.ndim == (4 if ds.SamplesPerPixel == 3 else 3):
        ds.NumberOfFrames = pixels.shape[0]
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    return ds


def to_bytes(ds: Dataset, preamble: bytes | None = None, file_format: bool = True) -> bytes:
    """The dataset as a Part 10 file (or, with ``file_format=False``, a bare dataset)."""
    buffer = io.BytesIO()
    if preamble is not None:
        ds.preamble = preamble.ljust(128, b"\x00")[:128]
    if file_format:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        known = syntax is not None and uid.UID(syntax).type == "Transfer Syntax"
        encoding = {} if known else {"implicit_vr": False, "little_endian": True}
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True, **encoding)
    else:
        ds.file_meta = FileMetaDataset()  # no meta group, no preamble, no DICM
        pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray, syntax: str = uid.ExplicitVRLittleEndian, *,
               preamble: bytes | None = None, **fields) -> bytes:
    """``pixels`` as a DICOM file in ``syntax``.

    Extra keyword fields are set on the dataset after the pixel data is encoded,
    so that they can contradict it (e.g. ``Rows=60``).
    """
    # tests write non-conformant values on purpose
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore", UserWarning)
        names = ("bits_stored", "photometric", "modality", "sop_class", "signed")
        ds = make_dataset(pixels, **{k: fields.pop(k) for k in names if k in fields})
        compress(ds, pixels, syntax)
        for name, value in fields.items():
            setattr(ds, name, value)
        return to_bytes(ds, preamble)


def compress(ds: Dataset, pixels: np.ndarray, syntax: str) -> None:
    """Encode ``ds``'s pixel data in ``syntax`` in place."""
    syntax = uid.UID(syntax)
    if syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                  uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == uid.RLELossless:
        ds.compress(syntax, pixels, encoding_plugin="pydicom", generate_instance_uid=False)
    elif syntax in (uid.JPEGLSLossless, uid.JPEG2000Lossless):
        ds.compress(syntax, pixels, generate_instance_uid=False)
    elif syntax == uid.JPEGLSNearLossless:
        ds.compress(syntax, pixels, jls_error=3, generate_instance_uid=False)
    elif syntax == uid.JPEG2000:
        ds.compress(syntax, pixels, j2k_cr=[8], generate_instance_uid=False)
    elif syntax == uid.JPEGBaseline8Bit:
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG baseline holds 8-bit samples")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
        _encapsulated(ds, buffer.getvalue(), syntax)
    elif syntax in (uid.JPEGLosslessSV1, uid.JPEGLossless):
        _encapsulated(ds, jpeg_lossless(pixels, int(ds.BitsStored)), syntax)
    else:
        _encapsulated(ds, b"\x00" * 16, syntax)  # a placeholder codestream
    ds.file_meta.TransferSyntaxUID = syntax


def _encapsulated(ds: Dataset, codestream: bytes, syntax: str) -> None:
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """A minimal JPEG lossless (process 14, predictor 1) codestream of a 2-D image.

    ITU-T T.81 H.1: each sample is predicted from its left neighbour (the first
    column from the row above, the first sample from 2**(P-1)); the differences
    are Huffman-coded by magnitude category with one fixed table in which every
    category 0..16 gets a 5-bit code.
    """
    height, width = pixels.shape
    x = pixels.astype(np.int64)
    prediction = np.empty_like(x)
    prediction[:, 1:] = x[:, :-1]
    prediction[1:, 0] = x[:-1, 0]
    prediction[0, 0] = 2 ** (precision - 1)
    diffs = (x - prediction) % 65536
    diffs = np.where(diffs >= 32768, diffs - 65536, diffs).ravel()

    bits = []
    for diff in diffs.tolist():
        size = abs(diff).bit_length()
        bits.append(format(size, "05b"))  # code for category `size` is `size` on 5 bits
        if 0 < size < 16:
            extra = diff if diff > 0 else diff - 1
            bits.append(format(extra & ((1 << size) - 1), f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    entropy = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    huffman = segment(0xFFC4, b"\x00" + counts + bytes(range(17)))
    frame = segment(0xFFC3, struct.pack(">BHHB", precision, height, width, 1) + b"\x01\x11\x00")
    scan = segment(0xFFDA, b"\x01\x01\x00" + bytes([1, 0, 0]))
    return b"\xff\xd8" + huffman + frame + scan + bytes(entropy) + b"\xff\xd9"


def blank_transfer_syntax(data: bytes) -> bytes:
    """The file with its Transfer Syntax UID value overwritten by spaces (same length)."""
    at = data.index(b"\x02\x00\x10\x00UI")
    length = struct.unpack("<H", data[at + 6:at + 8])[0]
    return data[:at + 8] + b" " * length + data[at + 8 + length:]


def swallow(data: bytes, tag: tuple[int, int], through: bytes) -> bytes:
    """Mangle one short explicit-VR element's length so its value runs on through ``through``.

    A reader then takes the elements in between (e.g. the patient's name) as that
    element's value, as happens with real damaged files.
    """
    header = struct.pack("<HH", *tag)
    at = data.index(header, 132)
    start = at + 8  # tag (4), VR (2), 16-bit length (2)
    end = data.index(through, start) + len(through)
    length = end - start
    assert length % 2 == 0 and length < 2**16
    return data[:at + 6] + struct.pack("<H", length) + data[at + 8:]


def set_native_pixel_data(data: bytes, new_value: bytes) -> bytes:
    """Replace the (last) uncompressed Pixel Data element's value and length, byte for byte.

    pydicom pads odd values when writing; this writes any length, odd ones included.
    """
    for vr in (b"OW", b"OB"):
        at = data.rfind(b"\xe0\x7f\x10\x00" + vr)
        if at >= 0:
            return data[:at + 8] + struct.pack("<I", len(new_value)) + new_value
    raise ValueError("no explicit-VR Pixel Data element found")
