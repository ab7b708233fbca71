"""The real server under load (RELIABILITY.md rows 21 and 22): ``pneumo serve`` on a
free loopback port, spoken to over HTTP, bounded in requests and time.

* 20 concurrent clients send 300 requests: no errors, and every answer is the
  one a single client got for the same image before the load began;
* 1,000 sequential predictions after a warm-up: the server's resident memory
  (``VmRSS`` in ``/proc/<pid>/status``) stays within 5% of where it started.

The tiny model keeps this fast; what is measured is the server, not the network.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from synthetic import encode, synthetic_xray
from real_server import free_port, http_post, start, wait_ready

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

CLIENTS = 20
REQUESTS = 300
SEQUENTIAL = 1000
WARM_UP = 100
MAX_DRIFT = 0.05
FIGURES = "The real server under load (rows 21 and 22)"


@pytest.fixture(scope="module")
def server(sharp_bundle, tmp_path_factory):
    """``pneumo serve`` with 4 request threads on the sharp tiny bundle."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("load") / "server.log"
    process = start([sys.executable, "-m", "pneumo.cli", "serve", "--model", str(sharp_bundle),
                     "--port", str(port), "--workers", "4"], log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log_path)
    yield {"url": url, "process": process, "log": log_path}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def images() -> list[tuple[str, bytes]]:
    """20 different X-rays (sizes, seeds, with and without an opacity), two of them small
    enough to be answered with a warning and one refused, so all three verdicts travel."""
    files = [(f"xray-{i}.png", encode(synthetic_xray(300 + i, (200 + 16 * i, 220),
                                                     opacity=i % 3 == 0)))
             for i in range(17)]
    files.append(("small-1.png", encode(synthetic_xray(400, (150, 160)))))
    files.append(("small-2.jpg", encode(synthetic_xray(401, (170, 140)), "JPEG")))
    files.append(("blank.png", encode(synthetic_xray(402, (300, 300)) * 0 + 128)))
    return files


def answer(url: str, name: str, data: bytes) -> tuple[int, dict]:
    """(status, body); status 0 for a connection the server failed or dropped."""
    try:
        status, _, body = http_post(url + "/api/v1/predict?heatmap=false", [(name, data)],
                                    timeout=120)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return 0, {"connection": str(exc)}
    return status, body


def same(body: dict, reference: dict) -> bool:
    """Equal in every field; the probability to 1e-6 (batching may change the last bits);
    the study id, new for every kept prediction, only present in both or neither."""
    if set(body) != set(reference):
        return False
    for key, value in reference.items():
        if key == "study_id":
            if (body[key] is None) != (value is None):
                return False
        elif key == "probability":
            if abs(body[key] - value) > 1e-6:
                return False
        elif body[key] != value:
            return False
    return True


@pytest.mark.reliability(21)
def test_row21_twenty_clients_get_the_single_threaded_answers(server, reliability_figures):
    files = images()
    reference = {}
    for name, data in files:  # one client, one request at a time
        reference[name] = answer(server["url"], name, data)
    statuses = collections.Counter(status for status, _ in reference.values())
    assert statuses == {200: 19, 422: 1}, statuses
    verdicts = {body.get("input_check", {}).get("status") for _, body in reference.values()}
    assert verdicts == {"ok", "warning", "rejected"}
    assert len({round(b["probability"], 6) for s, b in reference.values() if s == 200}) > 10

    def client(k: int) -> list[tuple[str, int, dict]]:
        mine = []
        for j in range(REQUESTS // CLIENTS):
            name, data = files[(k * 7 + j) % len(files)]
            status, body = answer(server["url"], name, data)
            mine.append((name, status, body))
        return mine

    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = [item for batch in pool.map(client, range(CLIENTS)) for item in batch]
    assert len(results) == REQUESTS
    errors = [(name, status) for name, status, _ in results if status >= 500 or status == 0]
    mismatches = [name for name, status, body in results
                  if status != reference[name][0] or not same(body, reference[name][1])]
    reliability_figures.add(FIGURES, "concurrent clients x requests each",
                            f"{CLIENTS} x {REQUESTS // CLIENTS} = {REQUESTS}")
    reliability_figures.add(FIGURES, "server errors (5xx) or failed connections", len(errors))
    reliability_figures.add(FIGURES, "answers differing from the single-threaded run",
                            len(mismatches))
    assert errors == [] and mismatches == [], (errors[:5], mismatches[:5])
    assert "Traceback" not in server["log"].read_text()


@pytest.mark.reliability(22)
def test_row22_memory_stays_flat_over_1000_sequential_predictions(server, reliability_figures):
    pid = server["process"].pid
    data = encode(synthetic_xray(77, (320, 280), opacity=True))
    url = server["url"] + "/api/v1/predict"  # with the heatmap: the most work per request
    for _ in range(WARM_UP):
        assert http_post(url, [("warm.png", data)])[0] == 200
    before = rss_bytes(pid)
    samples = []
    for i in range(SEQUENTIAL):
        status, _, body = http_post(url, [("x.png", data)])
        assert status == 200 and body["heatmap"], body
        if (i + 1) % 100 == 0:
            samples.append(rss_bytes(pid))
    after = samples[-1]
    drift = (after - before) / before
    peak = max(samples)
    mib = 2**20
    reliability_figures.add(FIGURES, "sequential predictions (after a warm-up of "
                            f"{WARM_UP})", SEQUENTIAL)
    reliability_figures.add(FIGURES, "server resident memory before / after / peak (MiB)",
                            f"{before / mib:.0f} / {after / mib:.0f} / {peak / mib:.0f}")
    reliability_figures.add(FIGURES, "resident memory drift", f"{drift * 100:+.2f}%")
    reliability_figures.add(FIGURES, "resident memory every 100 predictions (MiB)",
                            " ".join(f"{s / mib:.0f}" for s in samples))
    assert abs(drift) < MAX_DRIFT, f"resident memory moved {drift * 100:+.1f}%"
    assert (peak - before) / before < MAX_DRIFT
    assert os.path.exists(f"/proc/{pid}")  # the same process served all of them
