"""The screening result as DICOM objects a PACS files in the image's own study.

A PACS shows what sits in the study a radiologist opens, so the result goes back as
standard objects in that study, each in a new series of its own:

- a Comprehensive SR (``screening_report``) holding a TID 1500 Measurement Report: one
  measurement group for the finding Pneumonia (SNOMED CT 233604007) on the source image,
  present or absent by the model's threshold, with the calibrated probability, the
  operating threshold, the inconclusive flag, the model's name and version and the
  "second opinion, not a diagnosis" statement; for an image the input gate refuses, the
  same group says the presence was not assessed (undetermined) and why;
- a Secondary Capture (``overlay_capture``): the X-ray with the heatmap and a burned-in
  "AI second opinion, not for diagnosis" banner, optional.

Standard codes are used where they exist (SNOMED CT, DICOM's own); the few concepts
that have none (the inconclusive flag, the reason an image was not assessed, an input
warning) are in the private coding scheme ``99PNEUMO``, as PS3.16 8.2 allows.

Patient and study identifiers are copied from the source into these objects, because the
PACS needs them to file the result; they are never logged nor put in an error message.

UIDs are deterministic (``result_uid``, ``result_series_uid``): screening an image again
with the same model, after a restart or a re-send, makes the same instances, which a PACS
stores once, never a second copy.

``screen_dicom`` takes one received instance (a Part 10 file's bytes, or a dataset)
through the API's own flow (``screening.admit`` -> ``Predictor.predict_batch`` ->
``screening.conclude``). What it cannot screen at all raises a ``SourceError``, whose
``dimse_status`` is the C-STORE status a Storage SCP answers with:

- ``NotDicom`` (0xC000, cannot understand): not a DICOM Part 10 file, or a damaged header;
- ``NoPixelData`` (0xA900, data set does not match SOP class): no pixel data, or no
  Study/Series/SOP Instance UID to file a result with;
- ``TooLarge`` (0xA700, out of resources): a deflated file that inflates past
  ``imaging.MAX_FILE_BYTES``;
- ``ResultError`` (0xC000): a header the result objects cannot be built from (an unknown
  SOP class for highdicom's module tables). Patient and study values are copied as sent,
  element by element, so a malformed date or a sex of "U" does not stop a result.

Any image it can read but refuses (a CT slice, a colour photograph, a blank or noisy
picture, a film the input gate finds unlike any chest X-ray, damaged pixel data) gets a
"not assessed" SR that says why, and no Secondary Capture.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes

from . import __version__
from .imaging import quiet_dicom, sniff_format
from .predictor import Predictor
from .screening import DISCLAIMER, Refusal, Screened, admit, conclude

log = logging.getLogger(__name__)
# highdicom logs the source's SOP Instance UID at INFO as it copies attributes; results
# are made where no log line may name an instance (the node, the sync).
logging.getLogger("highdicom").setLevel(logging.WARNING)

#: Who made the objects (General Equipment's Manufacturer).
MANUFACTURER = "pneumo"
#: Series numbers of the result series: high, so that viewers list them after the
#: acquisition's own series.
SR_SERIES_NUMBER = 9901
CAPTURE_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "pneumo: AI second opinion (SR)"
CAPTURE_SERIES_DESCRIPTION = "pneumo: AI second opinion overlay, not for diagnosis"
#: Burned into every Secondary Capture, on a strip above the image.
BANNER = "AI second opinion, not for diagnosis"
#: Longest side of the Secondary Capture. The heatmap is a 10 x 10 grid upsampled, so a
#: larger picture shows no more of it; the radiologist reads the original image, and the
#: overlay's float arrays stay near 32 MB instead of growing with a 4,000-pixel film.
MAX_CAPTURE_SIDE = 1024

PRIVATE_SCHEME = "99PNEUMO"


def _concept(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


class Concepts:
    """The coded concepts of the report, in one place (tests read them back from here)."""

    PNEUMONIA = ("233604007", "SCT", "Pneumonia")
    LUNG = tuple(codes.SCT.Lung)[:3]
    PLAIN_CHEST_XRAY = ("399208008", "SCT", "Plain chest X-ray")
    PRESENT = tuple(codes.SCT.Present)[:3]
    ABSENT = tuple(codes.SCT.Absent)[:3]
    PRESENCE_UNDETERMINED = tuple(codes.DCM.PresenceUndetermined)[:3]
    YES = tuple(codes.SCT.Yes)[:3]
    NO = tuple(codes.SCT.No)[:3]
    PROBABILITY = tuple(codes.DCM.Probability)[:3]
    THRESHOLD = tuple(codes.DCM.ThresholdValue)[:3]
    NO_UNITS = tuple(codes.UCUM.NoUnits)[:3]
    COMMENT = tuple(codes.DCM.Comment)[:3]
    INCONCLUSIVE = ("inconclusive", PRIVATE_SCHEME, "Inconclusive (band of lower accuracy)")
    NOT_ASSESSED_REASON = ("notassessed", PRIVATE_SCHEME, "Reason not assessed")
    INPUT_WARNING = ("inputwarning", PRIVATE_SCHEME, "Input warning")

    @staticmethod
    def coded(concept: tuple[str, str, str]):
        return _concept(*concept)


class SourceError(ValueError):
    """An instance that cannot be screened at all: no result object is made for it.

    ``dimse_status``: the C-STORE status a Storage SCP answers with (PS3.4 B.2.3).
    Messages never echo header values."""

    dimse_status = 0xC000  # Error: Cannot understand


class NotDicom(SourceError):
    """Not a DICOM Part 10 file (or a dataset that cannot be encoded as one)."""

    dimse_status = 0xC000  # Error: Cannot understand


class TooLarge(SourceError):
    """A deflated instance that would inflate past ``imaging.MAX_FILE_BYTES``: its header
    cannot be read safely (a possible decompression bomb)."""

    dimse_status = 0xA700  # Refused: Out of Resources


class ResultError(SourceError):
    """A header the result objects cannot be built from (e.g. an unknown SOP class for
    highdicom's module tables). A Storage SCP has already answered by then: its worker
    logs this and sends nothing."""

    dimse_status = 0xC000  # Error: Cannot understand


class NoPixelData(SourceError):
    """A DICOM instance with no image, or without the identifiers a result needs to be
    filed (Study, Series and SOP Instance UIDs)."""

    dimse_status = 0xA900  # Error: Data Set does not match SOP Class


@dataclasses.dataclass
class ScreeningResults:
    """The outcome of one instance and the objects to send back to the PACS."""

    outcome: Screened | Refusal
    sr: Dataset
    capture: Dataset | None = None

    @property
    def datasets(self) -> list[Dataset]:
        """What to store: the SR, then the capture if there is one."""
        return [self.sr] + ([self.capture] if self.capture is not None else [])


# --------------------------------------------------------------------------------------
# UIDs


def result_uid(source_sop_instance_uid: str, model_version: str, kind: str) -> str:
    """The SOP Instance UID of the ``kind`` ("sr" or "sc") result of one source instance
    by one model version: the same on every run, so a re-send replaces, never adds."""
    return dicom_uid.generate_uid(
        entropy_srcs=["pneumo result", kind, str(source_sop_instance_uid), str(model_version)])


def result_series_uid(study_instance_uid: str, model_version: str, kind: str) -> str:
    """The Series Instance UID of the ``kind`` results in one study by one model version:
    one SR series and one SC series per study per model."""
    return dicom_uid.generate_uid(
        entropy_srcs=["pneumo series", kind, str(study_instance_uid), str(model_version)])


def _device_uid(model_name: str, model_version: str) -> str:
    return dicom_uid.generate_uid(entropy_srcs=["pneumo device", model_name, model_version])


# --------------------------------------------------------------------------------------
# Reading the source


#: Patient and study attributes the results carry, copied element by element from the
#: source, as it sent them: what a PACS files a result by (Patient ID, Study Instance UID,
#: Accession Number) and shows in the study's header.
IDENTIFIERS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
               "PatientSex", "OtherPatientIDsSequence", "PatientAge", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "IssuerOfAccessionNumberSequence", "StudyDescription")
#: The Type 2 ones highdicom reads and checks: given to it empty (a real archive's "U" for
#: sex, or a date written 2026-12-01, would stop it), then replaced by the source's own.
_CHECKED_BY_HIGHDICOM = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                         "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                         "ReferringPhysicianName")
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def read_source(dataset_or_bytes: Dataset | bytes) -> tuple[bytes, Dataset]:
    """(the Part 10 file's bytes, its header without pixel data) of a received instance.

    The bytes go through ``imaging``'s decoder exactly as an upload does; the header is
    what the result objects copy their identifiers and references from.

    Raises:
        NotDicom: bytes that are not a DICOM Part 10 file, or a damaged header.
        NoPixelData: no pixel data, or no Study/Series/SOP Instance UID.
        TooLarge: deflated data that inflates past ``imaging.MAX_FILE_BYTES``.
    """
    if isinstance(dataset_or_bytes, Dataset):
        with quiet_dicom():
            data = _to_part10(dataset_or_bytes)
    elif isinstance(dataset_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(dataset_or_bytes)
    else:
        raise TypeError("expected a pydicom Dataset or the bytes of a DICOM file")
    if sniff_format(data[:132]) != "DICOM":
        raise NotDicom("The data is not a DICOM file (no 'DICM' marker).")
    _check_inflated_size(data)
    with quiet_dicom():
        header = _read_header(data)
    return data, header


def _read_header(data: bytes) -> Dataset:
    try:
        # defer_size: the pixel data is left unread here; imaging decodes it
        header = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes; pydicom raises many types
        log.debug("DICOM header parsing failed: %s", type(exc).__name__)
        raise NotDicom("The DICOM file's header is damaged and could not be read.") from None
    if not any(name in header for name in ("PixelData", "FloatPixelData",
                                           "DoubleFloatPixelData")):
        raise NoPixelData("The DICOM instance holds no image (no pixel data).")
    missing = [name for name in _REQUIRED_UIDS if not str(header.get(name, "") or "").strip()]
    if missing:
        raise NoPixelData("The DICOM instance lacks " + ", ".join(missing)
                          + ", which a result needs to be filed with it.")
    for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if name in header:
            del header[name]
    return header


def _check_inflated_size(data: bytes) -> None:
    """pydicom inflates a deflated dataset whole before reading a tag of it, so bound the
    inflation first, with ``imaging``'s own check before a decode."""
    from . import imaging

    try:
        meta, start = imaging.dicom_file_meta(data)
        if str(meta.get("TransferSyntaxUID") or "").strip("\x00 ") \
                == dicom_uid.DeflatedExplicitVRLittleEndian:
            imaging.check_inflation(data, start)
    except imaging.ImageTooLarge as exc:
        raise TooLarge(str(exc)) from None
    except imaging.ImageError as exc:
        raise NotDicom(str(exc)) from None


def _to_part10(ds: Dataset) -> bytes:
    """A received dataset as a Part 10 file; its transfer syntax from its file meta (as a
    Storage SCP gets it), or explicit VR little endian for uncompressed pixel data."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None:
        element = ds["PixelData"] if "PixelData" in ds else None
        if element is not None and element.is_undefined_length:
            raise NotDicom("The dataset's pixel data is compressed but its transfer syntax "
                           "is not given (file meta TransferSyntaxUID).")
        syntax = dicom_uid.ExplicitVRLittleEndian
    part10 = Dataset(ds)  # shallow: the file meta and preamble are its own
    part10.file_meta = FileMetaDataset(meta)
    part10.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    try:
        if "SOPClassUID" in ds:
            part10.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            part10.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        part10.preamble = b"\x00" * 128
        pydicom.dcmwrite(buffer, part10, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - a malformed dataset cannot be encoded
        log.debug("DICOM encoding failed: %s", type(exc).__name__)
        raise NotDicom("The dataset could not be encoded as a DICOM file.") from None
    return buffer.getvalue()


def _evidence(source: Dataset) -> Dataset:
    """The source's header for highdicom: the attributes it checks present and empty.
    A deep copy: pydicom sets a present attribute's value in place, and a shallow copy
    shares its elements with the source."""
    evidence = copy.deepcopy(source)
    for name in _CHECKED_BY_HIGHDICOM:
        if name in evidence:
            del evidence[name]
        setattr(evidence, name, None)
    return evidence


def _copy_identifiers(result: Dataset, source: Dataset) -> None:
    """The source's patient and study attributes into ``result``, as elements: values are
    carried as sent, never re-checked, reformatted or echoed in a message."""
    for name in IDENTIFIERS:
        if name in source:
            result[name] = copy.deepcopy(source[name])


@contextlib.contextmanager
def _building(what: str):
    """Any failure to build a result object from this header becomes a ResultError that
    names no value (highdicom's and pydicom's messages quote them)."""
    try:
        with quiet_dicom():
            yield
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted header values reach two libraries
        log.debug("building the %s failed: %s", what, type(exc).__name__)
        raise ResultError(f"The DICOM instance's header holds values the {what} cannot "
                          f"carry ({type(exc).__name__}).") from None


# --------------------------------------------------------------------------------------
# The flow


def screen_dicom(predictor: Predictor, dataset_or_bytes: Dataset | bytes, *,
                 overlay: bool = True) -> ScreeningResults:
    """One received DICOM instance through the API's flow, and the objects to send back:
    the SR always, the Secondary Capture when ``overlay`` and the image was screened.

    Raises a ``SourceError`` (``NotDicom``, ``NoPixelData``, ``TooLarge``,
    ``ResultError``) for an instance it can make no result of; any image it can read but
    refuses gets a "not assessed" SR."""
    data, source = read_source(dataset_or_bytes)
    admitted = admit(predictor, data)
    if isinstance(admitted, Refusal):
        outcome = admitted
    else:
        prediction = predictor.predict_batch(admitted.model_input[None], heatmaps=overlay)[0]
        outcome = conclude(predictor, admitted.checks, prediction)
    names = {"model_name": predictor.name, "model_version": predictor.version}
    report = screening_report(source, outcome, **names)
    capture = None
    if overlay and isinstance(outcome, Screened) and outcome.prediction.heatmap is not None:
        capture = overlay_capture(source, admitted.decoded.pixels, outcome.prediction.heatmap,
                                  outcome, **names)
    return ScreeningResults(outcome, report, capture)


# --------------------------------------------------------------------------------------
# The SR


def screening_report(source: Dataset, outcome: Screened | Refusal, *, model_name: str,
                     model_version: str) -> Dataset:
    """The Comprehensive SR of ``outcome`` on ``source`` (its header suffices): same
    study and patient, new series, the source referenced as the finding's image.

    Raises ResultError for a header it cannot be built from."""
    with _building("SR"):
        report = _report(source, outcome, model_name, model_version)
        _copy_identifiers(report, source)
        _date_series(report)
    return report


def _date_series(result: Dataset) -> None:
    """The new series is dated when its object was made (its content date and time):
    a PACS lists a study's series by date, and shows "?" for one without."""
    for when in ("Date", "Time"):
        if f"Content{when}" in result:
            setattr(result, f"Series{when}", getattr(result, f"Content{when}"))


def _report(source: Dataset, outcome: Screened | Refusal, model_name: str,
            model_version: str) -> Dataset:
    from highdicom.sr import (
        AlgorithmIdentification, ComprehensiveSR, DeviceObserverIdentifyingAttributes,
        FindingSite, Measurement, MeasurementReport, MeasurementsAndQualitativeEvaluations,
        ObservationContext, ObserverContext, QualitativeEvaluation,
        SourceImageForMeasurementGroup, TextContentItem, TrackingIdentifier)
    from highdicom.sr.enum import RelationshipTypeValues

    c = Concepts.coded
    evidence = _evidence(source)
    algorithm = AlgorithmIdentification(name=model_name, version=model_version)
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=_device_uid(model_name, model_version), name=model_name,
            manufacturer_name=MANUFACTURER, model_name=f"{model_name} {model_version}"))
    source_uid = str(source.SOPInstanceUID)
    tracking = TrackingIdentifier(uid=result_uid(source_uid, model_version, "tracking"),
                                  identifier="pneumonia screening")
    measurements, evaluations, texts = [], [], []
    if isinstance(outcome, Screened):
        prediction = outcome.prediction
        positive = prediction.label == "PNEUMONIA"
        evaluations.append(QualitativeEvaluation(
            c(Concepts.PNEUMONIA), c(Concepts.PRESENT if positive else Concepts.ABSENT)))
        evaluations.append(QualitativeEvaluation(
            c(Concepts.INCONCLUSIVE), c(Concepts.YES if prediction.inconclusive else Concepts.NO)))
        measurements.append(Measurement(c(Concepts.PROBABILITY), float(prediction.probability),
                                        c(Concepts.NO_UNITS)))
        measurements.append(Measurement(c(Concepts.THRESHOLD), float(prediction.threshold),
                                        c(Concepts.NO_UNITS)))
        if outcome.assessment.status != "ok":
            texts.append((Concepts.INPUT_WARNING, outcome.assessment.summary()))
    else:
        evaluations.append(QualitativeEvaluation(c(Concepts.PNEUMONIA),
                                                 c(Concepts.PRESENCE_UNDETERMINED)))
        texts.append((Concepts.NOT_ASSESSED_REASON, f"Not assessed: {outcome.reason}"))
    texts.append((Concepts.COMMENT, DISCLAIMER))

    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=c(Concepts.PNEUMONIA),
        finding_sites=[FindingSite(c(Concepts.LUNG))], algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(evidence)])
    # TID 1501 has no row for free text; a Comprehensive SR may hold it, and a reader
    # needs the statement and the reason next to the finding they qualify.
    for concept, text in texts:
        group[0].ContentSequence.append(TextContentItem(
            name=c(concept), value=text, relationship_type=RelationshipTypeValues.CONTAINS))
    content = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=c(Concepts.PLAIN_CHEST_XRAY), imaging_measurements=[group])
    return ComprehensiveSR(
        evidence=[evidence], content=content[0],
        series_instance_uid=result_series_uid(source.StudyInstanceUID, model_version, "sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(source_uid, model_version, "sr"),
        instance_number=_instance_number(source),
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=[f"pneumo {__version__}", f"{model_name} {model_version}"])


def _instance_number(source: Dataset) -> int:
    """The source's instance number when it is a usable one: results sort as sources do."""
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if 1 <= number < 2**31 else 1


# --------------------------------------------------------------------------------------
# The Secondary Capture


def overlay_capture(source: Dataset, gray: np.ndarray, heatmap: np.ndarray,
                    outcome: Screened, *, model_name: str, model_version: str) -> Dataset:
    """The Secondary Capture: ``gray`` (the decoded X-ray, uint8) with ``heatmap`` drawn
    over it, below a burned-in banner saying it is an AI second opinion, not for
    diagnosis, and the result; BurnedInAnnotation YES.

    Raises ResultError for a header it cannot be built from."""
    picture = capture_pixels(gray, heatmap, outcome, model_name=model_name,
                             model_version=model_version)
    with _building("overlay"):
        capture = _capture(source, picture, model_name, model_version)
        _copy_identifiers(capture, source)
        _date_series(capture)
        # the image keeps the source's orientation and laterality; without, none is claimed
        capture.PatientOrientation = None
        for name in ("PatientOrientation", "Laterality"):
            if name in source:
                capture[name] = copy.deepcopy(source[name])
    return capture


def _capture(source: Dataset, picture: np.ndarray, model_name: str,
             model_version: str) -> Dataset:
    from highdicom.sc import SCImage

    capture = SCImage.from_ref_dataset(
        ref_dataset=_evidence(source), pixel_array=picture, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=result_series_uid(source.StudyInstanceUID, model_version, "sc"),
        series_number=CAPTURE_SERIES_NUMBER,
        sop_instance_uid=result_uid(str(source.SOPInstanceUID), model_version, "sc"),
        instance_number=_instance_number(source),
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced by the caller: the source's own, or empty
        series_description=CAPTURE_SERIES_DESCRIPTION,
        software_versions=[f"pneumo {__version__}", f"{model_name} {model_version}"])
    capture.BurnedInAnnotation = "YES"
    capture.RecognizableVisualFeatures = "NO"
    capture.ImageComments = BANNER
    capture.DerivationDescription = (f"{model_name} {model_version} evidence heatmap over the "
                                     "source image, with a burned-in banner")
    capture.SourceImageSequence = [_reference(source)]
    return capture


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def result_line(outcome: Screened) -> str:
    """The result as the banner's second line: label, probability, threshold, band."""
    p = outcome.prediction
    line = f"{p.label}  probability {p.probability:.3f} (threshold {p.threshold:.3f})"
    return line + ("  INCONCLUSIVE" if p.inconclusive else "")


def capture_pixels(gray: np.ndarray, heatmap: np.ndarray, outcome: Screened, *,
                   model_name: str, model_version: str) -> np.ndarray:
    """RGB uint8: a black banner strip (statement, result, model) above the overlay.

    The banner is a strip of its own so that no part of the image is hidden under it."""
    from PIL import Image, ImageDraw, ImageFont

    from .explain import overlay

    gray = np.asarray(gray, dtype=np.uint8)
    height, width = gray.shape
    scale = min(1.0, MAX_CAPTURE_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR))
        height, width = gray.shape
    picture = overlay(gray, heatmap)
    lines = [BANNER, result_line(outcome), f"{model_name} {model_version}"]
    font_size = max(10, min(48, width // 28))
    font = ImageFont.load_default(size=font_size)
    line_height = round(font_size * 1.3)
    strip = Image.new("RGB", (width, line_height * len(lines) + font_size // 2), "black")
    draw = ImageDraw.Draw(strip)
    colours = ["yellow", "white", "white"]
    for i, (line, colour) in enumerate(zip(lines, colours)):
        draw.text((font_size // 3, font_size // 4 + i * line_height), line, fill=colour,
                  font=font)
    return np.ascontiguousarray(np.concatenate([np.asarray(strip), picture], axis=0))
