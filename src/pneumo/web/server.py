"""The production server: waitress, threads in one process, clean stop on SIGTERM/SIGINT.

Why waitress rather than gunicorn: gunicorn's workers are forked processes,
and forking after TensorFlow has started its thread pools can deadlock
(tensorflow#61298); loading the model after the fork instead means one full
copy of the model per worker. Waitress serves one process with a pool of
threads that share the one loaded model (the ``Predictor`` serialises calls
into the network), and runs the same on Linux, macOS and Windows. Waitress
also buffers each request completely, with its own body limit, before the app
sees it, so a slow or endless upload never ties up a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

#: waitress's connection handling, chosen rather than inherited (README, "The server").
#: A half-sent request holds a connection, not a thread: waitress reads every request
#: completely before a thread sees it. So connections are many, and cheap:
LIMITS = {
    # waitress's default is 100: 100 slow clients then kept everyone else, the health
    # check included, waiting in the listen backlog for a channel timeout. Each open
    # connection may buffer one request body, so this times the upload limit bounds
    # the memory that clients who really send bodies can take.
    "connection_limit": 250,
    # poll() rather than select(), whose 1024-descriptor ceiling is near that limit
    "asyncore_use_poll": True,
    # a connection that sends nothing for this long is closed (waitress: 120 s) ...
    "channel_timeout": 30,
    # ... checked this often (waitress: 30 s), so a timed-out slot frees within 35 s
    "cleanup_interval": 5,
    # connections the kernel queues while all slots are taken
    "backlog": 1024,
}
#: Answers up to this size stay in memory (the largest: a batch with heatmaps, or the
#: decoded image at PNEUMO_IMAGE_SIDE, a few MB); waitress's default spools over 1 MB.
OUTBUF_OVERFLOW = 64 * 2**20


class _ErrorTask(ErrorTask):
    """waitress's own error answer, with the headers every answer of the app carries."""

    def execute(self):
        from .security import HEADERS

        self.response_headers.extend(HEADERS.items())
        self.response_headers.append(("Cache-Control", "no-store"))
        super().execute()


class _Channel(HTTPChannel):
    error_task_class = _ErrorTask


class Server:
    """A waitress server for ``app`` that can be stopped from a signal or another thread.

    ``stop()`` stops accepting connections, lets requests in progress finish
    (at most ``grace`` seconds), then closes everything.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 5000, threads: int = 4,
                 grace: float = 10.0):
        if threads < 1:
            raise ValueError(f"--workers must be at least 1, not {threads}")
        limit = app.config.get("MAX_CONTENT_LENGTH") or 32 * 2**20
        self._server = create_server(
            app, sockets=[_bind(host, port)], threads=threads, ident="pneumo",
            # Bodies a little over Flask's limit still reach Flask, which answers
            # them with a JSON 413; anything larger (an endless chunked upload
            # included) is cut off by waitress itself.
            max_request_body_size=limit + 2**20,
            # Request bodies and answers stay in memory: waitress would otherwise spool
            # any body over 512 kB (a DICOM file with the patient's name) and any answer
            # over 1 MB to the system's temporary folder.
            inbuf_overflow=limit + 2**20, outbuf_overflow=OUTBUF_OVERFLOW,
            expose_tracebacks=False,
            # Proxy headers reach the app: it never trusts them for an address, but one
            # marks a request as relayed, hence not the local user's (auth.py).
            clear_untrusted_proxy_headers=False,
            **LIMITS)
        # waitress's own answers (400, 413, 431...) carry the app's security headers too
        self._server.channel_class = _Channel
        self.grace = grace
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Ask the server to stop; safe from a signal handler or any thread."""
        self._stopping.set()
        try:
            self._server.pull_trigger()
        except OSError:
            pass

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def run(self) -> None:
        """Serve until ``stop()``, then drain and close."""
        socket_map = self._server._map
        use_poll = self._server.adj.asyncore_use_poll
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=socket_map, use_poll=use_poll, count=1)
            # Stop accepting; keep the loop turning until requests in flight are answered.
            wasyncore.dispatcher.close(self._server)
            deadline = time.monotonic() + self.grace
            while _busy(socket_map) and time.monotonic() < deadline:
                wasyncore.loop(timeout=0.1, map=socket_map, use_poll=use_poll, count=1)
        finally:
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=self.grace)
            wasyncore.close_all(socket_map)
            self._stopped.set()


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on the first address ``host`` resolves to. Bound
    here rather than by waitress so that a failure leaks nothing and reads well."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _busy(socket_map) -> bool:
    return any(isinstance(channel, HTTPChannel) and (channel.requests or channel.total_outbufs_len)
               for channel in list(socket_map.values()))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def trusted_hosts(host: str) -> list[str] | None:
    """The Host names to accept: ``$PNEUMO_TRUSTED_HOSTS`` if set, else the names of the
    bound address (loopback: ``LOCAL_HOSTS``; a given name or address: itself). None for
    a wildcard address, whose names this process cannot know."""
    from . import LOCAL_HOSTS

    configured = [name.strip() for name in os.environ.get("PNEUMO_TRUSTED_HOSTS", "").split(",")
                  if name.strip()]
    if configured:
        return configured
    if _is_loopback(host):
        return list(LOCAL_HOSTS)
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        return None
    return [host]


def serve(host: str = "127.0.0.1", port: int = 5000, workers: int = 4,
          model: str | None = None, behind_proxy: bool = False) -> int:
    """Load the model, serve the app until SIGTERM or SIGINT, return the exit status (0).

    Raises:
        BundleError: the model bundle is missing or broken (before listening).
        RuntimeError: the address cannot be used.
        ValueError: ``workers`` is below 1.
    """
    from . import create_app

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    # On loopback the app serves the person at this machine; anywhere else, the token rules.
    # Behind a proxy every request is someone's over the network, under whatever host name
    # the proxy is reached by (PNEUMO_TRUSTED_HOSTS).
    local = _is_loopback(host) and not behind_proxy
    config = {"PNEUMO_LOCAL_USER": local, "PNEUMO_BEHIND_PROXY": behind_proxy,
              "TRUSTED_HOSTS": trusted_hosts("0.0.0.0" if behind_proxy else host)}
    if model:
        config["PNEUMO_MODEL"] = str(model)
    keep = os.environ.get("PNEUMO_KEEP_STUDIES", "").strip().lower()
    if keep:  # "1"/"0": keep studies or not, whatever the address
        config["PNEUMO_KEEP_STUDIES"] = keep in ("1", "true", "yes", "on")
    if os.environ.get("PNEUMO_API_TOKEN"):
        config["PNEUMO_API_TOKEN"] = os.environ["PNEUMO_API_TOKEN"]
    app = create_app(config)
    server = Server(app, host=host, port=port, threads=workers)
    predictor = app.extensions["pneumo.predictor"]
    if not _is_loopback(host):
        log.warning("listening on %s, beyond this machine: the app has no TLS (put it "
                    "behind a reverse proxy that provides it); history %s", host,
                    "kept, behind the API token" if app.extensions.get("pneumo.studies")
                    else "not kept")
    if app.config["TRUSTED_HOSTS"] is None:
        log.warning("any Host header is accepted on %s: set PNEUMO_TRUSTED_HOSTS to the names "
                    "clients use for this server", host)

    def handle(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        server.stop()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handle)
    try:
        log.info("serving %s %s with %d threads on %s (Ctrl+C to stop)",
                 predictor.name, predictor.version, workers, server.url)
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
    return 0
