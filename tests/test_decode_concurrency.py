"""Decodes in several threads: one DICOM decode never holds up the other uploads, and the
warning filters the loader installs are exactly the process's again afterwards."""

from __future__ import annotations

import io
import sys
import threading
import time
import warnings

from PIL import Image

import hostile
from dicom_factory import make_dicom, radiograph
from pneumo import imaging
from pneumo.imaging import load_image


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph(8, (64, 64))).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_png_is_decoded_while_a_dicom_decode_runs_in_another_thread():
    """The 64 x 64 PNG is done while the large DICOM is still decoding, not after it."""
    dicom = hostile.dicom_jpeg2000_large(4700)  # about a second of decoding
    png = _small_png()
    load_image(png)  # Pillow's first-use costs
    finished: dict[str, float] = {}

    def decode_dicom():
        load_image(dicom)
        finished["dicom"] = time.monotonic()

    thread = threading.Thread(target=decode_dicom)
    thread.start()
    deadline = time.monotonic() + 30
    while not _running(thread, "_decode_dicom"):  # the DICOM pixels are being decoded
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.001)
    assert load_image(png).pixels.shape == (64, 64)
    finished["png"] = time.monotonic()
    thread.join(60)
    assert finished["png"] < finished["dicom"] - 0.1, finished


def _running(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_concurrent_decodes_leave_the_warning_filters_as_they_found_them():
    before = list(warnings.filters)
    files = [_small_png(), make_dicom(radiograph(12, (96, 80)), bits_stored=12),
             hostile.dicom_jpeg_sof(side=300)]  # the last is refused
    errors: list[BaseException] = []

    def work(data):
        for _ in range(20):
            try:
                load_image(data)
            except imaging.ImageError:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(data,)) for data in files * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert warnings.filters == before

