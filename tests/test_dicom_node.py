"""``pneumo dicom-listen`` against a real PACS: Debian's Orthanc sends it studies, and the
results must come back into the same study.

One Orthanc and one node (the shipped model) serve the module; the restart test runs a
second node of its own, which it kills. Every wait is a generous deadline, never a
timing assertion. Skipped where Orthanc is not installed (``make pacs``). The tests of
the parts alone (the SCP on a broken spool, addresses, the command's errors) are fast.
"""

from __future__ import annotations

import datetime as dt
import io
import signal
import sqlite3
from contextlib import closing

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

from conftest import TRAIN_DATA
from dicom_factory import CT_STORAGE, DX_STORAGE, make_dataset, make_dicom, to_bytes
from dicom_peers import TEST_SCU, Node, Recorder, associate, echo, store_file_as_is, wait_for
from orthanc import Orthanc, require_orthanc
from pneumo.bench.server import free_port
from synthetic import synthetic_xray

RESULTS_TIMEOUT = 300  # seconds: screening on a busy 2-core machine, and Orthanc's jobs
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The made-up patient of these tests.
PATIENT = {"PatientName": "Testcase^Ada^Node", "PatientID": "NODE-TEST-4711",
           "PatientBirthDate": "19800229", "AccessionNumber": "ACC-NODE-0815"}


def study_image(pixels: np.ndarray, study_uid: str | None = None, number: int = 1,
                series_uid: str | None = None) -> bytes:
    """A DX chest image of the made-up patient, in a study of its own or of ``study_uid``."""
    return make_dicom(pixels, bits_stored=8, StudyInstanceUID=study_uid or uid.generate_uid(),
                      SeriesInstanceUID=series_uid or uid.generate_uid(), InstanceNumber=number,
                      StudyID="1", Modality="DX", **PATIENT)


def real_xray() -> np.ndarray:
    """One chest X-ray of the training collection, as grayscale pixels: the shipped
    model's input gate refuses every generated picture, so a screened result needs a
    real film. Read at test time, never copied into the repository."""
    if not TRAIN_DATA.is_dir():
        pytest.skip(f"real chest X-rays not found at {TRAIN_DATA} (../shared/data): the "
                    "shipped model's gate refuses generated pictures")
    path = sorted((TRAIN_DATA / "PNEUMONIA").iterdir())[0]
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def photo() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.camera())


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    """The nodes' ports, known before Orthanc starts (its configuration names them)."""
    return {"pneumo": free_port(), "restarting": free_port(), "limited": free_port()}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, ports):
    require_orthanc()
    server = Orthanc.start(tmp_path_factory.mktemp("pacs"),
                           modalities={name: ("PNEUMO", port) for name, port in ports.items()})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, orthanc, ports):
    started = Node.start(tmp_path_factory.mktemp("node"), orthanc.address, port=ports["pneumo"])
    yield started
    assert started.stop(signal.SIGINT) == 0, started.log()  # Ctrl-C: a graceful stop too
    assert "SIGINT received: stopping" in started.log()


def instances_of(orthanc: Orthanc, study_id: str) -> list[dict]:
    return orthanc.rest("GET", f"/studies/{study_id}/instances")


def results_of(orthanc: Orthanc, study_id: str, count: int) -> list[pydicom.Dataset]:
    """The instances of the study that pneumo made, once there are ``count`` of them."""
    def made_by_pneumo():
        found = []
        for instance in instances_of(orthanc, study_id):
            data = orthanc.rest("GET", f"/instances/{instance['ID']}/file")
            ds = pydicom.dcmread(io.BytesIO(data))
            if ds.SOPClassUID in (COMPREHENSIVE_SR, SECONDARY_CAPTURE):
                found.append(ds)
        return found if len(found) >= count else None

    return wait_for(made_by_pneumo, RESULTS_TIMEOUT, f"{count} result(s) in the study",
                    interval=1.0, on_fail=orthanc.log)


def send_through_orthanc(orthanc: Orthanc, files: list[bytes], modality: str = "pneumo"):
    """Store ``files`` in Orthanc over REST and have it C-STORE them to ``modality``;
    returns Orthanc's answers to the uploads."""
    uploaded = [orthanc.upload(data) for data in files]
    orthanc.send(modality, [answer["ID"] for answer in uploaded])
    return uploaded


def content(ds) -> list:
    """Every content item of an SR, depth first."""
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(content(item))
    return items


def named(ds, concept: tuple[str, str, str]) -> list:
    return [item for item in content(ds) if "ConceptNameCodeSequence" in item
            and (item.ConceptNameCodeSequence[0].CodeValue,
                 item.ConceptNameCodeSequence[0].CodingSchemeDesignator) == concept[:2]]


def delivered_line(node: Node, sop_instance_uid: str) -> str:
    """The node's log line saying the instance's results were delivered: it names the
    instance by the start of its UID's hash."""
    from pneumo.dicom_node.spool import uid_hash

    mark = f"[{uid_hash(sop_instance_uid)[:10]}]"

    def line():
        return next((text for text in node.log().splitlines()
                     if mark in text and "delivered to" in text), None)

    return wait_for(line, RESULTS_TIMEOUT, "the node's line for the instance",
                    on_fail=node.log)


def no_identifier_in(text: str, *values: str) -> None:
    for value in values:
        assert str(value) not in text, f"{value!r} found where no identifier may go"


# -- the tests ----------------------------------------------------------------------------

@pytest.mark.slow
def test_c_echo_is_answered(node):
    assert echo(node.port) == 0x0000


@pytest.mark.slow
@pytest.mark.reliability(19)
def test_round_trip_the_results_are_filed_in_the_same_study(node, orthanc, shipped_bundle):
    from pneumo import screening
    from pneumo.dicom_results import Concepts
    from pneumo.predictor import Predictor

    source = study_image(real_xray())
    expected = screening.screen(Predictor.from_bundle(shipped_bundle), source)
    assert isinstance(expected, screening.Screened), expected
    uploaded, = send_through_orthanc(orthanc, [source])
    sent = pydicom.dcmread(io.BytesIO(source))

    results = results_of(orthanc, uploaded["ParentStudy"], 2)
    sr, = [ds for ds in results if ds.SOPClassUID == COMPREHENSIVE_SR]
    capture, = [ds for ds in results if ds.SOPClassUID == SECONDARY_CAPTURE]
    for ds in (sr, capture):
        assert ds.StudyInstanceUID == sent.StudyInstanceUID
        assert ds.PatientID == PATIENT["PatientID"]
        assert str(ds.PatientName) == PATIENT["PatientName"]
        assert ds.SeriesInstanceUID != sent.SeriesInstanceUID
    assert sr.SeriesInstanceUID != capture.SeriesInstanceUID

    finding, = [item for item in named(sr, Concepts.PNEUMONIA) if item.ValueType == "CODE"]
    present = expected.prediction.label == "PNEUMONIA"
    wanted = Concepts.PRESENT if present else Concepts.ABSENT
    assert finding.ConceptCodeSequence[0].CodeValue == wanted[0]
    probability, = named(sr, Concepts.PROBABILITY)
    value = float(probability.MeasuredValueSequence[0].NumericValue)
    assert value == pytest.approx(expected.prediction.probability, abs=1e-4)
    threshold, = named(sr, Concepts.THRESHOLD)
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == \
        pytest.approx(expected.prediction.threshold, abs=1e-6)
    evidence = [ref.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence]
    assert evidence == [sent.SOPInstanceUID]
    images = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for item in content(sr) if item.get("ValueType") == "IMAGE"]
    assert sent.SOPInstanceUID in images

    assert "2 result(s) delivered" in delivered_line(node, sent.SOPInstanceUID)
    log = node.log()
    identifiers = (*PATIENT.values(), sent.SOPInstanceUID, sent.StudyInstanceUID)
    no_identifier_in(log, *identifiers)
    # the spool's database (and its log) keeps no identifier; the image itself is gone
    spool = node.data_dir / "dicom-node"
    for path in spool.glob("queue.sqlite3*"):
        no_identifier_in(path.read_bytes().decode("latin-1"), *identifiers)
    assert not [*(spool / "received").iterdir(), *(spool / "results").iterdir()]
    assert spool.stat().st_mode & 0o777 == 0o700  # while it holds any, only the node's


@pytest.mark.slow
def test_an_image_the_gate_refuses_gets_a_not_assessed_sr(node, orthanc):
    from pneumo.dicom_results import Concepts

    source = study_image(photo())
    uploaded, = send_through_orthanc(orthanc, [source])
    # the node's line for this instance says how many results it delivered
    line = delivered_line(node, pydicom.dcmread(io.BytesIO(source)).SOPInstanceUID)
    assert "not assessed" in line and "1 result(s) delivered" in line
    sr, = results_of(orthanc, uploaded["ParentStudy"], 1)
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.PatientID == PATIENT["PatientID"]
    finding, = [item for item in named(sr, Concepts.PNEUMONIA) if item.ValueType == "CODE"]
    assert finding.ConceptCodeSequence[0].CodeValue == Concepts.PRESENCE_UNDETERMINED[0]
    reason, = named(sr, Concepts.NOT_ASSESSED_REASON)
    assert reason.TextValue.startswith("Not assessed:")
    assert not named(sr, Concepts.PROBABILITY)
    # no Secondary Capture for an image that was not screened
    assert len(instances_of(orthanc, uploaded["ParentStudy"])) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case, status", [
    ("CT image", 0x0122),
    ("encapsulated PDF", 0x0122),
    ("Secondary Capture (a result sent back)", 0x0122),
    ("DX without pixel data", 0xA900),
    ("DX without a study UID", 0xA900),
])
def test_what_the_node_does_not_screen_gets_its_status(node, case, status):
    pixels = synthetic_xray(3, size=(64, 64))
    if case == "CT image":
        ds = make_dataset(pixels, modality="CT", sop_class=CT_STORAGE)
    elif case == "encapsulated PDF":
        ds = make_dataset(pixels, modality="DOC", sop_class=uid.EncapsulatedPDFStorage)
        del ds.PixelData
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    elif case.startswith("Secondary Capture"):
        ds = make_dataset(pixels, modality="OT", sop_class=SECONDARY_CAPTURE)
    elif case == "DX without pixel data":
        ds = make_dataset(pixels)
        del ds.PixelData
    else:
        ds = make_dataset(pixels)
    if case != "DX without a study UID":
        ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    assoc = associate(node.port, contexts=[ds.SOPClassUID])
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert answer.Status == status, case


@pytest.mark.slow
@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEGLSLossless])
def test_a_compressed_image_is_accepted_as_the_pacs_sent_it(node, orthanc, syntax):
    """Sent straight to the node (not through Orthanc) in a compressed transfer syntax:
    kept as sent, decoded by the screener, and its SR filed in Orthanc by study UID."""
    from pneumo.dicom_results import Concepts

    study_uid = uid.generate_uid()
    data = make_dicom(synthetic_xray(11, size=(128, 128)), syntax, bits_stored=8,
                      StudyInstanceUID=study_uid, SeriesInstanceUID=uid.generate_uid(),
                      **PATIENT)
    ds = pydicom.dcmread(io.BytesIO(data))
    assoc = associate(node.port, contexts=[(DX_STORAGE, [syntax])])
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()

    def filed():
        found = orthanc.rest("POST", "/tools/find", {
            "Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        return found[0] if found else None

    study_id = wait_for(filed, RESULTS_TIMEOUT, "the SR's study in Orthanc", interval=1.0)
    sr, = results_of(orthanc, study_id, 1)
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.PatientID == PATIENT["PatientID"]
    # decoded: the drawing got as far as the input gate, which refuses it
    reason, = named(sr, Concepts.NOT_ASSESSED_REASON)
    assert reason.TextValue.startswith("Not assessed: rejected:"), reason.TextValue


@pytest.mark.slow
def test_an_unparsable_data_set_cannot_be_understood(node, tmp_path):
    """A valid file meta header, then bytes that are not a data set: 0xC000."""
    from pynetdicom.dsutils import split_dataset

    path = tmp_path / "broken.dcm"
    path.write_bytes(to_bytes(make_dataset(synthetic_xray(4, size=(32, 32)))))
    _, offset = split_dataset(path)
    # after the file meta, a sequence of undefined length whose items are not items
    path.write_bytes(path.read_bytes()[:offset]
                     + b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff\x01\x02\x03")
    assert store_file_as_is(node.port, path, (DX_STORAGE, [uid.ExplicitVRLittleEndian])) \
        == 0xC000


@pytest.mark.slow
def test_a_deflate_bomb_is_refused_before_it_is_inflated(node, tmp_path):
    """80 KB on the wire that would inflate to 72 MB, past the decoder's limit: refused
    from its file meta and a bounded inflation, on the association's thread."""
    ds = make_dataset(np.zeros((9000, 8000), np.uint8))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    path = tmp_path / "bomb.dcm"
    path.write_bytes(to_bytes(ds))
    del ds
    assert path.stat().st_size < 1_000_000
    assert store_file_as_is(node.port, path,
                            (DX_STORAGE, [uid.DeflatedExplicitVRLittleEndian])) == 0xA700
    assert "inflates to more than" in node.log()


@pytest.mark.slow
def test_a_calling_ae_title_not_on_the_allow_list_is_rejected(node):
    assoc = associate(node.port, ae_title="INTRUDER")
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
    assert echo(node.port, ae_title=TEST_SCU) == 0x0000  # the node still serves the others
    assert "'INTRUDER' rejected: calling AE title not on the allow-list" in node.log()
    # a PACS calling the node by another AE title is misconfigured: told so at once
    misdirected = associate(node.port, called="NOTPNEUMO")
    assert misdirected.is_rejected
    assert misdirected.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
    wait_for(lambda: "it called 'NOTPNEUMO', this node is 'PNEUMO'" in node.log(), 60,
             "the node's line about the misdirected association", on_fail=node.log)


@pytest.mark.slow
def test_killed_in_the_middle_of_a_study_loses_nothing_and_sends_nothing_twice(
        orthanc, ports, tmp_path):
    """Six images of one study. The first two come back before the kill; the next two are
    screened while the PACS refuses their results (0xA700, tried again later); the fifth
    arrives just before SIGKILL. Restarted, the node is sent the whole study again, as a
    PACS whose job failed does: each result arrives exactly once."""
    recorder = Recorder()
    study_uid, series_uid = uid.generate_uid(), uid.generate_uid()
    files = [study_image(photo() if i % 2 else synthetic_xray(i, size=(256, 256)), study_uid,
                         number=i + 1, series_uid=series_uid) for i in range(6)]
    sources = [str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for data in files]
    node = Node.start(tmp_path, recorder.address, port=ports["restarting"],
                      extra=("--no-overlay",))
    try:
        send_through_orthanc(orthanc, files[:2], "restarting")
        wait_for(lambda: len(recorder.uids()) >= 2, RESULTS_TIMEOUT, "the first two results",
                 on_fail=node.log)
        recorder.refusing = True
        send_through_orthanc(orthanc, files[2:4], "restarting")
        wait_for(lambda: len(set(recorder.refused)) >= 2, RESULTS_TIMEOUT,
                 "two refused deliveries", on_fail=node.log)
        send_through_orthanc(orthanc, files[4:5], "restarting")
        node.kill()
        assert len(recorder.uids()) == 2

        recorder.refusing = False
        node.restart()
        send_through_orthanc(orthanc, files, "restarting")  # the whole study again
        wait_for(lambda: len(recorder.uids()) >= 6, RESULTS_TIMEOUT, "all six results",
                 on_fail=node.log)
        database = node.data_dir / "dicom-node" / "queue.sqlite3"

        def settled():
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                states = dict(db.execute("SELECT state, COUNT(*) FROM instances "
                                         "GROUP BY state").fetchall())
                waiting = db.execute("SELECT COUNT(*) FROM results WHERE sent IS NULL"
                                     ).fetchone()[0]
            return states == {"done": 6} and waiting == 0

        wait_for(settled, RESULTS_TIMEOUT, "every instance done", on_fail=node.log)
        assert node.stop() == 0
    finally:
        node.stop()
        recorder.stop()

    uids = recorder.uids()
    assert len(uids) == len(set(uids)) == 6, "a result was delivered twice"
    referenced = sorted(
        ref.ReferencedSOPInstanceUID for ds in recorder.received
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence)
    assert referenced == sorted(sources)
    assert {ds.StudyInstanceUID for ds in recorder.received} == {study_uid}
    assert not list((node.data_dir / "dicom-node" / "received").iterdir()), \
        "patient data left in the spool after delivery"
    assert "SIGTERM received: stopping" in node.log()


def test_a_spool_that_cannot_write_answers_out_of_resources(tmp_path):
    """The SCP alone, in this process, on a spool whose folder became a file."""
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", [TEST_SCU])
    port = free_port()
    scp.start("127.0.0.1", port)
    try:
        spool.received_dir.rmdir()
        spool.received_dir.write_bytes(b"not a folder")
        ds = make_dataset(synthetic_xray(5, size=(32, 32)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
        assoc = associate(port, contexts=[DX_STORAGE])
        try:
            answer = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert answer.Status == 0xA700
        assert spool.next_to_screen() is None
    finally:
        scp.stop()
        spool.close()


def test_one_association_past_the_limit_is_rejected_as_transient_and_logged(tmp_path, caplog):
    """The SCP alone, in this process, with --max-associations 2: two associations open,
    a third is rejected as transient ("local limit exceeded") and the node says why; once
    one closes, the next is served."""
    import logging

    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    caplog.set_level(logging.WARNING, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", [TEST_SCU], max_associations=2)
    port = free_port()
    scp.start("127.0.0.1", port)
    held = []
    try:
        held = [associate(port) for _ in range(2)]
        assert all(assoc.is_established for assoc in held)
        third = associate(port)
        assert third.is_rejected
        rejection = third.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == \
            (0x02, 0x03, 0x02)  # transient, presentation related, local limit exceeded
        wait_for(lambda: "serves 2 association(s), its limit (--max-associations)"
                 in caplog.text, 60, "the node's line about the rejection")
        held.pop().release()
        wait_for(lambda: echo(port) == 0x0000, 60, "an association once one closed")
    finally:
        for assoc in held:
            assoc.release()
        scp.stop()
        spool.close()
    assert "not on the allow-list" not in caplog.text


@pytest.mark.slow
def test_orthanc_past_the_association_limit_is_refused_and_can_send_again(orthanc, ports,
                                                                          tmp_path):
    """What docs/integration.md tells the operator: Orthanc, refused as one association
    too many, marks its job failed (it does not try again by itself); sent again once an
    association is free, the image is kept. The SCP alone, in this process."""
    import urllib.error

    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", ["ORTHANC", TEST_SCU], max_associations=1)
    scp.start("127.0.0.1", ports["limited"])
    try:
        held = associate(ports["limited"])
        assert held.is_established
        uploaded, = [orthanc.upload(study_image(synthetic_xray(12, size=(64, 64))))]
        with pytest.raises(urllib.error.HTTPError) as refused:
            orthanc.send("limited", [uploaded["ID"]])
        assert "Association Rejected" in refused.value.read().decode()
        assert spool.counts() == {"undelivered": 0}
        held.release()
        wait_for(lambda: echo(ports["limited"]) == 0x0000, 60, "a free association")
        orthanc.send("limited", [uploaded["ID"]])
        assert spool.counts() == {"received": 1, "undelivered": 0}
    finally:
        scp.stop()
        spool.close()


def test_the_association_limit_is_checked_and_its_default_documented():
    from pneumo.cli import build_parser
    from pneumo.dicom_node.scp import MAX_ASSOCIATIONS, check_max_associations

    listen = build_parser().parse_args(["dicom-listen", "--results-to", "PACS@127.0.0.1:104"])
    assert listen.max_associations == MAX_ASSOCIATIONS == 10  # pynetdicom's, as the docs say
    assert check_max_associations(1) == 1
    for wrong in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="expected 1 or more"):
            check_max_associations(wrong)


@pytest.mark.slow
def test_a_result_the_pacs_refused_is_delivered_on_a_later_try_once(tmp_path, caplog):
    """The sender alone, in this process, against a recording SCP that first rejects the
    node's AE title, then answers 0xA700 (out of resources), then stores."""
    import logging
    import threading

    from pneumo.dicom_node.screener import part10
    from pneumo.dicom_node.sender import Destination, Sender
    from pneumo.dicom_node.spool import Spool

    caplog.set_level(logging.WARNING, "pneumo.dicom_node")
    recorder = Recorder()
    recorder.refusing = True
    recorder.ae.require_calling_aet = ["SOMEONE"]
    spool = Spool(tmp_path, "test")
    ds = make_dataset(synthetic_xray(6, size=(32, 32)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    instance = spool.receive(to_bytes(ds), ds.SOPInstanceUID).instance
    result = make_dataset(synthetic_xray(7, size=(32, 32)))  # stands for an SR: any object
    spool.screened(instance, "test", 0.0, [("sr", str(result.SOPInstanceUID), part10(result))])
    stop, wake, delivered = threading.Event(), threading.Event(), []
    sender = Sender(spool, Destination.parse(recorder.address), "PNEUMO", stop, wake,
                    on_delivered=delivered.append)
    sender.start()
    try:
        wait_for(lambda: "association rejected" in caplog.text, RESULTS_TIMEOUT,
                 "a rejected association")
        recorder.ae.require_calling_aet = []
        wait_for(lambda: recorder.refused, RESULTS_TIMEOUT, "a refused try")
        recorder.refusing = False
        wait_for(lambda: delivered, RESULTS_TIMEOUT, "the delivery")
    finally:
        stop.set()
        wake.set()
        sender.join(60)
        recorder.stop()
        spool.close()
    assert recorder.uids() == [str(result.SOPInstanceUID)]
    assert delivered == [instance.id]
    assert "Calling AE title not recognised" in caplog.text and "0xA700" in caplog.text
    assert not list(spool.received_dir.iterdir()) and not list(spool.results_dir.iterdir())


def test_an_image_that_breaks_screening_is_kept_and_the_next_one_screened(
        tmp_path, tiny_predictor, caplog):
    """The screener alone, in this process: a bug on one image (here a screening function
    that fails on its first call) leaves it failed, on disk for someone to look at, and
    the screener goes on with the next."""
    import logging
    import threading

    from pneumo.dicom_node.screener import Screener
    from pneumo.dicom_node.spool import Spool
    from pneumo.dicom_results import screen_dicom

    caplog.set_level(logging.INFO, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    instances = []
    for seed in (8, 9):
        ds = make_dataset(synthetic_xray(seed, size=(96, 96)), bits_stored=8)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
        instances.append(spool.receive(to_bytes(ds), ds.SOPInstanceUID).instance)
    calls = []

    def screen(data):
        calls.append(len(data))
        if len(calls) == 1:
            raise ZeroDivisionError("a bug")
        return screen_dicom(tiny_predictor, data, overlay=False)

    stop, wake = threading.Event(), threading.Event()
    screener = Screener(spool, screen, stop, wake)
    screener.start()
    try:
        wait_for(lambda: spool.counts().get("screened"), RESULTS_TIMEOUT, "the second image")
    finally:
        stop.set()
        wake.set()
        screener.join(60)
    assert spool.counts() == {"failed": 1, "screened": 1, "undelivered": 1}
    assert instances[0].file.is_file()  # kept for someone to look at
    assert f"instance {instances[0].tag}: could not be screened (ZeroDivisionError)" \
        in caplog.text
    spool.close()


@pytest.fixture
def node_settings_restored(monkeypatch):
    """``node.run`` in this process: what it sets for its process is put back for the
    other tests (pydicom's validation, the libraries' log levels)."""
    import logging

    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                        pydicom.config.settings.reading_validation_mode)
    for library in ("pynetdicom", "highdicom"):
        monkeypatch.setattr(logging.getLogger(library), "level", logging.getLogger(library).level)


def test_a_data_folder_that_cannot_hold_the_spool_is_one_line(tmp_path, tiny_bundle, capsys,
                                                              node_settings_restored):
    from pneumo.cli import main

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert main(["dicom-listen", "--results-to", "PACS@127.0.0.1:104", "--model",
                 str(tiny_bundle), "--data-dir", str(not_a_folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"pneumo dicom-listen: error: cannot keep the spool in "
                            f"{not_a_folder / 'dicom-node'}")
    assert "Traceback" not in error


def test_a_second_node_on_the_same_spool_is_told_before_the_model_loads(
        tmp_path, tiny_bundle, capsys, monkeypatch, node_settings_restored):
    from pneumo.cli import main
    from pneumo.dicom_node.spool import Spool
    from pneumo.predictor import Predictor

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the spool was checked")

    monkeypatch.setattr(Predictor, "from_bundle", no_model)
    first = Spool(tmp_path, "0")
    try:
        assert main(["dicom-listen", "--results-to", "PACS@127.0.0.1:104", "--model",
                     str(tiny_bundle), "--data-dir", str(tmp_path)]) == 2
    finally:
        first.close()
    error = capsys.readouterr().err
    assert error.startswith("pneumo dicom-listen: error: another pneumo dicom-listen already "
                            f"uses {tmp_path / 'dicom-node'}")


def test_a_worker_that_dies_stops_the_node_with_status_1(tmp_path, tiny_bundle, monkeypatch,
                                                        caplog, node_settings_restored):
    """A node whose sender (or screener) died would go on acknowledging images it never
    sends: it stops instead, with status 1, for the service manager to restart it."""
    import logging
    import threading

    from pneumo.dicom_node import node
    from pneumo.dicom_node.sender import Sender

    def broken(self):
        raise sqlite3.OperationalError("database is locked")

    died = []
    monkeypatch.setattr(Sender, "run", broken)
    monkeypatch.setattr(threading, "excepthook", died.append)
    caplog.set_level(logging.INFO, "pneumo.dicom_node")
    assert node.run(host="127.0.0.1", port=free_port(), ae_title="PNEUMO",
                    results_to="PACS@127.0.0.1:1", model=str(tiny_bundle),
                    data_dir=tmp_path) == 1
    assert [hook.thread.name for hook in died] == ["pneumo-sender"]
    assert "pneumo-sender stopped on an unexpected error" in caplog.text


def test_a_running_node_whose_screener_hangs_logs_the_waiting_image_at_error(
        tmp_path, tiny_bundle, monkeypatch, caplog, node_settings_restored):
    """``node.run`` in this process, its screening hung on the first image: the image is
    acknowledged, and once it has waited --overdue-after (1 s here) the node's own loop
    logs it at ERROR, by its tag, while the screener is still stuck."""
    import logging
    import os
    import threading

    from pneumo import dicom_results
    from pneumo.dicom_node import node
    from pneumo.dicom_node.spool import uid_hash

    release = threading.Event()

    def hung(predictor, data, overlay=True):
        release.wait(120)
        raise TimeoutError("the model hung")

    monkeypatch.setattr(dicom_results, "screen_dicom", hung)
    monkeypatch.setattr(node, "WATCH_INTERVAL", 0.2)
    caplog.set_level(logging.INFO, "pneumo.dicom_node")
    port = free_port()
    ds = make_dataset(synthetic_xray(13, size=(32, 32)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    tag = f"[{uid_hash(ds.SOPInstanceUID)[:10]}]"
    answers = []

    def overdue_lines():
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.ERROR and "still not screened" in r.getMessage()]

    def pacs():
        try:
            wait_for(lambda: "listening as" in caplog.text, 120, "the node to listen")
            assoc = associate(port, contexts=[DX_STORAGE])
            try:
                answers.append(assoc.send_c_store(ds).Status)
            finally:
                assoc.release()
            wait_for(overdue_lines, 60, "the node's ERROR line")
        finally:
            release.set()
            os.kill(os.getpid(), signal.SIGTERM)  # the node's own handler: a graceful stop

    sender = threading.Thread(target=pacs, daemon=True)
    sender.start()
    status = node.run(host="127.0.0.1", port=port, ae_title="PNEUMO",
                      results_to="PACS@127.0.0.1:1", model=str(tiny_bundle),
                      data_dir=tmp_path, overdue_after=dt.timedelta(seconds=1))
    sender.join(60)
    assert status == 0 and answers == [0x0000]
    line, = overdue_lines()
    assert line.startswith("1 instance(s) still not screened more than 1 s after they "
                           f"arrived (oldest: #1 {tag}, ")
    assert f"the screener has been on #1 {tag} for " in line
    assert str(ds.SOPInstanceUID) not in caplog.text


def test_a_screening_bug_quoting_a_header_value_logs_no_identifier(tmp_path, caplog):
    """Even at DEBUG, an unexpected error is logged by its type and where it was
    raised: a library's message can quote the header (here the patient's name)."""
    import logging
    import threading

    from pneumo.dicom_node.screener import Screener
    from pneumo.dicom_node.spool import Spool

    caplog.set_level(logging.DEBUG, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    try:
        ds = make_dataset(synthetic_xray(8, size=(32, 32)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
        instance = spool.receive(to_bytes(ds), ds.SOPInstanceUID).instance

        def screen(data):
            raise ValueError(f"invalid value {PATIENT['PatientName']!r} for PN")

        Screener(spool, screen, threading.Event(), threading.Event()).process(instance)
        assert spool.counts().get("failed") == 1
    finally:
        spool.close()
    assert "ValueError, raised at:" in caplog.text and "in screen" in caplog.text
    assert PATIENT["PatientName"] not in caplog.text


def test_destination_addresses_are_checked():
    from pneumo.dicom_node.sender import Destination, backoff

    assert str(Destination.parse("ORTHANC@127.0.0.1:4242")) == "ORTHANC@127.0.0.1:4242"
    assert Destination.parse("PACS@[::1]:104").host == "::1"
    for wrong in ("ORTHANC@127.0.0.1", "127.0.0.1:4242", "A\\B@host:1", "X@host:70000",
                  "TOO-LONG-AE-TITLE-X@host:1"):
        with pytest.raises(ValueError):
            Destination.parse(wrong)
    assert [backoff(n) for n in (1, 2, 3)] == [2, 4, 8] and backoff(50) == 300



@pytest.mark.parametrize("arguments, message", [
    (["--results-to", "ORTHANC@127.0.0.1"], "expected AET@HOST:PORT"),
    (["--results-to", "ORTHANC@127.0.0.1:4242", "--ae-title", "A\\B"], "not a valid AE title"),
    (["--results-to", "ORTHANC@127.0.0.1:4242", "--calling-aets", "X" * 17],
     "not a valid AE title"),
    (["--results-to", "ORTHANC@127.0.0.1:4242", "--port", "70000"], "--port 70000: expected"),
    (["--results-to", "ORTHANC@127.0.0.1:4242", "--max-associations", "0"],
     "--max-associations 0: expected 1 or more"),
    (["--results-to", "ORTHANC@127.0.0.1:4242", "--max-associations", "-3"],
     "--max-associations -3: expected 1 or more"),
])
def test_a_wrong_address_or_ae_title_is_one_line_not_a_traceback(arguments, message, capsys):
    from pneumo.cli import main

    assert main(["dicom-listen", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pneumo dicom-listen: error:") and message in error
    assert "Traceback" not in error


def test_the_start_up_warning_about_who_may_call_knows_client_certificates():
    """Beyond loopback without --calling-aets the node warns; with client certificates
    (--tls-cert and --tls-ca) an AE title is still not tied to them, so it still asks
    for --calling-aets, but no longer says a firewall is the only guard."""
    import ssl

    from pneumo.dicom_node.node import who_may_call_warning

    clear = who_may_call_warning("0.0.0.0", [], None)
    assert clear == ("listening beyond loopback and accepting any calling AE title: give "
                     "--calling-aets, and keep the port behind a firewall or require client "
                     "certificates (--tls-ca): an AE title is a name, not a password")
    server_only = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS, no client certificates
    assert who_may_call_warning("10.0.0.2", [], server_only) == clear
    mutual = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mutual.verify_mode = ssl.CERT_REQUIRED
    assert who_may_call_warning("0.0.0.0", [], mutual) == (
        "listening beyond loopback and accepting any calling AE title from every peer "
        "with a certificate --tls-ca trusts: give --calling-aets (a certificate is not "
        "tied to an AE title)")
    for host, aets, context in [("127.0.0.1", [], None), ("localhost", [], None),
                                ("0.0.0.0", ["ORTHANC"], None),
                                ("0.0.0.0", ["ORTHANC"], mutual)]:
        assert who_may_call_warning(host, aets, context) is None
