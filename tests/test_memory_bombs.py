"""Small uploads that declare huge images (``hostile.py``): refused from their headers,
or decoded within a bounded memory, and measured through the real server.

The memory figures are the server process's own: its peak resident set (VmHWM) is
reset before each upload (``/proc/PID/clear_refs``) and read after the answer.
"""

from __future__ import annotations

import io
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid

import hostile
from dicom_factory import make_dataset, radiograph, to_bytes
from pneumo.imaging import (MAX_DECODED_BYTES, ImageTooLarge, UnreadableImage, _jpeg2000_size,
                            _jpeg_size, load_image)
from real_server import free_port, http_post, start, wait_ready

#: The most an upload may raise the server's peak resident memory (issue 12).
MAX_PEAK_INCREASE_MB = 300


# -- the codestream's own size is read before decoding ------------------------------------

@pytest.mark.parametrize("build, side", [
    (hostile.dicom_jpeg2000_siz, 24000), (hostile.dicom_jpeg_sof, 12000),
    (lambda: hostile.dicom_jpeg_sof(syntax=uid.JPEGLosslessSV1), 12000),
    (lambda: hostile.dicom_jpeg_sof(syntax=uid.JPEGLSLossless), 12000),
], ids=["jpeg2000-siz", "jpeg-baseline-sof", "jpeg-lossless-sof", "jpeg-ls-sof55"])
def test_row15_a_codestream_claiming_a_huge_image_is_refused_before_decoding(build, side):
    data = build()
    assert len(data) < 20_000
    started = time.monotonic()
    with pytest.raises(ImageTooLarge, match=f"{side} x {side}"):
        load_image(data)
    assert time.monotonic() - started < 1.0


def test_row15_a_codestream_of_another_size_than_rows_and_columns_is_refused():
    """Within the limit, a mismatch is still refused, and names both sizes."""
    data = hostile.dicom_jpeg2000_siz(side=300)
    with pytest.raises(UnreadableImage, match="300 x 300 image, but the header says 100 x 100"):
        load_image(data)


def test_codestream_headers_are_read_as_the_decoders_read_them():
    image = radiograph(12, (64, 48))
    _, j2k = hostile._dicom_with_codestream(uid.JPEG2000Lossless, image, 12)
    assert _jpeg2000_size(j2k) == (48, 64, 1)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 20) + b"ftypjp2 " + b"\0" * 8
           + struct.pack(">I", 8 + len(j2k)) + b"jp2c" + j2k)
    assert _jpeg2000_size(jp2) == (48, 64, 1)
    _, jls = hostile._dicom_with_codestream(uid.JPEGLSLossless, image, 12)
    assert _jpeg_size(jls) == (48, 64, 1)
    buffer = io.BytesIO()
    Image.fromarray(radiograph(8, (30, 20))).convert("RGB").save(buffer, "JPEG")
    assert _jpeg_size(buffer.getvalue()) == (20, 30, 3)
    assert _jpeg_size(hostile._patch_jpeg_sof(buffer.getvalue(), 20, 0)) is None  # DNL
    assert _jpeg_size(b"\xff\xd8\xff\xc0\x00") is None
    assert _jpeg2000_size(b"\xff\x4f\xff\x51\x00") is None


def test_a_jpeg2000_image_too_large_to_decode_within_the_budget_is_refused():
    """Headers that agree, but 7000 x 7000 at 16 bits needs more than the decode budget."""
    with pytest.raises(ImageTooLarge, match="7000 x 7000 pixels compressed as"):
        load_image(hostile.dicom_jpeg2000_large(7000))


@pytest.mark.parametrize("syntax, side, accepted", [
    (uid.JPEGLosslessSV1, 4300, True), (uid.JPEGLosslessSV1, 4500, False),
    (uid.RLELossless, 4300, True), (uid.RLELossless, 4700, False),
    (uid.JPEGBaseline8Bit, 6100, True), (uid.JPEGBaseline8Bit, 6300, False),
    (uid.JPEGLSLossless, 6500, True), (uid.JPEG2000Lossless, 6300, False),
])
def test_the_decoder_budget_follows_each_decoders_measured_cost(syntax, side, accepted):
    """Checked from the header alone (a placeholder codestream of the stated size)."""
    from pneumo.imaging import _check_decoder_memory

    bits = 8 if syntax == uid.JPEGBaseline8Bit else 16
    ds = make_dataset(radiograph(8, (8, 8)) if bits == 8 else radiograph(12, (8, 8)))
    ds.BitsAllocated = bits
    if accepted:
        _check_decoder_memory(ds, uid.UID(syntax), side, side)
    else:
        with pytest.raises(ImageTooLarge, match=f"{side} x {side} pixels compressed as"):
            _check_decoder_memory(ds, uid.UID(syntax), side, side)


def test_colour_rasters_over_the_decode_budget_are_refused_before_decoding():
    side = int((MAX_DECODED_BYTES / 4) ** 0.5) + 1
    with pytest.raises(ImageTooLarge, match="in colour"):
        load_image(hostile.png_rgba(side))


# -- narrow types: the same pixels as a float64 computation --------------------------------

def test_sixteen_bit_png_is_stretched_as_before_but_strip_by_strip(monkeypatch):
    from pneumo import imaging

    monkeypatch.setattr(imaging, "STRIP_PIXELS", 97)  # many strips, one partial
    values = (radiograph(16, (53, 41)).astype(np.int64) * 3 // 4 + 1000).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    lo, hi = values.min(), values.max()
    expected = np.round((values.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert np.array_equal(load_image(buffer.getvalue()).pixels, expected)


def test_dicom_windowing_runs_strip_by_strip_with_the_same_result(monkeypatch):
    from pneumo import imaging

    pixels = radiograph(12, (61, 37))
    data = hostile.to_bytes(_with(make_dataset(pixels, bits_stored=12), RescaleSlope=2,
                                  RescaleIntercept=-100))
    whole = load_image(data).pixels
    monkeypatch.setattr(imaging, "STRIP_PIXELS", 50)
    assert np.array_equal(load_image(data).pixels, whole)
    values = pixels.astype(np.float64) * 2 - 100
    expected = np.round((values - values.min()) * (255.0 / np.ptp(values))).astype(np.uint8)
    assert np.array_equal(whole, expected)


def _with(ds, **fields):
    for name, value in fields.items():
        setattr(ds, name, value)
    return ds


def test_one_bit_dicom_is_decoded_without_a_float_copy_of_the_image():
    """A 6800 x 6800 1-bit file (5.8 MB): a float64 copy alone would be 370 MB."""
    import tracemalloc

    data = hostile.dicom_one_bit()
    tracemalloc.start()
    try:
        decoded = load_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.pixels.shape == (6800, 6800) and decoded.pixels.dtype == np.uint8
    assert peak < 6800 * 6800 * 3, f"{peak / 2**20:.0f} MB traced"


# -- through the real server ---------------------------------------------------------------

def _peak_reset(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmRSS")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


@pytest.fixture(scope="module")
def bare_server(tiny_bundle, tmp_path_factory):
    """``pneumo serve`` on the tiny bundle, keeping no studies."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/PID/clear_refs to reset the peak resident memory")
    import os

    port = free_port()
    log_path = tmp_path_factory.mktemp("bombs") / "server.log"
    os.environ["PNEUMO_KEEP_STUDIES"] = "0"
    try:
        process = start([sys.executable, "-m", "pneumo.cli", "serve", "--model",
                         str(tiny_bundle), "--port", str(port), "--workers", "2"], log_path)
    finally:
        os.environ.pop("PNEUMO_KEEP_STUDIES")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log_path)
    yield url, process
    process.kill()
    process.wait()


@pytest.mark.slow
@pytest.mark.reliability(9, 15, 26)
def test_hostile_uploads_raise_the_servers_peak_memory_by_under_300_mb(
        bare_server, reliability_figures):
    url, process = bare_server
    ok = radiograph(8, (256, 256))
    buffer = io.BytesIO()
    Image.fromarray(ok).save(buffer, "PNG")
    http_post(url + "/api/v1/predict", [("warm.png", buffer.getvalue())])  # first-use costs
    section = "Peak memory per hostile upload (the real server)"
    cases = [(name, "/api/v1/predict", [(f"x{i}.dcm" if "DICOM" in name else f"x{i}.png",
                                         build())])
             for i, (name, build) in enumerate(hostile.HOSTILE.items())]
    cases.append(("batch of 16 x 16-bit 7000x7000 PNGs", "/api/v1/predict/batch",
                  [(f"b{i}.png", hostile.png16()) for i in range(16)]))
    over = []
    for name, path, files in cases:
        before = _peak_reset(process.pid)
        started = time.monotonic()
        status, _, body = http_post(url + path, files, timeout=120)
        seconds = time.monotonic() - started
        increase = _status(process.pid, "VmHWM") - before
        size = sum(len(data) for _, data in files)
        answer = status if path.endswith("predict") else \
            ", ".join(sorted({str(entry["status"]) for entry in body["results"]}))
        reliability_figures.add(section, f"{name} ({size / 1024:.0f} KB)",
                                f"+{increase} MB, {seconds:.1f} s, answered {answer}")
        assert status < 500, body
        if increase >= MAX_PEAK_INCREASE_MB:
            over.append(f"{name}: +{increase} MB")
    reliability_figures.note(section, (
        f"Each upload's rise of the server's peak resident memory over its resident memory "
        f"just before (VmHWM reset through /proc/PID/clear_refs); target: under "
        f"{MAX_PEAK_INCREASE_MB} MB for every input under the upload limit."))
    assert not over, over
    with urllib_open(url + "/api/v1/health") as response:
        assert response.status == 200


def urllib_open(url: str):
    import urllib.request

    return urllib.request.urlopen(url, timeout=10)

