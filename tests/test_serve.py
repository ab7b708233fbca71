"""The real server: ``pneumo serve`` and ``python app.py`` as subprocesses on free
loopback ports, spoken to over HTTP (RELIABILITY.md rows 1, 21), and stopped
by SIGTERM / SIGINT with exit status 0."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from conftest import encode, synthetic_xray
from pneumo.predictor import Predictor
from pneumo.web import create_app
from pneumo.web.server import Server
from real_server import free_port, http_post, start, stop, wait_ready

#: Every test here starts a real server.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(sharp_bundle, tmp_path_factory):
    """``pneumo serve`` on a free port, 4 threads, the sharp tiny bundle."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    command = [sys.executable, "-m", "pneumo.cli", "serve", "--model", str(sharp_bundle),
               "--port", str(port), "--workers", "4"]
    process = start(command, log_path)
    url = f"http://127.0.0.1:{port}"
    health = wait_ready(url, process, log_path)
    yield {"url": url, "process": process, "log": log_path, "health": health}
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serve_is_ready_and_predicts_over_http(served, sharp_bundle):
    assert served["health"]["status"] == "ready"
    assert served["health"]["model"]["name"] == "pneumo-xception-tiny-test"
    reference = Predictor.from_bundle(sharp_bundle)
    png = encode(synthetic_xray(11, (200, 160), opacity=True))
    status, headers, body = http_post(served["url"] + "/api/v1/predict", [("x.png", png)])
    assert status == 200
    expected = reference.predict(png)
    assert body["label"] == expected.label
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["threshold"] == reference.threshold
    assert body["heatmap"].startswith("data:image/png;base64,")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    with urllib.request.urlopen(served["url"] + "/", timeout=10) as page:
        assert page.status == 200 and b"not a diagnosis" in page.read()
    assert f"on http://127.0.0.1:{served['url'].rsplit(':', 1)[1]}" in served["log"].read_text()


@pytest.mark.reliability(21)
def test_parallel_uploads_agree_with_a_single_threaded_reference(served, sharp_bundle):
    """Row 21: 20 simultaneous uploads to 4 threads all succeed and match."""
    images = [encode(synthetic_xray(100 + i, (96 + 8 * i, 96), opacity=i % 3 == 0))
              for i in range(20)]
    reference = Predictor.from_bundle(sharp_bundle)
    expected = [reference.predict(data, heatmap=False) for data in images]
    assert len({round(e.probability, 6) for e in expected}) > 10  # the check can tell them apart

    def one(i):
        return http_post(served["url"] + "/api/v1/predict?heatmap=false",
                         [(f"{i}.png", images[i])])

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    for i, (status, _, body) in enumerate(results):
        assert status == 200, body
        assert body["filename"] == f"{i}.png"
        assert body["label"] == expected[i].label
        assert body["probability"] == pytest.approx(expected[i].probability, abs=1e-6)


def _raw_exchange(port: int, head: bytes, body_chunks=(), read_timeout: float = 30) -> bytes:
    """Send ``head`` then the chunks (stopping if the server closes); return what it said."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us: what it answered is still readable
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer and len(answer) > 4096:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


@pytest.mark.reliability(1)
def test_oversized_uploads_are_refused_and_the_server_carries_on(served):
    """Row 1: just over the limit, a declared giant and an endless chunked body."""
    port = int(served["url"].rsplit(":", 1)[1])
    limit = 32 * 2**20
    boundary = "pneumoBoundary"
    start_part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                  f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    end_part = f"\r\n--{boundary}--\r\n".encode()
    payload = b"\0" * (limit + 1 - len(start_part) - len(end_part) + 1)
    body = start_part + payload + end_part
    head = (f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    answer = _raw_exchange(port, head, [body])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer  # Flask's JSON error, not a bare server page

    declared = (f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {10 * limit}\r\n\r\n").encode()
    started = time.monotonic()
    answer = _raw_exchange(port, declared)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 10

    chunk = b"\0" * 2**20
    endless = (f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n").encode()
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(64))  # 64 MB, no end
    answer = _raw_exchange(port, endless, chunks)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]

    with urllib.request.urlopen(served["url"] + "/api/v1/health", timeout=10) as response:
        assert response.status == 200


@pytest.mark.reliability(27)
def test_on_loopback_the_history_is_the_local_users_but_not_through_a_proxy(served):
    """``pneumo serve`` on 127.0.0.1 serves the person at this machine; a request relayed
    by a reverse proxy on the same machine is someone else's."""
    with urllib.request.urlopen(served["url"] + "/api/v1/studies", timeout=10) as response:
        assert response.status == 200
    for header in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"}):
        request = urllib.request.Request(served["url"] + "/api/v1/studies", headers=header)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        refused.value.close()


@pytest.mark.reliability(28)
def test_a_rebound_host_name_is_refused_by_the_real_server(served):
    """DNS rebinding: a page on attacker.example, its name rebound to 127.0.0.1."""
    port = int(served["url"].rsplit(":", 1)[1])
    answer = _raw_exchange(port, b"GET /api/v1/studies HTTP/1.1\r\nHost: attacker.example:"
                           + str(port).encode() + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    answer = _raw_exchange(port, b"GET /api/v1/studies HTTP/1.1\r\nHost: localhost:"
                           + str(port).encode() + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_sigterm_stops_the_server_cleanly(served):
    process = served["process"]
    assert process.poll() is None
    assert stop(process, signal.SIGTERM) == 0
    log = served["log"].read_text()
    assert "received SIGTERM, stopping" in log and "stopped" in log
    assert "Traceback" not in log
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(served["url"] + "/api/v1/health", timeout=5)


def test_app_py_starts_the_same_server_and_stops_on_sigint(tiny_bundle, tmp_path):
    port = free_port()
    log_path = tmp_path / "app.log"
    process = start([sys.executable, "app.py", "--model", str(tiny_bundle), "--port", str(port),
                     "--workers", "2"], log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_ready(url, process, log_path)
        assert health["model"]["version"] == "0.0.0+test"
        status, _, body = http_post(url + "/api/v1/predict?heatmap=false",
                                    [("x.png", encode(synthetic_xray(3)))])
        assert status == 200 and body["label"] in ("NORMAL", "PNEUMONIA")
        assert stop(process, signal.SIGINT) == 0
        assert "Traceback" not in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_missing_bundle_is_one_line_and_exit_status_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pneumo.cli", "serve", "--model", str(tmp_path / "none"),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "pneumo serve: error: model bundle not found" in result.stderr
    assert "Traceback" not in result.stderr


# -- the Server class in process ---------------------------------------------------------------

def test_a_port_in_use_is_a_clear_error(tiny_predictor):
    app = create_app({"PNEUMO_PREDICTOR": tiny_predictor})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            Server(app, port=port)
    with pytest.raises(ValueError, match="at least 1"):
        Server(app, port=0, threads=0)


def test_stop_lets_a_request_in_flight_finish(tiny_predictor):
    """A stop while a large answer is still being sent: the whole answer arrives.

    The answer (the decoded image, about 8 MB) is larger than the socket buffers
    and the client reads only after the stop, so the server must keep sending."""
    app = create_app({"PNEUMO_PREDICTOR": tiny_predictor, "PNEUMO_IMAGE_SIDE": 4096})
    arrived = threading.Event()
    app.before_request(arrived.set)
    server = Server(app, port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    # a large, grainy X-ray (its PNG is ~4 MB; plain noise would be refused by the input gate)
    grainy = synthetic_xray(0, (2500, 2500))
    boundary, body = encode_multipart(MultiDict(
        [("file", FileStorage(io.BytesIO(encode(grainy)), filename="big.png"))]))
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /api/v1/predict?image=true&heatmap=false HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\nConnection: close\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert arrived.wait(30)  # the app is handling it
        server.stop()
        time.sleep(1.0)  # a slow client: nothing read yet
        answer = b""
        while chunk := sock.recv(2**20):
            answer += chunk
    assert server.wait_stopped(30)
    thread.join(5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    assert length > 4 * 2**20 and len(payload) == length
    assert json.loads(payload)["image"].startswith("data:image/png;base64,")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(server.url + "/api/v1/health", timeout=5)


def test_listening_beyond_loopback_is_warned_about():
    from pneumo.web.server import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.10")
