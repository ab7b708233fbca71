"""The real waitress server's own limits (server.py ``LIMITS``): slow clients do not
starve the health check, uploads never reach the disk, and waitress's own error
answers carry the security headers. Loopback only; every server stops by itself."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pneumo.web import create_app
from pneumo.web.security import HEADERS
from pneumo.web.server import LIMITS, Server

#: Every test here starts a real server.
pytestmark = pytest.mark.slow

SLOW_CLIENTS = 110


@contextlib.contextmanager
def running(app, threads: int = 4):
    server = Server(app, port=0, threads=threads, grace=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        server.wait_stopped(30)
        thread.join(10)


@pytest.fixture(scope="module")
def app(tiny_predictor):
    return create_app({"PNEUMO_PREDICTOR": tiny_predictor, "PNEUMO_KEEP_STUDIES": False})


def _health_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/api/v1/health", timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - started


@pytest.mark.reliability(1, 30)
def test_health_answers_within_a_second_under_110_slow_clients(app, reliability_figures):
    """110 clients that send half a request and then nothing (slowloris): each holds a
    connection until the channel timeout; the health check must still get one."""
    assert LIMITS["connection_limit"] > SLOW_CLIENTS
    with running(app) as server, contextlib.ExitStack() as stack:
        baseline = _health_seconds(server.url)
        for _ in range(SLOW_CLIENTS):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port), 5))
            sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=x\r\n"
                         b"Content-Length: 100000\r\n\r\n--x\r\n")
        time.sleep(0.5)  # all accepted and parked by the server
        times = [_health_seconds(server.url) for _ in range(10)]
    section = "The real server under slow clients (row 1)"
    reliability_figures.add(section, "half-sent requests held open", SLOW_CLIENTS)
    reliability_figures.add(section, "health check alone (s)", round(baseline, 4))
    reliability_figures.add(section, "health check under them: median / worst of 10 (s)",
                            f"{statistics.median(times):.4f} / {max(times):.4f}")
    reliability_figures.note(section, (
        f"waitress limits: {LIMITS['connection_limit']} connections, "
        f"{LIMITS['channel_timeout']} s channel timeout checked every "
        f"{LIMITS['cleanup_interval']} s, poll(); target: health within 1 s."))
    assert max(times) < 1.0, times


def _temp_files(folder: str) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(folder):
                found.append(target)
    return found


def test_a_large_upload_is_buffered_in_memory_not_spooled_to_disk(app):
    """waitress spools bodies over ``inbuf_overflow`` (512 kB by default) to the temporary
    folder; a DICOM file holds the patient's name, and uploads.py promises memory only."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to see the server's open files")
    folder = tempfile.gettempdir()
    before = _temp_files(folder)
    body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
    body += b"\0" * (4 * 2**20) + b"\r\n--x--\r\n"
    with running(app) as server, socket.create_connection(("127.0.0.1", server.port), 30) as sock:
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:3 * 2**20])
        time.sleep(1.0)  # 3 MB received and buffered, the rest still to come
        during = _temp_files(folder)
        sock.sendall(body[3 * 2**20:])
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 415"), answer[:100]  # refused by content, as usual
    assert during == before, during


def test_waitresss_own_error_answers_carry_the_security_headers(app):
    with running(app) as server:
        for request in (
                b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
                b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 999999999999\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), 10) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
            assert head.split()[1] in ("400", "413"), head
            for name, value in HEADERS.items():
                assert f"{name}: {value}" in head, (name, head)
