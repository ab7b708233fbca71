"""Decodes in several threads: one DICOM decode never holds up the other uploads, and the
warning filters the loader installs are exactly the process's again afterwards."""

from __future__ import annotations

import io
import sys
import threading
import time
import warnings

import pytest
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


@pytest.mark.reliability(29)
def test_an_upload_is_answered_while_a_dicom_upload_decodes(tiny_predictor):
    """The same through the app: a PNG posted while another request's DICOM is decoding
    is answered first."""
    from conftest import encode, synthetic_xray
    from pneumo.web import create_app

    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_KEEP_STUDIES": False})
    dicom = hostile.dicom_jpeg2000_large(4700)
    png = encode(synthetic_xray(4, (256, 224)))
    finished: dict[str, float] = {}
    statuses: dict[str, int] = {}

    def post(name: str, data: bytes) -> None:
        response = app.test_client().post("/api/v1/predict?heatmap=false",
                                          data={"file": (io.BytesIO(data), name)})
        statuses[name] = response.status_code
        finished[name] = time.monotonic()

    post("warm.png", png)
    thread = threading.Thread(target=post, args=("x.dcm", dicom))
    thread.start()
    deadline = time.monotonic() + 30
    while not _running(thread, "_decode_dicom"):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.001)
    post("x.png", png)
    thread.join(60)
    assert statuses["x.png"] == 200 and statuses["x.dcm"] in (200, 422)
    assert finished["x.png"] < finished["x.dcm"] - 0.1, finished


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

