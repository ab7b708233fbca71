"""``pneumo dicom-listen`` over DICOM TLS, against a real PACS: Debian's Orthanc with DICOM
TLS on, its own certificate, and a CA it trusts.

The certificates are made for each run by the ``openssl`` command (``certificates.py``):
a hospital CA that issues the PACS's and the node's certificates, and another CA, whose
certificates nobody here trusts. Orthanc requires a client certificate from every peer
(``DicomTlsRemoteCertificateRequired``), so the node's results go over mutual TLS; the
node requires one too (``--tls-ca``).

One Orthanc and one node (the shipped model) serve the module; the tests of a node that
does not trust the PACS and of a second Orthanc with an untrusted certificate start
their own. Skipped where Orthanc or openssl is not installed. The command's errors are
fast tests of their own.
"""

from __future__ import annotations

import io
import sqlite3
import ssl
import urllib.error
from contextlib import closing
from pathlib import Path

import pydicom
import pytest

from certificates import CertificateAuthority, Identity, require_openssl
from dicom_peers import Node, associate, echo, wait_for
from orthanc import Orthanc, OrthancTLS, require_orthanc
from pneumo.bench.server import free_port
from test_dicom_node import (
    COMPREHENSIVE_SR,
    PATIENT,
    RESULTS_TIMEOUT,
    delivered_line,
    photo,
    results_of,
    send_through_orthanc,
    study_image,
)


class PKI:
    """The run's certificates: the hospital's CA and what it issued, and an outsider."""

    def __init__(self, folder: Path):
        self.ca = CertificateAuthority.create(folder / "hospital", "hospital")
        self.pacs = self.ca.issue("pacs")
        self.node = self.ca.issue("node")
        self.elsewhere = CertificateAuthority.create(folder / "elsewhere", "elsewhere")
        self.outsider = self.elsewhere.issue("outsider")

    def node_options(self, results_ca: Path | None = None) -> tuple[str, ...]:
        """dicom-listen's TLS options: the node's certificate both ways, client
        certificates required, the PACS checked against ``results_ca`` (the hospital's)."""
        return ("--tls-cert", str(self.node.cert), "--tls-key", str(self.node.key),
                "--tls-ca", str(self.ca.cert),
                "--results-tls-ca", str(results_ca or self.ca.cert),
                "--results-tls-cert", str(self.node.cert),
                "--results-tls-key", str(self.node.key))

    def client(self, identity: Identity | None = None) -> tuple[ssl.SSLContext, None]:
        """pynetdicom's ``tls_args`` for a test SCU that trusts the hospital's CA and shows
        ``identity`` (the node's certificate: one the node trusts; None: none). Made as the
        node makes its own, whose sockets pynetdicom does not leave open on a failure."""
        from pneumo.dicom_node.tls import TLSOptions

        return TLSOptions(results_ca=str(self.ca.cert),
                          results_cert=str(identity.cert) if identity else None,
                          results_key=str(identity.key) if identity else None
                          ).client("127.0.0.1").tls_args


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    require_openssl()
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"pneumo": free_port(), "untrusting": free_port()}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, pki, ports):
    require_orthanc()
    server = Orthanc.start(tmp_path_factory.mktemp("pacs"),
                           modalities={name: ("PNEUMO", port) for name, port in ports.items()},
                           tls=OrthancTLS(pki.pacs.cert, pki.pacs.key, pki.ca.cert))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, pki, orthanc, ports):
    # the PACS by name: its certificate is checked for "localhost" too
    started = Node.start(tmp_path_factory.mktemp("node"),
                         f"{orthanc.ae_title}@localhost:{orthanc.dicom_port}",
                         port=ports["pneumo"], extra=pki.node_options(),
                         tls_args=pki.client(pki.node))
    yield started
    assert started.stop() == 0, started.log()


def new_lines(node: Node, start: int) -> str:
    return node.log()[start:]


# -- against the real PACS ----------------------------------------------------------------

@pytest.mark.slow
def test_round_trip_over_tls_files_the_results_in_the_study(node, orthanc):
    """Orthanc sends over TLS to the node, which sends the SR back over mutual TLS: both
    ports speak only TLS, so the SR in the study came that way."""
    source = study_image(photo())
    uploaded, = send_through_orthanc(orthanc, [source])
    sent = pydicom.dcmread(io.BytesIO(source))
    assert "1 result(s) delivered" in delivered_line(node, sent.SOPInstanceUID)
    sr, = results_of(orthanc, uploaded["ParentStudy"], 1)
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.StudyInstanceUID == sent.StudyInstanceUID
    assert sr.PatientID == PATIENT["PatientID"]
    log = node.log()
    assert "listening over TLS (client certificates required, checked against --tls-ca); " \
           f"results to ORTHANC@localhost:{orthanc.dicom_port} over TLS, the PACS's " \
           "certificate checked against --results-tls-ca and for the name localhost, with " \
           "a client certificate" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_dicom_in_the_clear_is_refused_and_the_node_goes_on(node):
    """A peer that sends its A-ASSOCIATE-RQ in the clear gets no association, and the
    node says why. (Sent from a raw socket: pynetdicom's own would stay open.)"""
    import socket

    start = len(node.log())
    request = b"\x01\x00\x00\x00\x00\x44\x00\x01\x00\x00" + b"PNEUMO".ljust(16) + \
        b"TESTSCU".ljust(16) + bytes(32)  # an A-ASSOCIATE-RQ's fixed part
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as peer:
        peer.sendall(request)
        try:
            answer = peer.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x02")  # no A-ASSOCIATE-AC
    wait_for(lambda: "failed: the peer does not speak TLS (DICOM in the clear?); no "
                     "association" in new_lines(node, start), 60,
             "the node's line about the plain association", on_fail=node.log)
    assert echo(node.port, tls_args=node.tls_args) == 0x0000


@pytest.mark.slow
def test_a_client_without_a_certificate_the_node_trusts_is_refused(node, pki, orthanc,
                                                                    tmp_path):
    """--tls-ca: a peer with no certificate, or with one from a CA the node does not
    trust (here a second Orthanc, which trusts the node), gets no association; each
    refusal is one line in the node's log, and the node serves the others."""
    start = len(node.log())
    assert not associate(node.port, tls_args=pki.client()).is_established
    wait_for(lambda: "failed: the peer sent no certificate, and one is required; no "
                     "association" in new_lines(node, start), 60,
             "the node's line about the client without a certificate", on_fail=node.log)

    start = len(node.log())
    outsider = Orthanc.start(tmp_path / "outsider", modalities={"pneumo": ("PNEUMO", node.port)},
                             ae_title="OUTSIDER",
                             tls=OrthancTLS(pki.outsider.cert, pki.outsider.key, pki.ca.cert))
    try:
        with pytest.raises(urllib.error.HTTPError):
            outsider.rest("POST", "/modalities/pneumo/echo", {})
    finally:
        outsider.stop()
    wait_for(lambda: "failed: the peer's certificate is not signed by a CA trusted here "
                     "(unable to get local issuer certificate); no association"
                     in new_lines(node, start), 60,
             "the node's line about the untrusted Orthanc", on_fail=node.log)

    assert orthanc.rest("POST", "/modalities/pneumo/echo", {}) == {}  # the trusted PACS
    assert echo(node.port, tls_args=node.tls_args) == 0x0000
    assert "Traceback" not in node.log()


@pytest.mark.slow
def test_a_pacs_the_node_does_not_trust_gets_nothing_and_the_results_wait(
        pki, orthanc, ports, tmp_path):
    """--results-tls-ca of another CA: every delivery fails its handshake, is logged in
    one line and tried again later; the results stay in the spool. Restarted with the
    right CA, the node delivers them."""
    folder = tmp_path / "untrusting"
    node = Node.start(folder, orthanc.address, port=ports["untrusting"],
                      extra=pki.node_options(results_ca=pki.elsewhere.cert),
                      tls_args=pki.client(pki.node))
    source = study_image(photo())
    try:
        uploaded, = send_through_orthanc(orthanc, [source], "untrusting")
        refused = (f"result(s) not delivered to {orthanc.address}: TLS handshake with the "
                   "PACS failed: the peer's certificate is not signed by a CA trusted here (")
        wait_for(lambda: node.log().count(refused) >= 2, RESULTS_TIMEOUT,
                 "two refused deliveries", on_fail=node.log)
        assert "next try in 2 s" in node.log() and "next try in 4 s" in node.log()
        assert node.stop() == 0
    finally:
        node.stop()
    # one line for each failed try: the node's, not pynetdicom's
    assert "Traceback" not in node.log() and "pynetdicom" not in node.log()
    database = node.data_dir / "dicom-node" / "queue.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        waiting = db.execute("SELECT attempts, last_error FROM results WHERE sent IS NULL"
                             ).fetchall()
    assert len(waiting) == 1 and waiting[0][0] >= 2
    assert waiting[0][1].startswith("TLS handshake with the PACS failed")
    assert len(orthanc.rest("GET", f"/studies/{uploaded['ParentStudy']}/instances")) == 1

    node = Node.start(folder, orthanc.address, port=ports["untrusting"],
                      extra=pki.node_options(), tls_args=pki.client(pki.node),
                      log_name="node-restarted.log")
    try:
        sr, = results_of(orthanc, uploaded["ParentStudy"], 1)
        assert sr.SOPClassUID == COMPREHENSIVE_SR
        wait_for(lambda: "1 result(s) delivered" in node.log(), RESULTS_TIMEOUT,
                 "the node's delivery line", on_fail=node.log)
    finally:
        status = node.stop()
    assert status == 0, node.log()


@pytest.mark.slow
def test_a_pacs_that_wants_a_client_certificate_is_one_line(pki, orthanc, caplog):
    """Without --results-tls-cert, Orthanc (DicomTlsRemoteCertificateRequired) ends the
    handshake; under TLS 1.3 the client learns it only on its first read, after
    pynetdicom has logged its own lines (and a traceback), which the node leaves out."""
    import logging

    from pneumo.dicom_node.tls import TLSOptions, describe, quiet_pynetdicom_tls_failures

    quiet_pynetdicom_tls_failures()
    caplog.set_level(logging.DEBUG, "pynetdicom")
    without = TLSOptions(results_ca=str(pki.ca.cert)).client("127.0.0.1")
    assert not associate(orthanc.dicom_port, called=orthanc.ae_title,
                         tls_args=without.tls_args).is_established
    assert describe(without.take_failure()) in (
        "the peer requires a client certificate",  # TLS 1.3
        ("the peer ended the handshake (no cipher in common, or a client certificate it "
         "wants)"))  # TLS 1.2
    assert not [record for record in caplog.records
                if record.name in ("pynetdicom.transport", "pynetdicom.dul")
                and record.levelno >= logging.WARNING]


@pytest.mark.slow
def test_the_pacs_name_is_checked_and_so_is_its_address(pki, tmp_path):
    """A PACS whose certificate names only pacs.example and 127.0.0.1: reached as
    localhost, the name does not match and the handshake fails; reached by its address,
    which the certificate lists, it is accepted (one that lists no address: below)."""
    from pneumo.dicom_node.tls import TLSOptions, describe

    elsewhere = pki.ca.issue("pacs-example", hosts=("pacs.example", "127.0.0.1"))
    pacs = Orthanc.start(tmp_path / "pacs", tls=OrthancTLS(elsewhere.cert, elsewhere.key,
                                                           pki.ca.cert))
    options = TLSOptions(results_ca=str(pki.ca.cert), results_cert=str(pki.node.cert),
                         results_key=str(pki.node.key))
    try:
        by_name = options.client("localhost")
        assert not associate(pacs.dicom_port, called=pacs.ae_title,
                             tls_args=by_name.tls_args).is_established
        assert describe(by_name.take_failure()) == "the peer's certificate was not " \
            "accepted (Hostname mismatch, certificate is not valid for 'localhost'.)"
        by_address = options.client("127.0.0.1")
        assoc = associate(pacs.dicom_port, called=pacs.ae_title, tls_args=by_address.tls_args)
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        pacs.stop()


# -- the parts alone ------------------------------------------------------------------------

def test_a_peer_that_never_shakes_hands_holds_up_no_one(pki, tmp_path, monkeypatch, caplog):
    """The SCP alone, in this process: a connection that says nothing waits on its own
    thread, and is dropped with one line after the handshake's deadline; a peer that
    connects meanwhile is served at once."""
    import logging
    import socket
    import time

    from pneumo.dicom_node import tls
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT", 2.0)
    caplog.set_level(logging.WARNING, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", None)
    port = free_port()
    options = tls.TLSOptions(cert=str(pki.node.cert), key=str(pki.node.key),
                             ca=str(pki.ca.cert))
    scp.start("127.0.0.1", port, options.server_context())
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        time.sleep(0.2)  # accepted, its handshake waiting
        assert echo(port, tls_args=pki.client(pki.node)) == 0x0000
        assert "no handshake" not in caplog.text
        wait_for(lambda: "failed: no handshake within 2 s; no association" in caplog.text,
                 30, "the line about the silent peer")
    finally:
        silent.close()
        scp.stop()
        spool.close()


@pytest.fixture(scope="module")
def bad_files(pki, tmp_path_factory) -> dict[str, str]:
    """Files that are not what their option wants."""
    import subprocess

    folder = tmp_path_factory.mktemp("bad")
    encrypted = folder / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.node.key), "-aes256", "-passout",
                    "pass:secret", "-out", str(encrypted)], check=True)
    (folder / "empty.pem").write_text("")
    return {"cert": str(pki.node.cert), "key": str(pki.node.key), "ca": str(pki.ca.cert),
            "other_key": str(pki.outsider.key), "encrypted": str(encrypted),
            "empty": str(folder / "empty.pem"), "missing": str(folder / "missing.pem"),
            "folder": str(folder)}


@pytest.mark.parametrize("options, message", [
    (["--tls-key", "key"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "cert"], "--tls-cert needs --tls-key"),
    (["--tls-ca", "ca"], "--tls-ca needs --tls-cert and --tls-key"),
    (["--results-tls-cert", "cert", "--results-tls-key", "key"],
     "--results-tls-cert needs --results-tls-ca"),
    (["--results-tls-ca", "ca", "--results-tls-cert", "cert"],
     "--results-tls-cert needs --results-tls-key"),
    (["--results-tls-ca", "ca", "--results-tls-key", "key"],
     "--results-tls-key needs --results-tls-cert"),
    (["--tls-cert", "missing", "--tls-key", "key"], "--tls-cert {missing}: no such file"),
    (["--tls-cert", "cert", "--tls-key", "folder"], "--tls-key {folder}: cannot read it"),
    (["--tls-cert", "key", "--tls-key", "key"], "--tls-cert {key}: no PEM certificate in it"),
    (["--tls-cert", "cert", "--tls-key", "cert"], "--tls-key {cert}: no PEM private key in it"),
    (["--tls-cert", "cert", "--tls-key", "other_key"],
     "--tls-key {other_key} is not the private key of the certificate in --tls-cert {cert}"),
    (["--tls-cert", "cert", "--tls-key", "encrypted"],
     "--tls-key {encrypted}: the key is encrypted"),
    (["--tls-cert", "cert", "--tls-key", "key", "--tls-ca", "empty"],
     "--tls-ca {empty}: no PEM certificate in it"),
    (["--results-tls-ca", "missing"], "--results-tls-ca {missing}: no such file"),
    (["--results-tls-ca", "ca", "--results-tls-cert", "cert", "--results-tls-key",
      "other_key"], ("--results-tls-key {other_key} is not the private key of the "
                     "certificate in --results-tls-cert {cert}")),
])
def test_a_wrong_tls_option_is_one_line_before_the_model_loads(
        options, message, bad_files, capsys, monkeypatch, tmp_path):
    from pneumo.cli import main
    from pneumo.predictor import Predictor

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the TLS options were checked")

    monkeypatch.setattr(Predictor, "from_bundle", no_model)
    arguments = [bad_files.get(value, value) if not value.startswith("--") else value
                 for value in options]
    assert main(["dicom-listen", "--results-to", "PACS@127.0.0.1:104",
                 "--data-dir", str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pneumo dicom-listen: error: " + message.format(**bad_files)), \
        error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "dicom-node").exists()  # told before the spool, too


def _closed_by_the_node(peer, within: float) -> bool:
    """Whether the node closed ``peer`` (a raw TCP connection) within ``within`` seconds."""
    peer.settimeout(within)
    try:
        return peer.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_port_check_is_not_a_failed_handshake(pki, tmp_path, caplog):
    """A connection closed before it sends anything (a load balancer's or Nagios's
    check_tcp, a port scan: closed, or reset) is logged at DEBUG only, and costs no
    handshake deadline; a real failed handshake stays a WARNING."""
    import logging
    import socket
    import struct

    from pneumo.dicom_node import tls
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    caplog.set_level(logging.DEBUG, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", None)
    port = free_port()
    scp.start("127.0.0.1", port, tls.TLSOptions(cert=str(pki.node.cert),
                                                key=str(pki.node.key)).server_context())
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        reset = socket.create_connection(("127.0.0.1", port))
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # an RST, not a FIN
        wait_for(lambda: caplog.text.count("closed before the TLS handshake") == 2, 30,
                 "the two DEBUG lines")
        with socket.create_connection(("127.0.0.1", port)) as clear:
            clear.sendall(b"\x01\x00\x00\x00\x00\x44")  # DICOM in the clear
            assert _closed_by_the_node(clear, 30)
        wait_for(lambda: "does not speak TLS" in caplog.text, 30, "the failed handshake")
        assert echo(port, tls_args=pki.client()) == 0x0000
    finally:
        scp.stop()
        spool.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("TLS handshake with 127.0.0.1:"), \
        warnings
    assert "the peer does not speak TLS (DICOM in the clear?); no association" in warnings[0]
    debug = [r for r in caplog.records if "closed before the TLS handshake" in r.getMessage()]
    assert [r.levelno for r in debug] == [logging.DEBUG, logging.DEBUG]


def test_handshakes_at_once_are_bounded(pki, tmp_path, monkeypatch, caplog):
    """Twice --max-associations handshakes at once: peers that connect and say nothing
    hold a thread each until the deadline, so one past that is closed at once, with one
    WARNING for the run of them; once a handshake ends, the next peer is served."""
    import logging
    import socket

    from pneumo.dicom_node import tls
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT", 30.0)
    caplog.set_level(logging.DEBUG, "pneumo.dicom_node")
    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", None, max_associations=1)
    port = free_port()
    scp.start("127.0.0.1", port, tls.TLSOptions(cert=str(pki.node.cert),
                                                key=str(pki.node.key)).server_context())
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for peer in silent:
            assert not _closed_by_the_node(peer, 0.5)  # accepted, its handshake waiting
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port)) as past:
                assert _closed_by_the_node(past, 10)

        def turned_away():
            return [r for r in caplog.records if "handshakes under way" in r.getMessage()]

        wait_for(lambda: len(turned_away()) == 2, 30, "the lines about the two turned away")
        lines = turned_away()
        assert [r.levelno for r in lines] == [logging.WARNING, logging.DEBUG]
        assert lines[0].getMessage().startswith(
            "2 TLS handshakes under way, the most at once (twice --max-associations): "
            "closed the connection from 127.0.0.1:")
        for peer in silent:
            peer.close()
        wait_for(lambda: caplog.text.count("closed before the TLS handshake") == 2, 30,
                 "the silent peers' handshakes to end")
        assert echo(port, tls_args=pki.client()) == 0x0000
    finally:
        for peer in silent:
            peer.close()
        scp.stop()
        spool.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "handshakes under way" not in r.getMessage()]


def test_no_association_starts_after_the_node_stopped(pki, tmp_path, monkeypatch, caplog):
    """A handshake under way when the node stops is cut short: the peer's handshake
    fails, no association starts against the closed spool, and no handshake thread
    outlives the stop."""
    import logging
    import socket
    import threading

    from pneumo.dicom_node import tls
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    def acceptors() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("AcceptorThread")}

    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT", 30.0)
    caplog.set_level(logging.DEBUG, "pneumo.dicom_node")
    before = acceptors()
    spool = Spool(tmp_path, "test")
    scp = StorageSCP(spool, "PNEUMO", None)
    port = free_port()
    scp.start("127.0.0.1", port, tls.TLSOptions(cert=str(pki.node.cert),
                                                key=str(pki.node.key)).server_context())
    server = scp.server
    late = socket.create_connection(("127.0.0.1", port))
    try:
        wait_for(lambda: server._handshakes, 30, "the connection's handshake to begin")
        scp.stop(grace=0)
        spool.close()
        assert not server._handshakes  # none left behind
        context, hostname = pki.client()
        with pytest.raises(OSError):  # the node's end is shut: no handshake now
            context.wrap_socket(late, server_hostname=hostname).close()
    finally:
        late.close()
        scp.stop(grace=0)
    assert not acceptors() - before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "the node is stopping; no association" in caplog.text


def test_a_pacs_named_by_its_address_must_have_it_in_its_certificate(pki, tmp_path):
    """--results-to by IP address: the PACS's certificate must list that address (an IP
    subjectAltName), as a host name must be listed when it is named by one. A
    certificate that lists only names fails, and the reason says so. (The PACS here is a
    node's own TLS port, with the certificate under test.)"""
    from pneumo.dicom_node import tls
    from pneumo.dicom_node.scp import StorageSCP
    from pneumo.dicom_node.spool import Spool

    options = tls.TLSOptions(results_ca=str(pki.ca.cert))
    by_address = options.client("127.0.0.1")
    assert str(by_address) == "TLS, the PACS's certificate checked against " \
        "--results-tls-ca and for the address 127.0.0.1, without a client certificate"
    names_only = pki.ca.issue("names-only", hosts=("pacs.example", "localhost"))
    for identity, accepted in [(pki.pacs, True), (names_only, False)]:
        spool = Spool(tmp_path / identity.cert.stem, "test")
        scp = StorageSCP(spool, "PACS", None)
        port = free_port()
        scp.start("127.0.0.1", port, tls.TLSOptions(cert=str(identity.cert),
                                                    key=str(identity.key)).server_context())
        try:
            assoc = associate(port, called="PACS", tls_args=by_address.tls_args)
            try:
                assert assoc.is_established == accepted
            finally:
                if assoc.is_established:
                    assoc.release()
            failure = by_address.take_failure()
        finally:
            scp.stop(grace=0)
            spool.close()
        if accepted:
            assert failure is None
        else:
            assert tls.describe(failure) == (
                "the peer's certificate does not list the IP address 127.0.0.1 (no "
                "subjectAltName IP:127.0.0.1): --results-to names the PACS by that address; "
                "give the host name its certificate is issued for instead, or have the "
                "certificate list the address")
