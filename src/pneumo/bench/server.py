"""``pneumo serve`` as a subprocess on a free loopback port, and clients that post
X-rays to it: the harness the benchmark measures through, shared with the tests
that start the real server."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from .machine import memory_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[str, bytes]:
    boundary = "pneumoBench" + os.urandom(8).hex()
    kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: {kind}\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


class Client:
    """One keep-alive HTTP connection posting X-rays to /api/v1/predict."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def predict(self, body: tuple[str, bytes]) -> tuple[int, float, bool]:
        """(status, seconds, whether a heatmap came back)."""
        content_type, payload = body
        started = time.perf_counter()
        self.connection.request("POST", "/api/v1/predict", body=payload,
                                headers={"Content-Type": content_type})
        response = self.connection.getresponse()
        answer = response.read()
        took = time.perf_counter() - started
        return response.status, took, b'"heatmap":"data:image/png' in answer

    def close(self) -> None:
        self.connection.close()


def launch(command: list[str], log: Path | None = None, env: dict | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    """``command`` started with its output to ``log`` (or nowhere), unbuffered, and
    TensorFlow's C++ logging off."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
                   **(env or {})}
    if log is None:
        return subprocess.Popen(command, cwd=cwd, env=environment,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=handle,
                                stderr=subprocess.STDOUT)


def wait_healthy(process: subprocess.Popen, url: str, timeout: float,
                 log: Path | None = None) -> dict:
    """The JSON of the first 200 from ``url``/api/v1/health; RuntimeError, with the log,
    if the process exits first or ``timeout`` seconds pass."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            shown = f":\n{Path(log).read_text(errors='replace')}" if log else ""
            raise RuntimeError(f"the server exited with {process.returncode}{shown}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=5) as response:
                if response.status == 200:
                    return json.loads(response.read())
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.02)
    shown = f":\n{Path(log).read_text(errors='replace')}" if log else ""
    raise RuntimeError(f"the server was not healthy within {timeout:.0f} s{shown}")


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send ``signum`` and wait; killed if it is still running after ``timeout`` s
    (TimeoutExpired is then raised, for the caller to report)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signum)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


class ServerProcess:
    """``pneumo serve`` as a subprocess on a free loopback port."""

    def __init__(self, bundle: Path, workers: int, env: dict | None = None,
                 log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.launched = time.perf_counter()
        self.process = launch([sys.executable, "-m", "pneumo.cli", "serve", "--model",
                               str(bundle), "--port", str(self.port), "--workers",
                               str(workers)], log, env)

    def wait_healthy(self, timeout: float = 300) -> float:
        """Seconds from launch to the first 200 from /api/v1/health."""
        wait_healthy(self.process, self.url, timeout - (time.perf_counter() - self.launched),
                     self.log)
        return time.perf_counter() - self.launched

    def memory(self) -> tuple[float, float]:
        return memory_of(self.process.pid)

    def stop(self) -> None:
        try:
            stop(self.process)
        except subprocess.TimeoutExpired:
            pass


def sequential_requests(port: int, bodies: list, count: int, between=None
                        ) -> tuple[list[float], list[int], int]:
    """(seconds, statuses, how many came with a heatmap) of ``count`` requests one after
    another; ``between()``, if given, runs before each request, never during one."""
    client = Client(port)
    results = []
    try:
        for i in range(count):
            if between is not None:
                between()
            results.append(client.predict(bodies[i % len(bodies)]))
    finally:
        client.close()
    return ([r[1] for r in results], [r[0] for r in results],
            sum(1 for r in results if r[2]))


def concurrent_requests(port: int, bodies: list, clients: int, each: int):
    """(wall seconds, latencies, statuses) of ``clients`` threads posting ``each`` times."""
    results: list[tuple[int, float, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        client = Client(port)
        try:
            barrier.wait()
            for i in range(each):
                outcome = client.predict(bodies[(index * each + i) % len(bodies)])
                with lock:
                    results.append(outcome)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return wall, [r[1] for r in results], [r[0] for r in results]


def not_ok(statuses: list[int]) -> str:
    """The part of a row's detail that says how many answers were not 200 ('' if none)."""
    bad = [s for s in statuses if s != 200]
    return "" if not bad else f"; {len(bad)} of {len(statuses)} not 200 ({sorted(set(bad))})"
