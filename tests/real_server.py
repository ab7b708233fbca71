"""The real server for tests: ``pneumo serve`` (or ``app.py``, ``waitress-serve``) as a
subprocess on a free loopback port, started, awaited and stopped with the
benchmark's harness (``pneumo.bench.server``), failing the test with the
server's log when it does not come up."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from pneumo.bench import server as harness
from pneumo.bench.server import free_port  # noqa: F401  (re-exported for tests)

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # seconds: importing TensorFlow on a busy 2-core machine is slow


def start(command: list[str], log_path: Path) -> subprocess.Popen:
    return harness.launch(command, log_path, cwd=ROOT)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> dict:
    try:
        return harness.wait_healthy(process, url, START_TIMEOUT, log_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def stop(process: subprocess.Popen, signum: int) -> int:
    try:
        return harness.stop(process, signum, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server ignored {signal.Signals(signum).name} for 30 s")


def http_post(url: str, files: list[tuple[str, bytes]], timeout: float = 60):
    """(status, headers, parsed JSON) of a multipart POST."""
    items = MultiDict([("file", FileStorage(io.BytesIO(data), filename=name))
                       for name, data in files])
    boundary, body = encode_multipart(items)
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())
