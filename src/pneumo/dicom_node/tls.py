"""DICOM over TLS for the node (DICOM PS3.15 Annex B, the secure transport IHE ATNA asks
of a secure node): the port it listens on, and the connection that sends the results.

- Listening (``--tls-cert``, ``--tls-key``): the node shows its certificate to every
  peer; with ``--tls-ca`` it also asks each peer for a certificate and accepts only one
  signed by those CAs (mutual TLS: an AE title is a name, a certificate is proof).
- Sending results (``--results-tls-ca``): the PACS's certificate must be signed by those
  CAs, and be issued for what ``--results-to`` names it by: its host name, or its IP
  address (an IP subjectAltName; OpenSSL checks either); ``--results-tls-cert`` and ``--results-tls-key`` are the node's client
  certificate, for a PACS that asks for one. There is no way to send over TLS without
  verifying the PACS: encryption to whoever answers is not worth having.

TLS 1.2 at least, with Python's defaults otherwise (forward-secret cipher suites only,
no compression). Only the CAs given are trusted, never the system's: a public
CA vouches for web sites, not for a hospital's modalities.

Every file is read and checked at start, before the model loads, so that a wrong path
or a key that does not belong to its certificate is one line, not a node that starts
and fails every handshake. They are read once: restart the node after renewing them.

At run time a failed handshake is one line in the log, never a traceback, and the node
goes on: on the listening side the handshake runs on the connection's own thread, with
a deadline, so a peer that connects and says nothing holds up no one else; on the
sending side a failure is a failed delivery, tried again later like any other. A
connection closed before it sends anything (a port check, a scan) is no failed
handshake, and is logged at DEBUG only; at most twice ``--max-associations`` handshakes
run at once, and a connection past that is closed at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("pneumo.dicom_node")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: Seconds a peer has to complete the handshake after it connects.
HANDSHAKE_TIMEOUT = 10.0
#: Handshakes under way at once, per association the node serves at once
#: (``--max-associations``): room for port checks and silent peers beside the PACS.
HANDSHAKES_PER_ASSOCIATION = 2

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:(?:RSA|EC|DSA|ENCRYPTED) )?PRIVATE KEY-----")
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")

#: OpenSSL's reasons for a failed handshake, said for an operator; others are given as
#: OpenSSL words them.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate, and one is required",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (DICOM in the clear?)",
    "HTTP_REQUEST": "the peer does not speak TLS (an HTTP request)",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS (DICOM in the clear?)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (TLS 1.2 or later is required)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (TLS 1.2 or later is "
                                    "required)",
    "NO_SHARED_CIPHER": "no cipher in common",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this node's certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused this node's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused this node's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says this node's certificate has expired",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer ended the handshake (no cipher in common, "
                                     "or a client certificate it wants)",
}


#: OpenSSL's verification errors that mean "signed by no CA trusted here": unable to get
#: the issuer's certificate (locally), a self-signed certificate (in the chain), unable to
#: verify the first certificate.
_UNTRUSTED = {2, 18, 19, 20, 21}
#: X509_V_ERR_IP_ADDRESS_MISMATCH, and the address in its message.
_IP_MISMATCH = 64
_MISMATCHED = re.compile(r"not valid for '([^']+)'")


class TLSConfigError(ValueError):
    """A TLS option the node cannot start with: said in one line."""


def describe(exc: BaseException) -> str:
    """A failed handshake, in a few words for a log line."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code == _IP_MISMATCH:
        address = _MISMATCHED.search(exc.verify_message or "")
        if address:
            return (f"the peer's certificate does not list the IP address {address[1]} (no "
                    f"subjectAltName IP:{address[1]}): --results-to names the PACS by that "
                    "address; give the host name its certificate is issued for instead, or "
                    "have the certificate list the address")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = {10: "has expired", 9: "is not valid yet"}.get(exc.verify_code, "was not accepted")
        if exc.verify_code in _UNTRUSTED:
            why = "is not signed by a CA trusted here"
        return f"the peer's certificate {why} ({exc.verify_message})"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return "the peer closed the connection during the handshake"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _REASONS.get(reason) or reason.lower().replace("_", " ") or str(exc)
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:.0f} s"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _read(option: str, path: str, pattern: re.Pattern, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise TLSConfigError(f"{option} {path}: cannot read it ({exc.strerror or exc})") \
            from None
    if not pattern.search(data):
        raise TLSConfigError(f"{option} {path}: no PEM {what} in it")
    return data


def _no_password():
    # without a callback OpenSSL would ask for the passphrase on the terminal: a service
    # would hang there
    raise TLSConfigError("encrypted")


def _load_identity(context: ssl.SSLContext, cert_option: str, cert: str, key_option: str,
                   key: str) -> None:
    _read(cert_option, cert, _CERTIFICATE, "certificate")
    if _ENCRYPTED_KEY.search(_read(key_option, key, _PRIVATE_KEY, "private key")):
        raise TLSConfigError(f"{key_option} {key}: the key is encrypted; give the node an "
                             "unencrypted key, readable by its user only")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TLSConfigError:
        raise TLSConfigError(f"{key_option} {key}: the key is encrypted; give the node an "
                             "unencrypted key, readable by its user only") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"{key_option} {key} is not the private key of the "
                                 f"certificate in {cert_option} {cert}") from None
        raise TLSConfigError(f"{cert_option} {cert}, {key_option} {key}: cannot use them: "
                             f"{describe(exc)}") from None


def _load_cas(context: ssl.SSLContext, option: str, path: str) -> None:
    _read(option, path, _CERTIFICATE, "certificate")
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{option} {path}: cannot use it: {describe(exc)}") from None


class _WatchedSocket(ssl.SSLSocket):
    """An SSLSocket that notes a TLS failure on its context: pynetdicom swallows it (an
    association that "could not connect") and the sender wants to say why."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except OSError as exc:
            self.context.failure = exc
            raise

    def recv(self, *args, **kwargs):
        # TLS 1.3: a server that refuses the client's certificate says so after the
        # client finished its handshake, on the first read
        try:
            return super().recv(*args, **kwargs)
        except ssl.SSLError as exc:
            self.context.failure = exc
            raise

    def shutdown(self, how):
        # pynetdicom closes a socket only if its shutdown succeeds, which it does not
        # once the peer has broken off the handshake: close it here, or it stays open
        # until the garbage collector finds it
        try:
            super().shutdown(how)
        except OSError:
            self.close()
            raise


class _ClientContext(ssl.SSLContext):
    sslsocket_class = _WatchedSocket
    failure: OSError | None = None
    client_certificate = False


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """How the sender reaches the PACS over TLS: pynetdicom's ``tls_args``, and the last
    failure (the sender makes one association at a time)."""

    context: _ClientContext
    server_hostname: str  # a host name or an IP address: the certificate must list it

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str | None]:
        return self.context, self.server_hostname

    def __str__(self) -> str:
        checked = f"for the {'address' if _is_address(self.server_hostname) else 'name'} " \
                  f"{self.server_hostname}"
        client = "with" if self.context.client_certificate else "without"
        return f"TLS, the PACS's certificate checked against --results-tls-ca and {checked}, " \
               f"{client} a client certificate"

    def take_failure(self) -> OSError | None:
        """The TLS error of the last association, if it had one; forgotten after."""
        failure, self.context.failure = self.context.failure, None
        return failure


@dataclasses.dataclass(frozen=True)
class TLSOptions:
    """The node's TLS files, as given on the command line (paths, or None)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    results_ca: str | None = None
    results_cert: str | None = None
    results_key: str | None = None

    def check(self) -> None:
        """TLSConfigError for a combination that makes no sense."""
        if self.key and not self.cert:
            raise TLSConfigError("--tls-key needs --tls-cert, the certificate it belongs to")
        if self.cert and not self.key:
            raise TLSConfigError("--tls-cert needs --tls-key, its private key")
        if self.ca and not self.cert:
            raise TLSConfigError("--tls-ca needs --tls-cert and --tls-key: client "
                                 "certificates are asked for only over TLS")
        if self.results_key and not self.results_cert:
            raise TLSConfigError("--results-tls-key needs --results-tls-cert, the "
                                 "certificate it belongs to")
        if self.results_cert and not self.results_key:
            raise TLSConfigError("--results-tls-cert needs --results-tls-key, its private "
                                 "key")
        if self.results_cert and not self.results_ca:
            raise TLSConfigError("--results-tls-cert needs --results-tls-ca: the results "
                                 "go over TLS only to a PACS whose certificate is verified")

    def server_context(self) -> ssl.SSLContext | None:
        """The listening side's context (None: DICOM in the clear)."""
        self.check()
        if not self.cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MINIMUM_VERSION
        _load_identity(context, "--tls-cert", self.cert, "--tls-key", self.key)
        if self.ca:
            _load_cas(context, "--tls-ca", self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client(self, host: str) -> ClientTLS | None:
        """The sending side's TLS towards ``host`` (None: DICOM in the clear)."""
        self.check()
        if not self.results_ca:
            return None
        context = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = MINIMUM_VERSION
        _load_cas(context, "--results-tls-ca", self.results_ca)
        if self.results_cert:
            _load_identity(context, "--results-tls-cert", self.results_cert,
                           "--results-tls-key", self.results_key)
            context.client_certificate = True
        # a name or an address: OpenSSL checks the certificate's subjectAltName for it
        # (DNS or IP), and for an address sends no SNI
        return ClientTLS(context, host)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_server(context: ssl.SSLContext | None) -> str:
    """The listening side, for the node's start line."""
    if context is None:
        return "DICOM in the clear"
    if context.verify_mode == ssl.CERT_REQUIRED:
        return "TLS (client certificates required, checked against --tls-ca)"
    return "TLS (no client certificate asked for)"


class TLSAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake on each connection's thread.

    pynetdicom's own (``start_server(ssl_context=...)``) shakes hands in the thread that
    accepts connections, on a socket without a timeout: one peer that connects and says
    nothing would stop the node from accepting anyone else, and a failed handshake is
    dropped without a word. Here each connection is accepted at once, its handshake has
    ``HANDSHAKE_TIMEOUT`` seconds, and a failure is logged in one line.

    A connection closed before it sends anything (a load balancer's or a monitoring
    check of the port, a port scan) is no failed handshake: a DEBUG line. At most
    ``max_handshakes`` handshakes run at once (each holds a thread, a silent peer for the
    whole deadline); a connection past that is closed at once, with one WARNING for a run
    of them.

    ``shutdown()`` cuts the handshakes under way short and waits for their threads, so
    that no association starts once it returns (the node closes its spool after).
    """

    def __init__(self, *args, tls_context: ssl.SSLContext, max_handshakes: int, **kwargs):
        self.tls_context = tls_context
        self.max_handshakes = max_handshakes
        self._guard = threading.Lock()
        #: each handshake's thread and its socket while the handshake is under way (None
        #: once done): what shutdown() interrupts and waits for
        self._handshakes: dict[threading.Thread, socket.socket | None] = {}
        self._turning_away = False  # the WARNING for this run of turned-away peers is said
        self._stopping = False
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: the handshake on a thread of its own, if a slot is
        free; else the connection is closed at once."""
        with self._guard:
            stopping = self._stopping
            if not stopping and len(self._handshakes) < self.max_handshakes:
                # a daemon: shutdown() waits for it, with a bound
                thread = threading.Thread(target=self._handshake,
                                          args=(request, client_address),
                                          name="pneumo-tls-handshake", daemon=True)
                self._handshakes[thread] = request
                thread.start()
                self._turning_away = False
                return
            first = not stopping and not self._turning_away
            self._turning_away = not stopping
        _close(request)
        if stopping:
            log.debug("connection from %s: the node is stopping; no association",
                      _address(client_address))
        else:
            log.log(logging.WARNING if first else logging.DEBUG,
                    "%d TLS handshakes under way, the most at once (twice "
                    "--max-associations): closed the connection from %s%s",
                    self.max_handshakes, _address(client_address),
                    "; more are logged at DEBUG until one is let in" if first else "")

    def _handshake(self, request, client_address) -> None:
        try:
            request = self._shake_hands(request, client_address)
            if request is not None:
                super().process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._handshakes.pop(threading.current_thread(), None)

    def _note(self, request: socket.socket | None) -> bool:
        """Notes this thread's socket for shutdown() to cut short (None: its handshake is
        done, nothing to cut); False when the node is stopping, which shutdown() may have
        looked at before the note."""
        with self._guard:
            self._handshakes[threading.current_thread()] = request
            return not self._stopping

    def _shake_hands(self, request: socket.socket, client_address) -> ssl.SSLSocket | None:
        """``request`` over TLS, or None (closed, the reason logged)."""
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        peer = _address(client_address)
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                # the peer's first byte, left for the handshake to read
                said_something = bool(request.recv(1, socket.MSG_PEEK))
            except ConnectionResetError:
                said_something = False
            if said_something:
                request = self.tls_context.wrap_socket(request, server_side=True,
                                                       do_handshake_on_connect=False)
            if said_something and self._note(request):
                request.settimeout(max(deadline - time.monotonic(), 0.001))
                request.do_handshake()
                request.settimeout(None)  # as pynetdicom has its sockets: read with select
                if self._note(None):
                    return request
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            if self._note(None):
                log.warning("TLS handshake with %s failed: %s; no association", peer,
                            describe(exc))
                _close(request)
                return None
        if self._note(None):
            log.debug("connection from %s closed before the TLS handshake (a port "
                      "check?); no association", peer)
        else:
            log.debug("connection from %s: the node is stopping; no association", peer)
        _close(request)
        return None

    def shutdown(self) -> None:
        """No new connections, the handshakes under way cut short and their threads
        waited for (at most ``HANDSHAKE_TIMEOUT``): none starts an association after."""
        with self._guard:
            self._stopping = True
        super().shutdown()  # the accepting thread stops; the listening socket is closed
        with self._guard:  # held: a thread notes None before it closes its socket
            pending = dict(self._handshakes)
            for request in pending.values():
                if request is not None:
                    try:  # the socket's own, not SSLSocket's, which drops its TLS state
                        socket.socket.shutdown(request, socket.SHUT_RDWR)
                    except OSError:
                        pass
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        for thread in pending:
            thread.join(max(deadline - time.monotonic(), 0))
        if any(thread.is_alive() for thread in pending):
            log.debug("a TLS handshake thread outlived the node's stop")


def start_tls_server(ae, address: tuple[str, int], context: ssl.SSLContext,
                     evt_handlers: list) -> TLSAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with the handshake done by
    ``TLSAssociationServer``, at most ``HANDSHAKES_PER_ASSOCIATION`` times
    ``ae.maximum_associations`` at once."""
    server = ae.make_server(address, evt_handlers=evt_handlers,
                            server_class=TLSAssociationServer, tls_context=context,
                            max_handshakes=HANDSHAKES_PER_ASSOCIATION
                            * ae.maximum_associations)
    # as start_server does: its shutdown() takes itself off this list
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, name="pneumo-tls-acceptor",
                     daemon=True).start()
    return server


def _address(client_address) -> str:
    host, port = client_address[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _LeaveTLSFailuresToTheNode(logging.Filter):
    """Drops what pynetdicom logs while it handles an ``ssl.SSLError``: two or three
    lines per failure, one of them a traceback. The sender logs the failure in one line
    of its own, with what it means."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            return False
        # filters run in the thread that logs, inside pynetdicom's except block
        return not isinstance(sys.exc_info()[1], ssl.SSLError)


_LEAVE_TLS_FAILURES = _LeaveTLSFailuresToTheNode()


def quiet_pynetdicom_tls_failures() -> None:
    """One line per TLS failure in the node's log: pynetdicom's own lines about it (and
    their tracebacks) are left out."""
    for name in ("pynetdicom.transport", "pynetdicom.dul"):
        logger = logging.getLogger(name)
        if _LEAVE_TLS_FAILURES not in logger.filters:
            logger.addFilter(_LEAVE_TLS_FAILURES)
