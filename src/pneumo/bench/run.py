"""``pneumo bench``'s options and its run: the bare forward pass, the naive
pattern, the real server, ``pneumo predict``, in that order (see the package)."""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .inputs import write_images
from .machine import load_average, machine_description
from .report import Report, check_targets, render_markdown, render_text
from .server import (ServerProcess, concurrent_requests, multipart, not_ok,
                     sequential_requests)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pneumo bench`` options (counts small enough for CI smoke tests)."""
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed single-image forward passes per engine")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32",
                        help="batch sizes tried for the bare batched throughput")
    parser.add_argument("--batch-images", type=int, default=96,
                        help="images timed per batch size (at least two batches)")
    parser.add_argument("--naive-repeats", type=int, default=10,
                        help="images timed through model.predict + Grad-CAM")
    parser.add_argument("--requests", type=int, default=100,
                        help="sequential API requests with heatmap")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients")
    parser.add_argument("--client-requests", type=int, default=25,
                        help="requests per concurrent client")
    parser.add_argument("--images", type=int, default=500,
                        help="images in the folder given to pneumo predict")
    parser.add_argument("--image-side", type=int, default=1024,
                        help="side of the uploads, in pixels")
    parser.add_argument("--upload-format", choices=("jpeg", "png"), default="jpeg",
                        help="format of the uploads: JPEG (quality 90, what phones, "
                             "telemedicine and the training collection use) or 8-bit PNG")
    parser.add_argument("--images-from", metavar="DIR", default=None,
                        help="make the uploads from the X-rays in DIR (resized to "
                             "--image-side, with a little noise) instead of drawing them: a "
                             "model with an input gate refuses drawn pictures, and refused "
                             "requests carry no heatmap")
    parser.add_argument("--engines", default=None,
                        help="engines whose bare forward pass is measured (default: every "
                             "one installed; the first is the product's)")
    parser.add_argument("--workers", type=int, default=4, help="server request threads")
    parser.add_argument("--no-cold-start", dest="cold_start", action="store_false",
                        help="skip the first launch with an empty engine cache (it converts "
                             "the model to ONNX)")
    parser.add_argument("--no-tensorflow-server", dest="tensorflow_server",
                        action="store_false",
                        help="skip the second server run with the TensorFlow engine")
    parser.add_argument("--report", metavar="FILE", default=None,
                        help="also write the table and the machine as Markdown to FILE")


# -- 1. the bare forward pass ------------------------------------------------------------

def time_calls(function, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def bare_forward(report: Report, bundle: Path, card: dict, kind: str, inputs: np.ndarray,
                 repeats: int, batch_sizes: list[int], batch_images: int) -> dict:
    """Single-image latency and best batched throughput of one engine."""
    from ..engine import load_engine

    started = time.perf_counter()
    engine = load_engine(bundle, card, kind)
    loaded = time.perf_counter() - started
    single = time_calls(lambda: engine(inputs[:1]), repeats)
    latency = statistics.median(single)
    report.add(f"bare forward, 1 image ({engine.name})", 1000 * latency, "ms",
               f"median of {repeats}; p95 {1000 * _percentile(single, 95):.1f} ms; "
               f"engine loaded in {loaded:.1f} s")
    rates = {}
    for size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(inputs, (size, *inputs.shape[1:])))
        batches = max(2, math.ceil(batch_images / size))
        times = time_calls(lambda batch=batch: engine(batch), batches, warmup=1)
        rates[size] = size * len(times) / sum(times)
    best = max(rates, key=rates.get)
    report.add(f"bare forward, best batch ({engine.name})", rates[best], "img/s",
               f"batch {best}; " + ", ".join(f"{size}: {rate:.1f}" for size, rate in rates.items()))
    engine = None  # free the session before the next measurement
    gc.collect()
    return {"latency": latency, "throughput": rates[best], "batch": best, "rates": rates}


class Reference:
    """The product's bare forward pass, kept loaded in this process to be timed again
    beside each product measurement: the machine's speed drifts over minutes (by 16%
    between two runs here), so each ratio compares figures taken in the same minutes.
    The engine sleeps while the server works and the other way round."""

    def __init__(self, engine, inputs: np.ndarray, batch: int, batch_images: int):
        self.engine, self.inputs = engine, inputs
        self.batch = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
        self.batches = max(2, math.ceil(batch_images / batch))

    def single(self) -> float:
        """Seconds for one single-image pass."""
        started = time.perf_counter()
        self.engine(self.inputs[:1])
        return time.perf_counter() - started

    def throughput(self) -> float:
        """Images/s at the best batch size found at the start."""
        times = time_calls(lambda: self.engine(self.batch), self.batches, warmup=1)
        return len(self.batch) * len(times) / sum(times)

    def around(self, measure):
        """``(measure(), mean bare throughput just before and just after it, both)``."""
        before = self.throughput()
        result = measure()
        after = self.throughput()
        return result, (before + after) / 2, (before, after)


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# -- 2. the naive pattern ----------------------------------------------------------------

def naive_pattern(report: Report, bundle: Path, inputs: np.ndarray, repeats: int) -> float:
    """``model.predict`` per image, then Grad-CAM with ``GradientTape`` (keras-io's
    grad_cam example) on a model that outputs the last conv features and the score."""
    import tensorflow as tf

    from ..bundle import load_bundle
    from ..models import with_features

    model, _ = load_bundle(bundle)
    grad_model = with_features(model)

    def grad_cam(image):
        with tf.GradientTape() as tape:
            features, score = grad_model(image)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))
        return (cam / (tf.reduce_max(cam) + 1e-8)).numpy()

    predict_times, cam_times = [], []
    for i in range(repeats + 2):
        image = inputs[i % len(inputs)][None]
        started = time.perf_counter()
        model.predict(image, verbose=0)
        middle = time.perf_counter()
        grad_cam(image)
        ended = time.perf_counter()
        if i >= 2:  # the first calls build the functions
            predict_times.append(middle - started)
            cam_times.append(ended - middle)
    total = statistics.median(np.add(predict_times, cam_times))
    report.add("naive peer pattern: model.predict + GradientTape Grad-CAM, per image",
               1000 * total, "ms", f"median of {repeats}: predict "
               f"{1000 * statistics.median(predict_times):.1f} ms + Grad-CAM "
               f"{1000 * statistics.median(cam_times):.1f} ms")
    model = grad_model = None
    gc.collect()
    return total


def serve_and_measure(report: Report, bundle: Path, bodies: list, args, work: Path,
                      reference: Reference | None = None) -> dict:
    """Launch the product's server, time its start, its requests and its memory; with a
    ``reference``, time the bare pass between the sequential requests and around the
    concurrent ones too (``found["bare_latency"]``, ``found["bare_throughput"]``)."""
    found = {}
    if args.cold_start:
        cold = ServerProcess(bundle, args.workers, env={"PNEUMO_CACHE_DIR": str(work / "cold")},
                             log=work / "serve-cold.log")
        try:
            found["cold"] = cold.wait_healthy()
        finally:
            cold.stop()
        report.add("serve: launch to healthy, first launch (empty cache: converts to ONNX)",
                   found["cold"], "s", "once per model file; later launches reuse the graph")
    server = ServerProcess(bundle, args.workers, log=work / "serve.log")
    try:
        found["ready"] = server.wait_healthy()
        report.add("serve: launch to healthy", found["ready"], "s",
                   "default engine, converted graph cached")
        sequential_requests(server.port, bodies, 5)  # warm-up
        bare_times = []
        times, statuses, heatmaps = sequential_requests(
            server.port, bodies, args.requests,
            (lambda: bare_times.append(reference.single())) if reference else None)
        found["p50"], found["p95"] = _percentile(times, 50), _percentile(times, 95)
        if bare_times:
            found["bare_latency"] = statistics.median(bare_times)
            report.add("bare forward, 1 image, between the API requests",
                       1000 * found["bare_latency"], "ms",
                       f"median of {len(bare_times)}, one before each request below; "
                       "the API ratio uses this")
        detail = (f"{args.requests} sequential requests, {args.image_side}x{args.image_side} "
                  f"{args.upload_format.upper()} uploads, {heatmaps} with heatmap"
                  f"{not_ok(statuses)}")
        report.add("API request with heatmap, p50", 1000 * found["p50"], "ms", detail)
        report.add("API request with heatmap, p95", 1000 * found["p95"], "ms", detail)
        def clients():
            return concurrent_requests(server.port, bodies, args.clients, args.client_requests)

        if reference:
            (wall, latencies, statuses), found["bare_throughput"], both = \
                reference.around(clients)
            report.add(f"bare forward, best batch, around the {args.clients}-client run",
                       found["bare_throughput"], "img/s",
                       f"mean of {both[0]:.1f} just before and {both[1]:.1f} just after; "
                       "the clients' ratio uses this")
        else:
            wall, latencies, statuses = clients()
        found["clients"] = len(latencies) / wall
        report.add(f"API throughput, {args.clients} concurrent clients", found["clients"],
                   "img/s", f"{len(latencies)} requests with heatmap; latency p50 "
                   f"{1000 * _percentile(latencies, 50):.0f} ms, p95 "
                   f"{1000 * _percentile(latencies, 95):.0f} ms{not_ok(statuses)}")
        rss, peak = server.memory()
        found["memory"] = peak
        report.add("resident memory per worker (serve process)", peak / 2**20, "MB",
                   f"peak (VmHWM) after the runs above; {rss / 2**20:.0f} MB resident at the end")
    finally:
        server.stop()
    if args.tensorflow_server:
        tf_server = ServerProcess(bundle, args.workers, env={"PNEUMO_ENGINE": "tensorflow"},
                                  log=work / "serve-tensorflow.log")
        try:
            ready = tf_server.wait_healthy()
            sequential_requests(tf_server.port, bodies, 5)
            count = max(1, min(args.requests, 30))
            times, statuses, _ = sequential_requests(tf_server.port, bodies, count)
            rss, peak = tf_server.memory()
        finally:
            tf_server.stop()
        report.add("serve with PNEUMO_ENGINE=tensorflow: launch to healthy", ready, "s",
                   "imports TensorFlow, loads the Keras model")
        report.add("serve with PNEUMO_ENGINE=tensorflow: API p50 with heatmap",
                   1000 * _percentile(times, 50), "ms",
                   f"{count} sequential requests{not_ok(statuses)}")
        report.add("serve with PNEUMO_ENGINE=tensorflow: resident memory", peak / 2**20, "MB",
                   f"peak (VmHWM); {rss / 2**20:.0f} MB at the end")
    return found


def predict_folder(report: Report, bundle: Path, folder: Path, count: int,
                   work: Path) -> float:
    """``pneumo predict`` on the folder, as a subprocess; images/s after loading."""
    output = work / "predictions.csv"
    command = [sys.executable, "-m", "pneumo.cli", "predict", str(folder), "--model",
               str(bundle), "--output", str(output)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"pneumo predict failed: {result.stderr.strip()[-500:]}")
    found = re.search(r"(\d+) images in ([\d.]+) s, ([\d.]+) images/s, batch size (\d+)",
                      result.stderr)
    if not found:
        raise RuntimeError(f"pneumo predict printed no summary: {result.stderr[-500:]}")
    images, seconds, rate, batch = found.groups()
    statuses = [line.rsplit(",", 1)[-1] for line in output.read_text().splitlines()[1:]]
    refused = sum(1 for status in statuses if status.startswith("rejected"))
    report.add(f"pneumo predict, folder of {count} images", float(rate), "img/s",
               f"{images} images through the network in {seconds} s, batch size {batch} "
               f"(chosen on the run); {count / wall:.1f} img/s counting start-up "
               f"({wall:.1f} s in all)" + (f"; {refused} refused by the input gate"
                                           if refused else ""))
    return float(rate)


# -- the whole run ------------------------------------------------------------------------

def run(args) -> Report:
    from ..bundle import read_card
    from ..config import default_bundle_path
    from ..engine import ENGINES, onnx_available, requested_engine
    from ..imaging import load_image
    from ..preprocessing import to_model_input

    bundle = Path(args.model) if args.model else default_bundle_path()
    card = read_card(bundle)
    product_engine = requested_engine()
    if product_engine == "auto":
        product_engine = "onnxruntime" if onnx_available() else "tensorflow"
    if args.engines:
        engines = [requested_engine(name) for name in args.engines.split(",")]
    else:
        engines = [product_engine] + [name for name in ENGINES[1:] if name != product_engine
                                      and (name != "onnxruntime" or onnx_available())]
    batch_sizes = sorted({int(size) for size in args.batch_sizes.split(",")})
    for name, value in (("--repeats", args.repeats), ("--requests", args.requests),
                        ("--clients", args.clients), ("--client-requests", args.client_requests),
                        ("--images", args.images), ("--naive-repeats", args.naive_repeats),
                        ("--image-side", args.image_side)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    machine = machine_description()
    machine["load_average_start"] = load_average()
    machine["model"] = f"{card.get('name')} {card.get('version')} ({bundle})"
    machine["model_input"] = int(card["input"]["size"])
    report = Report(machine)
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as temp:
        work = Path(temp)
        origin = f"made from the X-rays in {args.images_from}" if args.images_from else "drawn"
        kind = args.upload_format.upper()
        print(f"writing {args.images} {args.image_side}px {kind} uploads ({origin})",
              file=sys.stderr)
        paths = write_images(work / "images", args.images, args.image_side, args.images_from,
                             args.upload_format)
        report.notes.append(f"Uploads: {args.images} {kind}s of {args.image_side}x"
                            f"{args.image_side} pixels, {origin}.")
        uploads = [path.read_bytes() for path in paths[:64]]
        bodies = [multipart(path.name, data) for path, data in zip(paths, uploads)]
        size = int(card["input"]["size"])
        inputs = np.stack([to_model_input(load_image(data).pixels, size)
                           for data in uploads[:16]])
        print("bare forward pass", file=sys.stderr)
        bare = {}
        for kind in engines:
            bare[kind] = bare_forward(report, bundle, card, kind, inputs, args.repeats,
                                      batch_sizes, args.batch_images)
        print("naive pattern", file=sys.stderr)
        naive = naive_pattern(report, bundle, inputs, args.naive_repeats)
        print("pneumo serve", file=sys.stderr)
        from ..engine import load_engine

        reference = Reference(load_engine(bundle, card, engines[0]), inputs,
                              bare[engines[0]]["batch"], args.batch_images)
        served = serve_and_measure(report, bundle, bodies, args, work, reference)
        print("pneumo predict", file=sys.stderr)
        predicted, served["bare_throughput_predict"], both = reference.around(
            lambda: predict_folder(report, bundle, work / "images", args.images, work))
        report.add("bare forward, best batch, around pneumo predict",
                   served["bare_throughput_predict"], "img/s",
                   f"mean of {both[0]:.1f} just before and {both[1]:.1f} just after; "
                   "the ratio of pneumo predict uses this")
        reference = None
        gc.collect()
    machine["load_average_end"] = load_average()
    reference = bare[engines[0]]
    report.notes.append(f"Ratios use the bare forward pass of `{engines[0]}`, the engine the "
                        "product runs on, timed again beside each measurement: between the "
                        "API's requests, and just before and after the concurrent clients "
                        "and pneumo predict.")
    check_targets(report, reference, naive, served, predicted, args.clients)
    return report


def run_from_args(args) -> int:
    report = run(args)
    text = render_text(report)
    sys.stdout.write(text)
    if args.report:
        Path(args.report).write_text(render_markdown(report))
        print(f"report written to {args.report}", file=sys.stderr)
    return 0
