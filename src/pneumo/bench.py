"""``pneumo bench``: how fast the product answers on this machine, measured in one run.

On generated X-ray-like images and one model bundle it measures, in order:

1. the bare forward pass of each engine (``engine.py``): one image, then the
   best throughput over a range of batch sizes -- the hardware's limit for
   this model, what everything else is compared with;
2. the pattern most pneumonia web apps use: ``model.predict`` for the score,
   then a second pass under ``GradientTape`` for Grad-CAM, per image;
3. the product itself, as a user meets it: a real ``pneumo serve`` subprocess
   (time from launch to a healthy answer, API requests with heatmap one after
   another, then N concurrent clients, its resident memory), the same with
   TensorFlow as the engine, and ``pneumo predict`` over a folder.

The figures are wall-clock times: they mean something only on an otherwise
idle machine, which is why the load average is printed with them. No test
asserts any of them; CI runs this with tiny counts to check that it works.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import http.client
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

#: The issue's targets, as ratios measured in the same run.
TARGET_API_VS_BARE = 1.3  # API p50 with heatmap <= 1.3x the bare single-image forward pass
TARGET_NAIVE_VS_API = 2.5  # ... and at least 2.5x faster than the naive pattern
TARGET_PREDICT_VS_BATCHED = 0.85  # pneumo predict >= 0.85x the bare batched throughput
TARGET_CLIENTS_VS_BATCHED = 0.8  # N concurrent clients >= 0.8x the bare batched throughput
TARGET_READY_SECONDS = 5.0
TARGET_MEMORY_BYTES = 2**30


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


@dataclasses.dataclass
class Row:
    what: str
    value: float
    unit: str  # "ms", "s", "img/s" or "MB"
    detail: str = ""

    def shown(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        digits = 2 if self.unit == "s" else 1
        return f"{self.value:.{digits}f} {self.unit}"


@dataclasses.dataclass
class Report:
    machine: dict
    rows: list[Row] = dataclasses.field(default_factory=list)
    targets: list[tuple[str, str, bool | None]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, what: str, value: float, unit: str, detail: str = "") -> Row:
        row = Row(what, value, unit, detail)
        self.rows.append(row)
        print(f"  {what}: {row.shown()}  {detail}", file=sys.stderr, flush=True)
        return row


# -- generated inputs ------------------------------------------------------------------

def synthetic_xray(seed: int, side: int) -> np.ndarray:
    """A grayscale picture shaped like a frontal chest film: dark lungs in a brighter
    body, a spine, ribs, sometimes a bright patch, noise. Not a radiograph: a
    stand-in of realistic size and texture for timing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = 165 + 35 * np.exp(-((xx - 0.5) ** 2) / 0.01) - 40 * yy ** 2
    for centre in (0.3 + rng.uniform(-0.02, 0.02), 0.7 + rng.uniform(-0.02, 0.02)):
        lung = ((xx - centre) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
        image[lung] = 60 + 20 * yy[lung]
        ribs = lung & (np.sin(yy * 38 + np.abs(xx - 0.5) * 8) > 0.6)
        image[ribs] += 35
    if seed % 2:
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.7)
        image += 60 * np.exp(-(((xx - cx) / 0.07) ** 2 + ((yy - cy) / 0.09) ** 2))
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int, side: int, source: str | None = None,
                 fmt: str = "png") -> list[Path]:
    """``count`` PNG or JPEG uploads of ``side`` x ``side`` pixels: drawn, or made from the
    X-rays under ``source`` (resized, with detector-like noise so that no two are
    the same file)."""
    from PIL import Image

    originals = []
    if source:
        from .predict_files import expand_paths

        originals = list(expand_paths([source])) if Path(source).is_dir() else []
        if not originals:
            raise FileNotFoundError(f"no image files under {source}")
        originals = [originals[i] for i in np.random.default_rng(0).permutation(len(originals))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if originals:
            from .imaging import load_image

            gray = Image.fromarray(load_image(originals[i % len(originals)]).pixels)
            resized = np.asarray(gray.resize((side, side), Image.BILINEAR), dtype=np.float32)
            noise = np.random.default_rng(i).normal(0, 2, resized.shape)
            pixels = np.clip(resized + noise, 0, 255).astype(np.uint8)
        else:
            pixels = synthetic_xray(i, side)
        path = folder / f"xray-{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        if fmt == "jpeg":
            Image.fromarray(pixels).save(path, quality=90)
        else:
            Image.fromarray(pixels).save(path, compress_level=1)
        paths.append(path)
    return paths


# -- the machine -----------------------------------------------------------------------

def machine_description() -> dict:
    """CPU, cores, memory, OS and library versions, for the report."""
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if model:
            info["cpu"] = model.group(1).strip()
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if flags:
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
            present = set(flags.group(1).split())
            info["isa"] = " ".join(flag for flag in wanted if flag in present)
        memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if memory:
            info["memory_gib"] = round(int(memory.group(1)) / 2**20, 1)
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for name in ("numpy", "tensorflow", "keras", "onnxruntime", "onnx", "tf2onnx", "pillow",
                 "flask", "waitress"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["libraries"] = versions
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def memory_of(pid: int) -> tuple[float, float]:
    """(resident, peak resident) bytes of a process, from /proc (NaN elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan"), float("nan")
    values = {key: int(re.search(rf"^{key}:\s*(\d+) kB", text, re.M).group(1)) * 1024
              for key in ("VmRSS", "VmHWM")}
    return float(values["VmRSS"]), float(values["VmHWM"])


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
    from .engine import load_engine

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

    from .bundle import load_bundle
    from .models import with_features

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


# -- 3. the real server -------------------------------------------------------------------

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


class ServerProcess:
    """``pneumo serve`` as a subprocess on a free loopback port."""

    def __init__(self, bundle: Path, workers: int, env: dict | None = None,
                 log: Path | None = None):
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "pneumo.cli", "serve", "--model", str(bundle),
                   "--port", str(self.port), "--workers", str(workers)]
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self._log_handle = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.launched = time.perf_counter()
        self.process = subprocess.Popen(command, env=environment, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 300) -> float:
        """Seconds from launch to the first 200 from /api/v1/health."""
        deadline = self.launched + timeout
        url = f"http://127.0.0.1:{self.port}/api/v1/health"
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pneumo serve exited with {self.process.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.launched
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"pneumo serve was not healthy within {timeout:.0f} s")

    def memory(self) -> tuple[float, float]:
        return memory_of(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_handle is not subprocess.DEVNULL:
            self._log_handle.close()


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


def _statuses(statuses: list[int]) -> str:
    bad = [s for s in statuses if s != 200]
    return "" if not bad else f"; {len(bad)} of {len(statuses)} not 200 ({sorted(set(bad))})"


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
                  f"{_statuses(statuses)}")
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
                   f"{1000 * _percentile(latencies, 95):.0f} ms{_statuses(statuses)}")
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
                   f"{count} sequential requests{_statuses(statuses)}")
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
    from .bundle import read_card
    from .config import default_bundle_path
    from .engine import ENGINES, onnx_available, requested_engine
    from .imaging import load_image
    from .preprocessing import to_model_input

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
        from .engine import load_engine

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
    _targets(report, reference, naive, served, predicted, args.clients)
    return report


def _targets(report: Report, bare: dict, naive: float, served: dict, predicted: float,
             clients: int) -> None:
    def check(name: str, ratio: float, shown: str, met: bool) -> None:
        report.targets.append((name, shown, None if math.isnan(ratio) else met))

    ratio = served["p50"] / served.get("bare_latency", bare["latency"])
    check(f"API p50 with heatmap <= {TARGET_API_VS_BARE}x bare single-image forward", ratio,
          f"{ratio:.2f}x", ratio <= TARGET_API_VS_BARE)
    ratio = naive / served["p50"]
    check(f"API p50 at least {TARGET_NAIVE_VS_API}x faster than the naive pattern", ratio,
          f"{ratio:.1f}x", ratio >= TARGET_NAIVE_VS_API)
    ratio = predicted / served.get("bare_throughput_predict", bare["throughput"])
    check(f"pneumo predict >= {TARGET_PREDICT_VS_BATCHED}x bare batched throughput", ratio,
          f"{ratio:.2f}x", ratio >= TARGET_PREDICT_VS_BATCHED)
    ratio = served["clients"] / served.get("bare_throughput", bare["throughput"])
    check(f"{clients} concurrent clients >= {TARGET_CLIENTS_VS_BATCHED}x bare batched "
          "throughput", ratio, f"{ratio:.2f}x", ratio >= TARGET_CLIENTS_VS_BATCHED)
    check(f"ready to serve within {TARGET_READY_SECONDS:g} s of launch", served["ready"],
          f"{served['ready']:.2f} s", served["ready"] <= TARGET_READY_SECONDS)
    memory = served["memory"]
    check("under 1 GB resident memory per worker", memory, f"{memory / 2**20:.0f} MB",
          memory < TARGET_MEMORY_BYTES)


# -- output -----------------------------------------------------------------------------

def render_text(report: Report) -> str:
    width = max(len(row.what) for row in report.rows)
    lines = [f"{'measurement':<{width}}  {'value':>12}  detail"]
    lines += [f"{row.what:<{width}}  {row.shown():>12}  {row.detail}" for row in report.rows]
    lines.append("")
    lines += [f"{'met' if met else 'NOT met' if met is not None else 'n/a':>7}  {shown:>9}  "
              f"{name}" for name, shown, met in report.targets]
    lines += ["", *report.notes, _machine_line(report.machine)]
    return "\n".join(lines) + "\n"


def _machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    return (f"machine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs "
            f"({machine.get('isa', '')}), {machine.get('memory_gib', '?')} GiB; "
            f"{machine.get('os')}; Python {machine.get('python')}; {libraries}; load average "
            f"{machine.get('load_average_start')} at start, {machine.get('load_average_end')} "
            f"at end; model {machine.get('model')}, input {machine.get('model_input')}px")


def render_markdown(report: Report) -> str:
    lines = ["| measurement | value | detail |", "|---|---:|---|"]
    lines += [f"| {row.what} | {row.shown()} | {row.detail} |" for row in report.rows]
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {name} | {shown} | {'yes' if met else 'no' if met is not None else 'n/a'} |"
              for name, shown, met in report.targets]
    machine = report.machine
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    lines += ["", *report.notes, "",
              f"- CPU: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs; "
              f"instruction sets: {machine.get('isa', 'n/a')}; "
              f"{machine.get('memory_gib', '?')} GiB memory",
              f"- OS: {machine.get('os')}; Python {machine.get('python')}",
              f"- libraries: {libraries}",
              f"- model: {machine.get('model')}, input {machine.get('model_input')}x"
              f"{machine.get('model_input')}",
              f"- load average (1, 5, 15 min): {machine.get('load_average_start')} at the "
              f"start, {machine.get('load_average_end')} at the end"]
    return "\n".join(lines) + "\n"


def run_from_args(args) -> int:
    report = run(args)
    text = render_text(report)
    sys.stdout.write(text)
    if args.report:
        Path(args.report).write_text(render_markdown(report))
        print(f"report written to {args.report}", file=sys.stderr)
    return 0

