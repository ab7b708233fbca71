"""A kill -9 of the real server in the middle of a burst of kept predictions: the
database still passes SQLite's integrity check, and every study whose id a client
was given is in it (a study is committed, with synchronous=FULL, before its answer)."""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import sys
import threading
import time
from contextlib import closing

import pytest

from conftest import encode, synthetic_xray
from pneumo import studies
from real_server import free_port, http_post, start, wait_ready

CLIENTS = 6


@pytest.mark.slow
@pytest.mark.reliability(34)
def test_kill_9_during_a_burst_keeps_every_answered_study(tiny_bundle, tmp_path, monkeypatch,
                                                          reliability_figures):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PNEUMO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PNEUMO_KEEP_STUDIES", "1")
    port = free_port()
    process = start([sys.executable, "-m", "pneumo.cli", "serve", "--model", str(tiny_bundle),
                     "--port", str(port), "--workers", "4"], tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, tmp_path / "server.log")
        images = [encode(synthetic_xray(i, (200, 180), opacity=i % 2 == 0)) for i in range(8)]
        answered: list[str] = []
        failed = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def client(number: int) -> None:
            while not stop.is_set():
                try:
                    status, _, body = http_post(url + "/api/v1/predict?heatmap=false",
                                                [("x.png", images[number % len(images)])],
                                                timeout=30)
                except OSError:  # the server died under this request
                    with lock:
                        failed[0] += 1
                    return
                assert status == 200, body
                with lock:
                    answered.append(body["study_id"])

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            deadline = time.monotonic() + 120
            while len(answered) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)  # requests are in flight
            process.wait(30)
            stop.set()
            for future in futures:
                future.result()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(answered) >= 40 and all(answered)
    with closing(sqlite3.connect(data_dir / studies.DATABASE_FILE)) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        kept = {row[0] for row in db.execute("SELECT id FROM studies")}
    missing = set(answered) - kept
    section = "kill -9 during a burst of kept predictions (the real server)"
    reliability_figures.add(section, "concurrent clients", CLIENTS)
    reliability_figures.add(section, "answered with a study id before the kill", len(answered))
    reliability_figures.add(section, "requests cut off by the kill", failed[0])
    reliability_figures.add(section, "studies in the database afterwards", len(kept))
    reliability_figures.add(section, "answered studies missing", len(missing))
    reliability_figures.add(section, "PRAGMA integrity_check", check)
    assert check == "ok"
    assert not missing, missing
