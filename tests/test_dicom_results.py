"""The screening result as DICOM objects (dicom_results.py), parsed back as a PACS or a
viewer would: every field of the SR, the reference, the identifiers, the capture.

Every input is generated here (dicom_factory, synthetic); predictors are the real tiny
bundle and, for the feature gate's refusal, the shipped one.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.sr.codedict import codes

from dicom_factory import CT_STORAGE, PHI, make_dataset, make_dicom, to_bytes
from pneumo import dicom_results
from pneumo.bundle import Band
from pneumo.dicom_results import (
    BANNER,
    Concepts,
    NoPixelData,
    NotDicom,
    ResultError,
    TooLarge,
    result_series_uid,
    result_uid,
    screen_dicom,
)
from pneumo.explain import overlay
from pneumo.imaging import load_image
from pneumo.screening import DISCLAIMER, Refusal, Screened, screen
from synthetic import encode, synthetic_xray

#: Study-level identifiers a PACS files the result by; the patient ones are in PHI.
STUDY = {"AccessionNumber": "ACC-4711", "StudyID": "S-12", "StudyDate": "20261201",
         "StudyTime": "101500", "PatientSex": "F", "InstanceNumber": 3}


def study_file(pixels: np.ndarray, study_uid: str | None = None,
               syntax: str = uid.ExplicitVRLittleEndian, **fields) -> bytes:
    """A DX image of a made-up patient in a study of its own (or ``study_uid``)."""
    values = {"StudyInstanceUID": study_uid or uid.generate_uid(),
              "SeriesInstanceUID": uid.generate_uid(), **STUDY, **fields}
    return make_dicom(pixels, syntax, **values)


def with_operating_point(predictor, threshold: float, band: Band | None = None):
    """The same loaded model with another threshold and inconclusive band, as a site's
    calibrated card would give it."""
    changed = copy.copy(predictor)
    changed.threshold = threshold
    changed.inconclusive_band = band
    return changed


def parsed(dataset) -> pydicom.Dataset:
    """Written as a Part 10 file and read back, as the PACS receives it."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def group_of(report: pydicom.Dataset):
    """The one measurement group of a parsed SR, via highdicom's TID 1500 reader."""
    sr = hd.sr.ComprehensiveSR.from_dataset(report)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    return groups[0]


def text_items(group, relationship: str = "CONTAINS") -> dict[tuple[str, str], str]:
    """The group's TEXT items by (code value, scheme)."""
    return {(item.ConceptNameCodeSequence[0].CodeValue,
             item.ConceptNameCodeSequence[0].CodingSchemeDesignator): item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.RelationshipType == relationship}


def algorithm_of(group) -> tuple[str, str]:
    """(name, version) of the group's Algorithm Identification (TID 4019)."""
    modifiers = text_items(group, "HAS CONCEPT MOD")
    return modifiers[("111001", "DCM")], modifiers[("111003", "DCM")]


def code(concept) -> hd.sr.CodedConcept:
    return Concepts.coded(concept)


def evaluation(group, concept):
    found = group.get_qualitative_evaluations(name=code(concept))
    assert len(found) == 1, concept
    return found[0].value


def measurement(group, concept):
    found = group.get_measurements(name=code(concept))
    return found[0] if found else None


@pytest.fixture
def xray() -> np.ndarray:
    return synthetic_xray(1, opacity=True)


# -- the screened SR ------------------------------------------------------------------


@pytest.mark.parametrize("threshold,expected", [(0.0, Concepts.PRESENT),
                                                (1.0, Concepts.ABSENT)])
def test_sr_carries_the_finding_probability_threshold_and_model(tiny_predictor, xray,
                                                                threshold, expected):
    predictor = with_operating_point(tiny_predictor, threshold)
    data = study_file(xray)
    source = pydicom.dcmread(io.BytesIO(data))
    results = screen_dicom(predictor, data)
    direct = screen(predictor, data, heatmap=False)  # the API's flow, run on its own
    assert isinstance(results.outcome, Screened) and isinstance(direct, Screened)

    report = parsed(results.sr)
    assert report.SOPClassUID == uid.ComprehensiveSRStorage
    assert report.Modality == "SR"
    assert report.VerificationFlag == "UNVERIFIED"
    assert report.CompletionFlag == "COMPLETE"
    group = group_of(report)
    assert group.finding_type == code(Concepts.PNEUMONIA)
    assert [site.value for site in group.finding_sites] == [code(Concepts.LUNG)]
    assert evaluation(group, Concepts.PNEUMONIA) == code(expected)
    assert evaluation(group, Concepts.INCONCLUSIVE) == code(Concepts.NO)
    probability = measurement(group, Concepts.PROBABILITY)
    assert probability.value == pytest.approx(direct.prediction.probability, abs=1e-9)
    assert probability.unit == code(Concepts.NO_UNITS)
    threshold_item = measurement(group, Concepts.THRESHOLD)
    assert threshold_item.value == pytest.approx(threshold)
    assert algorithm_of(group) == (predictor.name, predictor.version)
    assert predictor.name == "pneumo-xception-tiny-test"
    assert text_items(group) == {tuple(Concepts.COMMENT[:2]): DISCLAIMER}
    # the observer is the model, as a device
    context = hd.sr.ComprehensiveSR.from_dataset(report).content.get_observer_contexts()
    assert [c.observer_type for c in context] == [codes.DCM.Device]
    # the source image is referenced in the group and as evidence
    assert [image.referenced_sop_instance_uid for image in group.source_images] \
        == [source.SOPInstanceUID]
    evidence = hd.sr.ComprehensiveSR.from_dataset(report).get_evidence()
    assert evidence == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                         source.SOPInstanceUID, source.SOPClassUID)]


def test_sr_is_filed_in_the_source_study_in_a_new_series(tiny_predictor, xray):
    data = study_file(xray)
    source = pydicom.dcmread(io.BytesIO(data))
    report = parsed(screen_dicom(tiny_predictor, data).sr)
    for name in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        assert report[name].value == source[name].value, name
    assert str(report.PatientName) == PHI["PatientName"]
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    assert report.SOPInstanceUID != source.SOPInstanceUID
    assert report.SeriesNumber == dicom_results.SR_SERIES_NUMBER
    assert report.InstanceNumber == STUDY["InstanceNumber"]
    # the new series is dated when the SR was made, so a PACS can list it
    assert (report.SeriesDate, report.SeriesTime) == (report.ContentDate, report.ContentTime)
    # the private tag and the pixel data stay behind
    assert "PixelData" not in report
    assert PHI["private"].encode() not in report.to_json().encode()


def test_inconclusive_band_is_said(tiny_predictor, xray):
    predictor = with_operating_point(tiny_predictor, 0.5, Band(0.0, 1.0))
    results = screen_dicom(predictor, study_file(xray))
    assert results.outcome.prediction.inconclusive
    group = group_of(parsed(results.sr))
    assert evaluation(group, Concepts.INCONCLUSIVE) == code(Concepts.YES)


def test_an_input_warning_is_said_with_the_finding(tiny_predictor):
    """A doubtful input keeps its label, and the SR says why it is doubtful."""
    results = screen_dicom(tiny_predictor, study_file(synthetic_xray(1, size=(150, 150))))
    assert results.outcome.status == "warning: low resolution (150x150 pixels)"
    texts = text_items(group_of(parsed(results.sr)))
    assert texts[tuple(Concepts.INPUT_WARNING[:2])] == results.outcome.status
    assert texts[tuple(Concepts.COMMENT[:2])] == DISCLAIMER


def test_sr_without_optional_identifiers(tiny_predictor, xray):
    """A sender that leaves out Type 2 attributes still gets its result filed."""
    ds = make_dataset(xray)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    report = parsed(screen_dicom(tiny_predictor, to_bytes(ds)).sr)
    assert report.StudyInstanceUID == ds.StudyInstanceUID
    assert report.AccessionNumber == "" and report.StudyDate == ""
    assert report.PatientID == PHI["PatientID"]


@pytest.mark.parametrize("fields", [
    {"PatientSex": "U"}, {"PatientSex": "MALE"}, {"StudyDate": "2026-12-01"},
    {"StudyTime": "25:99"}, {"PatientBirthDate": "1970"}, {"PatientName": "A" * 70},
    {"InstanceNumber": "-5"}, {"PatientOrientation": ["A", "FR"]},
    {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Müller^Jörg"},
], ids=lambda fields: "-".join(fields))
def test_identifiers_are_copied_as_sent_even_when_malformed(tiny_predictor, xray, fields):
    """Real archives hold a sex of "U", dates with dashes, overlong names: the result is
    filed all the same, with the values the archive sent."""
    data = study_file(xray, **fields)
    results = screen_dicom(tiny_predictor, data)
    with warnings.catch_warnings():  # reading the values back warns of what is malformed
        warnings.simplefilter("ignore", UserWarning)
        source = pydicom.dcmread(io.BytesIO(data))
        for dataset in results.datasets:
            back = parsed(dataset)
            for name in dicom_results.IDENTIFIERS:
                if name in source:
                    assert back[name].value == source[name].value, name
        capture = parsed(results.capture)
        assert capture.PatientOrientation == source.get("PatientOrientation", "")


def test_an_unknown_sop_class_is_a_clear_error(tiny_predictor, xray):
    data = study_file(xray, sop_class="1.2.826.0.1.3680043.8.498.999")
    with pytest.raises(ResultError, match="header holds values the SR cannot carry") as raised:
        screen_dicom(tiny_predictor, data)
    assert "1.2.826" not in str(raised.value) and PHI["PatientID"] not in str(raised.value)


def test_results_carry_no_private_tag(tiny_predictor, xray):
    for dataset in screen_dicom(tiny_predictor, study_file(xray)).datasets:
        assert not [element.tag for element in dataset.iterall() if element.tag.is_private]


# -- refused images -------------------------------------------------------------------


def assert_not_assessed(report: pydicom.Dataset, reason: str, source_uid: str) -> None:
    group = group_of(report)
    assert group.finding_type == code(Concepts.PNEUMONIA)
    assert evaluation(group, Concepts.PNEUMONIA) == code(Concepts.PRESENCE_UNDETERMINED)
    assert group.get_measurements() == []
    assert not group.get_qualitative_evaluations(name=code(Concepts.INCONCLUSIVE))
    texts = text_items(group)
    assert texts[tuple(Concepts.NOT_ASSESSED_REASON[:2])] == f"Not assessed: {reason}"
    assert texts[tuple(Concepts.COMMENT[:2])] == DISCLAIMER
    assert [image.referenced_sop_instance_uid for image in group.source_images] == [source_uid]


def test_image_refused_by_the_image_checks_gets_a_not_assessed_sr(tiny_predictor):
    data = study_file(np.full((256, 256), 128, np.uint8))
    results = screen_dicom(tiny_predictor, data)
    assert isinstance(results.outcome, Refusal)
    assert "blank" in results.outcome.reason
    assert results.capture is None and results.datasets == [results.sr]
    source = pydicom.dcmread(io.BytesIO(data))
    assert_not_assessed(parsed(results.sr), results.outcome.reason, source.SOPInstanceUID)


def test_image_the_decoder_refuses_gets_a_not_assessed_sr(tiny_predictor, xray):
    """A CT slice sent by mistake: read, refused by imaging, and said so."""
    data = study_file(xray, modality="CT", sop_class=CT_STORAGE)
    results = screen_dicom(tiny_predictor, data)
    assert isinstance(results.outcome, Refusal)
    assert "CT scan" in results.outcome.reason
    source = pydicom.dcmread(io.BytesIO(data))
    assert_not_assessed(parsed(results.sr), results.outcome.reason, source.SOPInstanceUID)


def test_image_the_feature_gate_refuses_gets_a_not_assessed_sr(shipped_bundle):
    """The shipped model's input gate refuses a drawing of a chest after the network."""
    from pneumo.predictor import Predictor

    predictor = Predictor.from_bundle(shipped_bundle)
    data = study_file(synthetic_xray(1, opacity=True))
    results = screen_dicom(predictor, data)
    assert isinstance(results.outcome, Refusal)
    assert results.outcome.assessment.status == "rejected"
    source = pydicom.dcmread(io.BytesIO(data))
    report = parsed(results.sr)
    assert_not_assessed(report, results.outcome.reason, source.SOPInstanceUID)
    assert algorithm_of(group_of(report)) == (predictor.name, predictor.version)


# -- the Secondary Capture --------------------------------------------------------------


def test_capture_is_the_overlay_below_a_burned_in_banner(tiny_predictor, xray):
    data = study_file(xray)
    source = pydicom.dcmread(io.BytesIO(data))
    results = screen_dicom(tiny_predictor, data)
    capture = parsed(results.capture)
    report = parsed(results.sr)
    assert capture.SOPClassUID == uid.SecondaryCaptureImageStorage
    assert capture.BurnedInAnnotation == "YES"
    assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.SeriesInstanceUID not in (source.SeriesInstanceUID, report.SeriesInstanceUID)
    assert capture.SeriesNumber == dicom_results.CAPTURE_SERIES_NUMBER
    assert (capture.SeriesDate, capture.SeriesTime) == (capture.ContentDate, capture.ContentTime)
    for name in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert capture[name].value == source[name].value, name
    assert [(ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
            for ref in capture.SourceImageSequence] \
        == [(source.SOPClassUID, source.SOPInstanceUID)]
    assert BANNER in capture.ImageComments
    # below the banner: exactly the heatmap over the decoded image, as the web page draws it
    pixels = capture.pixel_array
    gray = load_image(data).pixels
    expected = overlay(gray, results.outcome.prediction.heatmap)
    banner_rows = pixels.shape[0] - gray.shape[0]
    assert banner_rows > 20 and pixels.shape[1] == gray.shape[1]
    np.testing.assert_array_equal(pixels[banner_rows:], expected)
    # the banner is black with the statement drawn in yellow
    banner = pixels[:banner_rows].astype(int)
    yellow = (banner[..., 0] > 200) & (banner[..., 1] > 200) & (banner[..., 2] < 80)
    assert yellow.sum() > 50
    assert (banner.sum(axis=2) == 0).mean() > 0.6


def test_large_film_capture_is_reduced(tiny_predictor):
    data = study_file(synthetic_xray(2, size=(2000, 1600)))
    capture = screen_dicom(tiny_predictor, data).capture
    assert capture.Columns == round(1600 * dicom_results.MAX_CAPTURE_SIDE / 2000)
    assert capture.Rows - capture.Columns * 2000 / 1600 < 200  # the image, and the banner


def test_no_capture_when_not_asked(tiny_predictor, xray):
    results = screen_dicom(tiny_predictor, study_file(xray), overlay=False)
    assert isinstance(results.outcome, Screened)
    assert results.capture is None and results.datasets == [results.sr]


# -- UIDs -----------------------------------------------------------------------------


def test_uids_are_the_same_on_every_run(tiny_predictor, xray):
    """A restart that screens an image again makes the same instances, never new ones."""
    study = uid.generate_uid()
    data = study_file(xray, study_uid=study)
    first, again = screen_dicom(tiny_predictor, data), screen_dicom(tiny_predictor, data)
    for a, b in ((first.sr, again.sr), (first.capture, again.capture)):
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
        assert uid.UID(a.SOPInstanceUID).is_valid
    source_uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    version = tiny_predictor.version
    assert first.sr.SOPInstanceUID == result_uid(source_uid, version, "sr")
    assert first.capture.SOPInstanceUID == result_uid(source_uid, version, "sc")
    assert first.sr.SeriesInstanceUID == result_series_uid(study, version, "sr")
    # another image of the study: same result series, its own instances
    other = screen_dicom(tiny_predictor, study_file(synthetic_xray(3), study_uid=study))
    assert other.sr.SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert other.capture.SeriesInstanceUID == first.capture.SeriesInstanceUID
    assert other.sr.SOPInstanceUID != first.sr.SOPInstanceUID
    # another model version: other instances, other series
    assert result_uid(source_uid, version + ".1", "sr") != first.sr.SOPInstanceUID
    assert result_series_uid(study, version + ".1", "sr") != first.sr.SeriesInstanceUID


# -- inputs ---------------------------------------------------------------------------


def test_a_received_dataset_gives_the_same_results_as_its_file(tiny_predictor, xray):
    """A Storage SCP hands over a dataset with its file meta (pynetdicom's event)."""
    data = study_file(xray)
    dataset = pydicom.dcmread(io.BytesIO(data))
    from_bytes, from_dataset = screen_dicom(tiny_predictor, data), \
        screen_dicom(tiny_predictor, dataset)
    assert from_dataset.sr.SOPInstanceUID == from_bytes.sr.SOPInstanceUID
    assert from_dataset.outcome.prediction.probability \
        == pytest.approx(from_bytes.outcome.prediction.probability)
    dataset.file_meta = pydicom.dataset.FileMetaDataset()  # native pixels: syntax implied
    assert screen_dicom(tiny_predictor, dataset).sr.SOPInstanceUID == from_bytes.sr.SOPInstanceUID


@pytest.mark.parametrize("data", [encode(synthetic_xray(1)), b"", b"\x00" * 300,
                                  b"not a dicom file at all" * 20])
def test_what_is_not_dicom_is_refused_with_a_clear_error(tiny_predictor, data):
    with pytest.raises(NotDicom, match="not a DICOM file") as raised:
        screen_dicom(tiny_predictor, data)
    assert raised.value.dimse_status == 0xC000


def test_dicom_without_pixel_data_is_refused_with_a_clear_error(tiny_predictor, xray):
    ds = pydicom.dcmread(io.BytesIO(study_file(xray)))
    del ds["PixelData"]
    with pytest.raises(NoPixelData, match="no pixel data") as raised:
        screen_dicom(tiny_predictor, to_bytes(ds))
    assert raised.value.dimse_status == 0xA900
    assert PHI["PatientID"] not in str(raised.value)


def test_deflated_files_are_screened_and_bombs_refused(tiny_predictor, xray, monkeypatch):
    from pneumo import imaging

    data = study_file(xray, syntax=uid.DeflatedExplicitVRLittleEndian)
    assert isinstance(screen_dicom(tiny_predictor, data).outcome, Screened)
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 10_000)  # it inflates to ~66 KB
    with pytest.raises(TooLarge, match="inflates to more than") as raised:
        screen_dicom(tiny_predictor, data)
    assert raised.value.dimse_status == 0xA700


def test_dicom_without_study_uid_is_refused(tiny_predictor, xray):
    with pytest.raises(NoPixelData, match="StudyInstanceUID"):
        screen_dicom(tiny_predictor, make_dicom(xray, SeriesInstanceUID=uid.generate_uid()))


def test_no_identifier_reaches_the_log(tiny_predictor, xray, caplog):
    caplog.set_level(logging.DEBUG)
    screen_dicom(tiny_predictor, study_file(xray))
    screen_dicom(tiny_predictor, study_file(np.full((64, 64), 9, np.uint8)))
    for value in (PHI["PatientName"], "Doe", PHI["PatientID"], STUDY["AccessionNumber"],
                  "1.2.826.0.1.3680043"):  # no UID either: pydicom's root, as generated here
        assert value not in caplog.text
