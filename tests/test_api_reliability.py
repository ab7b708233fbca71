"""RELIABILITY.md rows 5, 7 and 9-20 against the real app (Flask's test client, the
tiny real model): what the loader tests prove for ``load_image`` holds for what
a client gets back, with the right status, a plain message and nothing leaked.

Nothing may be written to disk while a request is handled, except inside the
app's private data folder (``PNEUMO_DATA_DIR``, for kept studies): a Python
audit hook records every file opened for writing, every folder made and every
rename, from any thread, while the watched requests run; whatever lies in the
data folder afterwards is searched for the uploaded names, patient identifiers
and executable preambles.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import sys
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import features
from pydicom import uid

from dicom_factory import CT_STORAGE, PHI, make_dataset, make_dicom, radiograph, to_bytes
from pneumo import imaging
from pneumo.web import create_app
from synthetic import encode, synthetic_xray
from test_api_openapi import upload, validate
from test_dicom import EXECUTABLES, PHI_CASES, _phi_case, set_native_pixel_data
from test_imaging import (
    FOREIGN,
    _apng,
    _just_over,
    _mpo,
    _text_bomb,
    raw_png,
    with_jpeg_size,
    with_png_size,
)

#: A radiograph big enough to pass the input gate without a warning.
SIDE = (240, 208)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def app(tiny_predictor, data_dir):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(data_dir), "PNEUMO_LOCAL_USER": True})


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/api/v1/openapi.json").get_json()


@pytest.fixture(scope="module")
def image12() -> np.ndarray:
    return radiograph(bits=12, size=SIDE)


def refused(response, status: int, code: str) -> str:
    """The JSON error's message, after checking status, code and that it reads plainly."""
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    for internal in ("Traceback", "Error:", "Exception", "PIL", "pydicom", "0x", "\n"):
        assert internal not in message, message
    return message


# -- nothing written (rows 5, 19, 20) ----------------------------------------------------------

class _WriteWatch:
    """Files opened for writing, folders made and renames, while ``active``."""

    EVENTS = frozenset({"os.mkdir", "os.rename", "os.replace", "os.symlink", "os.link",
                        "os.truncate", "shutil.copyfile", "shutil.move", "tempfile.mkstemp",
                        "tempfile.mkdtemp"})
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def __init__(self):
        self.active = False
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (mode is None and isinstance(flags, int) and flags & self.WRITE_FLAGS)
            if writes and isinstance(path, (str, bytes, os.PathLike)):
                with self._lock:
                    self.seen.append((event, os.fsdecode(path)))
        elif event in self.EVENTS:
            with self._lock:
                self.seen.append((event, repr(args[:2])))


_WATCH = _WriteWatch()
sys.addaudithook(_WATCH)  # audit hooks cannot be removed: it does nothing unless active


@contextlib.contextmanager
def nothing_written(data_dir: Path | None = None, forbidden: tuple[bytes, ...] = (),
                    names: tuple[str, ...] = ()):
    """Fail if anything is written outside ``data_dir`` while the block runs, or if a
    file in ``data_dir`` then holds one of ``forbidden`` in its bytes or one of
    ``names`` in its name (anything kept has a name the server made)."""
    _WATCH.seen.clear()
    _WATCH.active = True
    try:
        yield
    finally:
        _WATCH.active = False
    private = os.path.realpath(data_dir) + os.sep if data_dir else None
    outside = [(event, path) for event, path in _WATCH.seen
               if not (private and os.path.realpath(path).startswith(private))]
    assert outside == [], f"written while handling requests: {outside[:5]}"
    for path in (data_dir.rglob("*") if data_dir else ()):
        assert not [part for part in names if part in path.name], path.name
        if path.is_file():
            content = path.read_bytes()
            leaked = [value for value in forbidden if value in content]
            assert leaked == [], f"{path.name} keeps {leaked}"


def test_the_write_watch_sees_writes(tmp_path):
    """The watch is not blind: a write from another thread is caught, and the data
    folder's contents are searched."""
    with pytest.raises(AssertionError, match="written while handling"), nothing_written():
        thread = threading.Thread(target=(tmp_path / "x.bin").write_bytes, args=(b"x",))
        thread.start()
        thread.join()
    private = tmp_path / "data"
    private.mkdir()
    with pytest.raises(AssertionError, match="keeps"), \
            nothing_written(private, forbidden=(b"secret",)):
        (private / "store.db").write_bytes(b"...secret...")


@pytest.mark.reliability(5)
@pytest.mark.parametrize("name", ["../../etc/passwd.png", "../../../../tmp/evil.png",
                                  "a" * 300 + ".png", "r\u00f6ntgen-\u80f8\u90e8-\u0644.png",
                                  "C:\\Windows\\system32\\x.png", "x.php%00.jpg", ".htaccess",
                                  "\u202egnp.exe"])
def test_row05_hostile_names_write_nothing_anywhere(client, data_dir, name):
    png = encode(synthetic_xray(5, SIDE))
    fragments = ("passwd", "evil", "aaaaaaaaaa", "ntgen", "system32", "php", "htaccess",
                 "gnp", "\u202e")
    with nothing_written(data_dir, names=fragments):
        single = upload(client, "/api/v1/predict?image=true", [(name, png)])
        batch = upload(client, "/api/v1/predict/batch", [(name, png), (name, png)])
    assert single.status_code in (200, 415)
    if single.status_code == 200:
        shown = single.get_json()["filename"]
        assert "/" not in shown and "\\" not in shown and ".." not in shown.replace("\u2026", "")
        assert len(shown) <= 120
    assert batch.status_code == 200


@pytest.mark.slow
@pytest.mark.reliability(5)
def test_row05_through_the_real_server_a_large_upload_writes_nothing_anywhere(app, data_dir):
    """The real waitress server in front of the app: it buffers the whole body before Flask
    sees it, and by default spools any body over 512 kB to the temporary folder."""
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    from test_server_limits import running

    grainy = encode(np.random.default_rng(5).integers(0, 255, (900, 900), dtype=np.uint8))
    assert len(grainy) > 600_000
    boundary, body = encode_multipart(MultiDict(
        [("file", FileStorage(io.BytesIO(grainy), filename="../../etc/passwd.png"))]))
    with running(app) as server, nothing_written(data_dir, names=("passwd",)):
        request = urllib.request.Request(
            server.url + "/api/v1/predict", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                answer = json.loads(error.read())
    assert answer.get("filename", "passwd.png") == "passwd.png"


# -- row 7 -------------------------------------------------------------------------------------

@pytest.mark.reliability(7)
def test_row07_markup_in_names_and_paths_is_never_served_as_html(client):
    png = encode(synthetic_xray(1, SIDE))
    # (a '"' cannot travel raw in a multipart file name: browsers send it as %22; the
    # page's own handling of '"><img ...>' is in test_browser.py)
    for name, shown in (("'><img src=x onerror=alert(1)>.png", None),
                        ("'><script>alert(1)</script>.png", "script>.png")):  # after the "/"
        response = upload(client, "/api/v1/predict", [(name, png)])
        assert response.mimetype == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.get_json()["filename"] == (shown or name)  # data; the page shows text
    page = client.get('/"><script>alert(1)</script>')
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "<script>alert(1)" not in page.get_data(as_text=True)
    refused_name = upload(client, "/api/v1/predict", [('"><svg onload=alert(1)>.svg', b"x")])
    assert refused_name.mimetype == "application/json"
    assert "<svg" not in refused_name.get_json()["error"]["message"]


# -- rows 9-13: PNG and JPEG -------------------------------------------------------------------

@pytest.mark.reliability(9)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("factor", [1, 2], ids=["1x-2x Pillow's limit", "over 2x"])
def test_row09_pixel_bombs_are_413(client, spec, fmt, factor):
    from PIL import Image

    small = synthetic_xray(3, (96, 80))
    side = _just_over(factor * Image.MAX_IMAGE_PIXELS)
    data = with_png_size(encode(small), side, side) if fmt == "PNG" else \
        with_jpeg_size(encode(small, "JPEG"), side, side)
    response = upload(client, "/api/v1/predict", [(f"bomb.{fmt.lower()}", data)])
    assert "pixels" in refused(response, 413, "too_large")
    validate(spec, response, "/api/v1/predict", "post")
    side = _just_over(imaging.MAX_PIXELS)
    response = upload(client, "/api/v1/predict", [("x.png", with_png_size(encode(small), side,
                                                                           side))])
    refused(response, 413, "too_large")


@pytest.mark.reliability(9)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_row09_pillows_warning_alone_is_made_an_error(client, fmt, monkeypatch):
    """Between 1x and 2x Pillow's limit, Pillow only warns. With our own pixel limit out of
    the way and the test suite's warnings-as-errors off, only the app's own
    warning-to-error step stands between this file and a decode."""
    from PIL import Image

    monkeypatch.setattr(imaging, "MAX_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    small = synthetic_xray(3, (240, 208))  # 1.25x Pillow's (lowered) limit
    data = encode(small) if fmt == "PNG" else encode(small, "JPEG")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as in production: a warning is only printed
        response = upload(client, "/api/v1/predict", [(f"bomb.{fmt.lower()}", data)])
    assert "pixels" in refused(response, 413, "too_large")


@pytest.mark.reliability(10)
@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_row10_text_chunk_bombs_are_413(client, spec, kind):
    png = encode(synthetic_xray(3, SIDE))
    data = png[:33] + _text_bomb(kind) + png[33:]
    response = upload(client, "/api/v1/predict", [("text.png", data)])
    assert "text" in refused(response, 413, "too_large")
    validate(spec, response, "/api/v1/predict", "post")


@pytest.mark.reliability(11)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_row11_truncated_files_are_422_truncated(client, spec, fmt, keep):
    data = encode(synthetic_xray(3, SIDE), fmt)
    response = upload(client, "/api/v1/predict", [("cut", data[:int(len(data) * keep)])])
    assert "truncated" in refused(response, 422, "unreadable_image").lower()
    validate(spec, response, "/api/v1/predict", "post")


@pytest.mark.reliability(12)
@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_row12_other_formats_renamed_png_are_415(client, spec, name, monkeypatch):
    if name.startswith("JPEG 2000") and not features.check("jpg_2000"):
        pytest.skip("this Pillow cannot write JPEG 2000")
    if name == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow cannot write WebP")
    data = FOREIGN[name]()
    opened = []
    from PIL import Image

    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    response = upload(client, "/api/v1/predict", [("scan.png", data)])
    refused(response, 415, "unsupported_type")
    validate(spec, response, "/api/v1/predict", "post")
    assert opened == []  # refused on its first bytes: no decoder ever saw it


def _saved(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def _odd_images() -> dict[str, bytes]:
    from PIL import Image

    gray = synthetic_xray(9, SIDE)
    image = Image.fromarray(gray)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side; upright it is 208 wide, 240 high
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    return {
        "16-bit gray PNG": encode(gray.astype(np.uint16) * 257),
        "16-bit RGB PNG": raw_png(np.dstack([gray.astype(np.uint16) * 257] * 3), 16, 2),
        "RGBA PNG": encode(rgba),
        "palette PNG": _saved(image.convert("P"), "PNG"),
        "1-bit PNG": _saved(image.convert("1"), "PNG"),
        "1x1 PNG": encode(np.full((1, 1), 7, np.uint8)),
        "1x1 JPEG": encode(np.full((1, 1), 7, np.uint8), "JPEG"),
        "animated PNG": _apng(40, 220),
        "MPO (two frames)": _mpo(40, 220),
        "EXIF-rotated JPEG": _saved(image.transpose(Image.Transpose.ROTATE_90), "JPEG",
                                    exif=exif),
        "progressive JPEG": encode(gray, "JPEG", progressive=True),
        "CMYK JPEG": _saved(image.convert("CMYK"), "JPEG"),
    }


@pytest.mark.reliability(13)
@pytest.mark.parametrize("case", sorted(_odd_images()))
def test_row13_odd_but_valid_images_get_2xx_or_a_4xx_with_a_reason(client, spec, case):
    response = upload(client, "/api/v1/predict", [("odd", _odd_images()[case])])
    validate(spec, response, "/api/v1/predict", "post")
    assert response.status_code in (200, 422), response.get_json()
    body = response.get_json()
    if response.status_code == 422:  # the input gate says why it cannot be read
        assert body["error"]["code"] == "not_a_chest_xray" and body["input_check"]["reasons"]
        if case.startswith("1x1"):
            assert "very low resolution (1x1 pixels)" in body["input_check"]["reasons"]
        if case == "1-bit PNG":  # dithered to black and white dots
            assert "looks like random noise, not a radiograph" in body["input_check"]["reasons"]
    else:
        assert body["label"] in ("NORMAL", "PNEUMONIA")
    if case == "EXIF-rotated JPEG":
        assert (body["input"]["width"], body["input"]["height"]) == (SIDE[1], SIDE[0])


# -- rows 14-20: DICOM -------------------------------------------------------------------------

@pytest.mark.reliability(14)
def test_row14_dicom_without_the_dicm_marker_is_415(client, spec, image12):
    """Unless it is a whole single-frame grayscale image (a legacy ACR-NEMA file, below)."""
    ds = make_dataset(image12, bits_stored=12)
    del ds.PhotometricInterpretation
    bare = to_bytes(ds, file_format=False)
    assert bare[128:132] != b"DICM"
    response = upload(client, "/api/v1/predict", [("scan.dcm", bare)])
    refused(response, 415, "unsupported_type")
    validate(spec, response, "/api/v1/predict", "post")


@pytest.mark.reliability(33)
def test_real_vendor_files_are_predicted_like_their_conformant_copies(client, spec):
    """A legacy ACR-NEMA CR (no preamble, no file meta, MONOCHROME1, 10-bit) and an 8-bit
    DX whose odd-sized pixel data lacks its pad byte."""
    from dicom_factory import make_dicom, radiograph, set_native_pixel_data
    from test_dicom import legacy_acr_nema

    legacy, pixels = legacy_acr_nema()
    conformant = make_dicom(pixels, bits_stored=10, photometric="MONOCHROME1", modality="CR")
    odd = radiograph(bits=8, size=(301, 255))
    unpadded = set_native_pixel_data(make_dicom(odd), odd.tobytes())
    for vendor, reference in ((legacy, conformant), (unpadded, make_dicom(odd))):
        answers = [upload(client, "/api/v1/predict?heatmap=false", [("x.dcm", data)])
                   for data in (vendor, reference)]
        assert answers[0].status_code == answers[1].status_code == 200, answers[0].get_json()
        validate(spec, answers[0], "/api/v1/predict", "post")
        assert answers[0].get_json()["probability"] == answers[1].get_json()["probability"]


@pytest.mark.reliability(15)
@pytest.mark.parametrize("case", ["rows say more", "rows say fewer", "odd length"])
def test_row15_pixel_data_that_does_not_match_the_header_is_422(client, spec, image12, case):
    good = make_dicom(image12, bits_stored=12)
    if case == "rows say more":
        data = make_dicom(image12, bits_stored=12, Rows=SIDE[0] + 10)
    elif case == "rows say fewer":
        data = make_dicom(image12, bits_stored=12, Rows=SIDE[0] - 10)
    else:
        data = set_native_pixel_data(good, image12.tobytes()[:-1])
    response = upload(client, "/api/v1/predict", [("scan.dcm", data)])
    message = refused(response, 422, "unreadable_image")
    assert ("odd length" in message) if case == "odd length" else ("Rows x Columns" in message)
    validate(spec, response, "/api/v1/predict", "post")


def _probability(client, data: bytes) -> float:
    response = upload(client, "/api/v1/predict?heatmap=false", [("scan.dcm", data)])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["input"]["format"] == "DICOM" and body["input_check"]["status"] == "ok"
    return body["probability"]


@pytest.mark.reliability(16)
@pytest.mark.parametrize("syntax, lossless", [
    (uid.ExplicitVRLittleEndian, True), (uid.RLELossless, True), (uid.JPEGLosslessSV1, True),
    (uid.JPEGLossless, True), (uid.JPEGLSLossless, True), (uid.JPEG2000Lossless, True),
    (uid.DeflatedExplicitVRLittleEndian, True), (uid.JPEGBaseline8Bit, False),
    (uid.JPEGLSNearLossless, False), (uid.JPEG2000, False),
], ids=lambda value: uid.UID(value).keyword if isinstance(value, str) else None)
def test_row16_compressed_dicom_is_predicted_like_the_uncompressed_file(client, syntax,
                                                                         lossless):
    if syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless,
                  uid.JPEG2000) and not pydicom.pixels.get_encoder(syntax).is_available:
        pytest.skip("no encoder to make the test file")
    pixels = radiograph(bits=8 if syntax == uid.JPEGBaseline8Bit else 12, size=SIDE)
    options = {} if syntax == uid.JPEGBaseline8Bit else {"bits_stored": 12}
    window = {"WindowCenter": 128, "WindowWidth": 256} if pixels.dtype == np.uint8 else \
        {"WindowCenter": 2048, "WindowWidth": 4096}
    reference = _probability(client, make_dicom(pixels, **options, **window))
    probability = _probability(client, make_dicom(pixels, syntax, **options, **window))
    assert probability == pytest.approx(reference, abs=1e-6 if lossless else 0.02)


@pytest.mark.reliability(16)
@pytest.mark.parametrize("syntax, words", [(uid.MPEG2MPML, "MPEG2"), (uid.HEVCMP51, "HEVC"),
                                           ("1.2.3.4.5.6", "unrecognised")])
def test_row16_syntaxes_that_cannot_be_decoded_are_415_by_name(client, spec, image12, syntax,
                                                               words):
    from dicom_factory import compress

    ds = make_dataset(image12, bits_stored=12)
    compress(ds, image12, syntax)
    response = upload(client, "/api/v1/predict", [("scan.dcm", to_bytes(ds))])
    assert words in refused(response, 415, "unsupported_type")
    validate(spec, response, "/api/v1/predict", "post")


@pytest.mark.reliability(17)
@pytest.mark.parametrize("voi", ["none", "window", "VOI LUT"])
def test_row17_monochrome1_and_monochrome2_get_the_same_prediction(client, image12, voi):
    inverted = (4095 - image12).astype(np.uint16)
    m2_fields, m1_fields = {}, {}
    if voi == "window":
        m2_fields = {"WindowCenter": 1800, "WindowWidth": 2400}
        m1_fields = {"WindowCenter": 4095 - 1800, "WindowWidth": 2400}
    m2 = make_dicom(image12, bits_stored=12, **m2_fields)
    m1 = make_dicom(inverted, bits_stored=12, photometric="MONOCHROME1", **m1_fields)
    if voi == "VOI LUT":
        m2, m1 = _with_voi_lut(image12, False), _with_voi_lut(inverted, True)
    assert _probability(client, m1) == pytest.approx(_probability(client, m2), abs=1e-6)
    rescaled = make_dicom((image12 // 2).astype(np.uint16), bits_stored=12, RescaleSlope=2,
                          RescaleIntercept=0, **m2_fields)
    if voi != "VOI LUT":  # rescale before the window: the same values, the same answer
        assert _probability(client, rescaled) == pytest.approx(_probability(client, m2), abs=0.01)


def _with_voi_lut(pixels: np.ndarray, monochrome1: bool) -> bytes:
    """A VOI LUT sequence mapping stored values 0..4095 linearly onto 0..255; for
    MONOCHROME1 (stored inverted) the display inverts after the LUT, as the standard says."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = make_dataset(pixels, bits_stored=12,
                      photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.round(np.arange(4096) * 255 / 4095).astype(np.uint16).tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    return to_bytes(ds)


@pytest.mark.reliability(18)
@pytest.mark.parametrize("case, words", [
    ("CT", "CT scan"), ("MR", "MR scan"), ("multi-frame", "3 frames"), ("RGB", "RGB"),
    ("YBR_FULL", "YBR_FULL")])
def test_row18_non_radiograph_dicom_is_415_with_the_reason(client, spec, case, words):
    gray = radiograph(bits=8, size=SIDE)
    if case == "multi-frame":
        data = make_dicom(np.stack([gray] * 3))
    elif case in ("RGB", "YBR_FULL"):
        data = make_dicom(np.stack([gray] * 3, axis=-1), photometric=case)
    else:
        data = make_dicom(gray, modality=case, sop_class=CT_STORAGE)
    response = upload(client, "/api/v1/predict", [("scan.dcm", data)])
    assert words in refused(response, 415, "unsupported_type")
    validate(spec, response, "/api/v1/predict", "post")


LEAKS = list(PHI.values()) + ["Doe", "8675309", "1970", "PRIVATE"]


@pytest.mark.reliability(19)
@pytest.mark.parametrize("case", ["decoded, full size"] + PHI_CASES)
def test_row19_patient_identifiers_reach_no_response_log_or_file(client, data_dir, case,
                                                                 caplog):
    data = make_dicom(radiograph(bits=12, size=SIDE), bits_stored=12) \
        if case == "decoded, full size" else _phi_case(case)
    assert all(value.encode() in data for value in PHI.values())
    caplog.set_level(logging.DEBUG)
    with nothing_written(data_dir, forbidden=tuple(v.encode() for v in PHI.values())):
        responses = [upload(client, "/api/v1/predict?image=true", [("scan.dcm", data)]),
                     upload(client, "/api/v1/predict/batch", [("scan.dcm", data)] * 2)]
    if case == "decoded, full size":
        body = responses[0].get_json()
        assert responses[0].status_code == 200
        assert body["input"]["metadata"]["Modality"] == "DX"  # safe fields are shown
    for response in responses:
        assert response.status_code < 500
        # images travel as base64, where a short token like "Doe" turns up by chance
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "<png>",
                      response.get_data(as_text=True)) + json.dumps(dict(response.headers))
        for value in LEAKS:
            assert value not in text, f"{value!r} in the response ({case})"
    for value in LEAKS:
        assert value not in caplog.text, f"{value!r} in the log ({case})"


@pytest.mark.reliability(20)
@pytest.mark.parametrize("name", sorted(EXECUTABLES))
def test_row20_an_executable_preamble_is_predicted_and_never_stored_or_echoed(
        client, data_dir, image12, name):
    data = make_dicom(image12, bits_stored=12, preamble=EXECUTABLES[name])
    reference = make_dicom(image12, bits_stored=12)
    with nothing_written(data_dir, forbidden=(EXECUTABLES[name][:16],)):
        response = upload(client, "/api/v1/predict?heatmap=false", [("scan.dcm", data)])
    assert response.status_code == 200
    body = response.get_json()
    assert body["probability"] == pytest.approx(_probability(client, reference), abs=1e-6)
    text = json.dumps({k: v for k, v in body.items() if k not in ("heatmap", "image")})
    # (long markers: a short one like "MZ" turns up by chance in ids)
    for marker in ("This program", "\x7fELF", "#!/bin/sh", "rm -rf", "MZ\\u0090"):
        assert marker not in text
