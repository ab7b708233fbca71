"""Micro-batching in the server (``web/inference.py``): requests waiting together run as
one batch, never more than the bound, and each gets exactly its own answer."""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import io
import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from conftest import encode, synthetic_xray
from pneumo.predictor import Predictor
from pneumo.web import create_app
from pneumo.web.errors import ApiError
from pneumo.web.server import Server


@pytest.fixture(scope="module")
def sharp_predictor(tiny_predictor, tiny_bundle) -> Predictor:
    """The tiny model with a temperature that spreads its nearly equal logits over the
    probability range, so that different images get clearly different answers."""
    logit = tiny_predictor.predict(encode(synthetic_xray(0)), heatmap=False).logit
    card = copy.deepcopy(tiny_predictor.card)
    card["calibration"]["temperature"] = abs(logit) / 1.5 or 1.0
    return Predictor(tiny_predictor.engine, card, tiny_bundle)


def _release_when(holder, queued: int, gate: threading.Event, timeout: float = 60) -> None:
    """Open ``gate`` once ``queued`` requests wait behind the blocked inference thread."""
    deadline = time.monotonic() + timeout
    while holder.queued < queued and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()


def _block(holder, gate: threading.Event) -> threading.Thread:
    """Keep the inference thread busy until ``gate`` opens (as a long batch would)."""
    started = threading.Event()

    def busy():
        started.set()
        gate.wait(60)

    thread = threading.Thread(target=holder.run, args=(busy,), kwargs={"timeout": 120})
    thread.start()
    assert started.wait(30)
    return thread


def _post(url: str, data: bytes, name: str, heatmap: bool):
    boundary, body = encode_multipart(MultiDict(
        [("file", FileStorage(io.BytesIO(data), filename=name))]))
    request = urllib.request.Request(
        f"{url}/api/v1/predict?heatmap={'true' if heatmap else 'false'}", data=body,
        method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_concurrent_clients_of_the_real_server_share_batches_and_get_their_own_answers(
        sharp_predictor):
    app = create_app({"PNEUMO_PREDICTOR": sharp_predictor, "PNEUMO_BATCH_MAX_IMAGES": 4})
    holder = app.extensions["pneumo.model"]
    server = Server(app, port=0, threads=12)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    images = [encode(synthetic_xray(200 + i, (100 + 6 * i, 90), opacity=i % 3 == 0))
              for i in range(10)]
    expected = [sharp_predictor.predict(data) for data in images]
    assert len({round(e.probability, 6) for e in expected}) > 6  # the check can tell them apart
    gate = threading.Event()
    try:
        blocker = _block(holder, gate)
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            futures = [pool.submit(_post, server.url, data, f"{i}.png", i % 2 == 0)
                       for i, data in enumerate(images)]
            _release_when(holder, len(images), gate)
            answers = [future.result() for future in futures]
        blocker.join(30)
    finally:
        gate.set()
        server.stop()
        assert server.wait_stopped(30)
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        assert body["filename"] == f"{i}.png"
        assert body["label"] == expected[i].label
        assert body["probability"] == pytest.approx(expected[i].probability, abs=1e-6)
        if i % 2 == 0:
            heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap"].split(",")[1])))
            width, height = body["input"]["width"], body["input"]["height"]
            side = min(128, max(width, height))  # PNEUMO_HEATMAP_SIDE caps the long side
            assert max(heatmap.size) == side
            assert heatmap.size[0] / heatmap.size[1] == pytest.approx(width / height, rel=0.02)
        else:
            assert body["heatmap"] is None
    stats = holder.stats
    assert stats.requests == len(images) and stats.images == len(images)
    assert 1 < stats.largest <= 4  # merged, within the bound
    assert stats.batches >= 3  # ten single-image requests in batches of at most four


def test_merged_results_equal_single_results_heatmaps_included(sharp_predictor):
    app = create_app({"PNEUMO_PREDICTOR": sharp_predictor, "PNEUMO_BATCH_MAX_IMAGES": 8})
    holder = app.extensions["pneumo.model"]
    batches = [np.stack([sharp_predictor.prepare(encode(synthetic_xray(300 + 3 * j + k)))
                         for k in range(n)]) for j, n in enumerate((1, 3, 2))]
    alone = [sharp_predictor.predict_batch(batch) for batch in batches]
    gate = threading.Event()
    blocker = _block(holder, gate)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(holder.predict, batch, True, timeout=60) for batch in batches]
        _release_when(holder, len(batches), gate)
        together = [future.result() for future in futures]
    blocker.join(30)
    assert holder.stats.largest == 3 and holder.stats.images == 6
    for mine, single in zip(together, alone):
        assert len(mine) == len(single)
        for a, b in zip(mine, single):
            assert a.logit == pytest.approx(b.logit, rel=1e-5, abs=1e-9)
            assert a.probability == pytest.approx(b.probability, abs=1e-6)
            np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)


def test_a_large_batch_request_runs_in_bounded_slices(sharp_predictor):
    app = create_app({"PNEUMO_PREDICTOR": sharp_predictor, "PNEUMO_BATCH_MAX_IMAGES": 2})
    holder = app.extensions["pneumo.model"]
    batch = np.stack([sharp_predictor.prepare(encode(synthetic_xray(400 + i))) for i in range(5)])
    seen = []
    original = sharp_predictor.predict_batch

    def recording(images, heatmaps=True):
        seen.append(len(images))
        return original(images, heatmaps)

    sharp_predictor.predict_batch = recording
    try:
        results = holder.predict(batch, False, timeout=60)
    finally:
        del sharp_predictor.predict_batch
    assert seen == [2, 2, 1]
    expected = original(batch, heatmaps=False)
    assert [r.probability for r in results] == pytest.approx(
        [e.probability for e in expected], abs=1e-6)


def test_the_batcher_waits_for_a_request_still_being_decoded_and_never_for_none(
        sharp_predictor):
    """A request counted as arriving is waited for (bounded); a lone one is not."""
    app = create_app({"PNEUMO_PREDICTOR": sharp_predictor, "PNEUMO_BATCH_WAIT_MS": 60_000})
    holder = app.extensions["pneumo.model"]
    one = sharp_predictor.prepare(encode(synthetic_xray(500)))[None]
    # Nothing else is on its way: the request runs at once (a 60 s wait would time out).
    assert len(holder.predict(one, False, timeout=20)) == 1
    assert holder.stats.batches == 1
    counted, go = threading.Event(), threading.Event()

    def second_request():
        """A real request: counted as arriving when it starts, queued after decoding."""
        with app.test_request_context("/api/v1/predict", method="POST"):
            app.preprocess_request()
            counted.set()
            go.wait(60)
            return holder.predict(one, False, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        second = pool.submit(second_request)
        assert counted.wait(30)
        first = pool.submit(holder.predict, one, False, timeout=60)
        time.sleep(0.3)
        assert not first.done()  # it waits for the request still on its way
        go.set()
        assert len(first.result()) == 1 and len(second.result()) == 1
    assert holder.stats.batches == 2 and holder.stats.largest == 2


def test_a_request_that_gave_up_while_queued_is_never_run(sharp_predictor):
    app = create_app({"PNEUMO_PREDICTOR": sharp_predictor})
    holder = app.extensions["pneumo.model"]
    one = sharp_predictor.prepare(encode(synthetic_xray(600)))[None]
    gate = threading.Event()
    blocker = _block(holder, gate)
    with pytest.raises(ApiError) as raised:
        holder.predict(one, True, timeout=0.05)
    assert raised.value.status == 504
    gate.set()
    blocker.join(30)
    assert len(holder.predict(one, True, timeout=60)) == 1
    assert holder.stats.requests == 1  # only the second one ran
