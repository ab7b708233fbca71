"""Inference engines: one forward pass giving the last convolutional features and the logit.

Two engines sit behind one interface, ``engine(batch) -> (features, logits)``:

* ``onnxruntime`` (the default when installed): the bundle's Keras model,
  re-wired by ``models.with_features``, converted to ONNX once with tf2onnx and
  run by ONNX Runtime. On the 2-core machine of docs/performance.md it answers
  one image about a quarter faster than TensorFlow and serves without importing
  TensorFlow at all, which starts faster and needs far less memory.
* ``tensorflow``: the same re-wired model called inside ``tf.function``; the
  fallback when onnxruntime or tf2onnx is missing or the conversion fails, and
  what training uses.

The converted graph is cached under ``config.cache_dir()/engines``, keyed by the
SHA-256 of the bundle's ``model.keras`` (checked against the card first), so a
changed model is never served from a stale graph and the bundle folder, which
may be read-only, is never written to. ``PNEUMO_ENGINE`` picks one engine
(``auto``, ``onnxruntime``, ``tensorflow``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .bundle import MODEL_FILE, verify_files
from .config import cache_dir

log = logging.getLogger(__name__)

#: Environment variable choosing the engine.
ENGINE_ENV = "PNEUMO_ENGINE"
ENGINES = ("auto", "onnxruntime", "tensorflow")
#: Bumped whenever the conversion changes, so cached graphs are rebuilt.
ONNX_FORMAT = 1
ONNX_OPSET = 17
ONNX_FILE = "model.onnx"
HEAD_FILE = "head.json"


_BLAS_HELD = False


def hold_blas_to_one_thread() -> None:
    """Keep numpy's BLAS (OpenBLAS) to one thread in this process, from now on.

    Around the network the predictor does a few small matrix products (the
    class activation maps, the input gate's PCA). OpenBLAS spreads them over
    every core, and its threads then spin, waiting for more, on the cores the
    engine's own threads need: on the 2-core machine of docs/performance.md a
    batch of 4 took 130 ms through the predictor against 92 ms for the engine
    alone, and 92 ms with BLAS held to one thread. Training does not load a
    ``Predictor`` and keeps every thread."""
    global _BLAS_HELD
    if _BLAS_HELD:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _BLAS_HELD = True


class TensorFlowEngine:
    """The bundle's Keras model, re-wired to return its features, inside ``tf.function``."""

    name = "tensorflow"

    def __init__(self, model):
        from .models import with_features

        self.model = with_features(model)
        self.logit_weights, self.logit_bias = _head(model)
        self._function = _compiled(self.model)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self._function(batch)
        return features, np.asarray(logits, dtype=np.float64).reshape(-1)


class OnnxEngine:
    """A converted graph run by ONNX Runtime; TensorFlow is never imported here."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        head = json.loads((folder / HEAD_FILE).read_text())
        self.logit_weights = np.asarray(head["logit_weights"], dtype=np.float32)
        self.logit_bias = float(head["logit_bias"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or 0  # 0: one per physical core
        # Idle worker threads sleep instead of spinning: the request threads that decode
        # uploads and encode heatmaps (and pneumo predict's decoders) share these cores,
        # and spinning threads slowed them down by a third in docs/performance.md's A/B.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        # The features are the 4-D output, the logit the 2-D one.
        ranks = [len(output.shape) for output in outputs]
        self._outputs = [outputs[ranks.index(4)].name, outputs[ranks.index(2)].name]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self.session.run(self._outputs, {self._input: batch})
        return features, np.asarray(logits, dtype=np.float64).reshape(-1)


def requested_engine(kind: str | None = None) -> str:
    """``kind``, or ``$PNEUMO_ENGINE``, or "auto"; ValueError for an unknown name."""
    kind = (kind or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if kind not in ENGINES:
        raise ValueError(f"unknown inference engine {kind!r} (${ENGINE_ENV}); "
                         f"choose one of {', '.join(ENGINES)}")
    return kind


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_engine(directory: str | Path, card: dict, kind: str | None = None):
    """The engine for the bundle in ``directory`` (its card already read and checked).

    ``auto`` uses ONNX Runtime when it is installed, converting the model on the
    first load, and falls back to TensorFlow (with a log line saying why) when it
    is not installed or the conversion fails.

    Raises:
        BundleError: a file does not match its checksum, or the model cannot be loaded.
        RuntimeError: ``onnxruntime`` was asked for and cannot be used.
    """
    kind = requested_engine(kind)
    directory = Path(directory)
    digests = verify_files(directory, card)
    if kind == "tensorflow" or (kind == "auto" and not onnx_available()):
        if kind == "auto":
            log.info("onnxruntime is not installed: running the model with TensorFlow")
        return TensorFlowEngine(_load_keras(directory))
    if not onnx_available():
        raise RuntimeError(f"{ENGINE_ENV}=onnxruntime, but onnxruntime is not installed "
                           "(pip install onnxruntime)")
    folder = onnx_cache_folder(digests[MODEL_FILE])
    if folder.is_dir():
        try:
            return OnnxEngine(folder)
        except Exception as exc:  # a damaged cache entry: rebuild it below
            log.warning("cached ONNX graph %s is unusable (%s); converting again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    model = _load_keras(directory)
    try:
        export_onnx(model, folder, source=digests[MODEL_FILE])
        return OnnxEngine(folder)
    except Exception as exc:
        if kind == "onnxruntime":
            raise RuntimeError(f"the model could not be converted to ONNX: "
                               f"{type(exc).__name__}: {exc}") from exc
        log.warning("ONNX conversion failed (%s: %s); running the model with TensorFlow",
                    type(exc).__name__, exc)
        return TensorFlowEngine(model)


def onnx_cache_folder(model_sha256: str) -> Path:
    """Where the converted graph of the model file with this SHA-256 is kept."""
    return cache_dir() / "engines" / f"{model_sha256[:32]}-onnx{ONNX_FORMAT}"


def export_onnx(model, folder: str | Path, source: str = "") -> Path:
    """Convert the bundle's Keras ``model`` (re-wired to ``(features, logit)``) to
    ``folder/model.onnx`` with its head weights beside it, atomically: the folder
    appears complete or not at all, so concurrent first loads cannot see half a graph."""
    import tensorflow as tf
    import tf2onnx

    from .models import with_features

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # one line of ours is enough

    folder = Path(folder)
    started = time.monotonic()
    wired = with_features(model)
    spec = (tf.TensorSpec((None, *wired.input.shape[1:]), tf.uint8, name="pixels"),)
    function = tf.function(lambda pixels: wired(pixels, training=False))
    # tf2onnx deep-copies the whole graph, weights included, before each of its
    # optimisers so that it can skip one that fails; without that the conversion
    # takes half the time, and a failure falls back to TensorFlow in load_engine.
    previous = os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec,
                                                 opset=ONNX_OPSET)
    finally:
        if previous is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = previous
    entry = proto.metadata_props.add()
    entry.key, entry.value = "pneumo.source_sha256", source
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        (staging / ONNX_FILE).write_bytes(proto.SerializeToString())
        weights, bias = _head(model)
        head = {"logit_weights": weights.tolist(), "logit_bias": bias, "source_sha256": source,
                "opset": ONNX_OPSET, "format": ONNX_FORMAT}
        (staging / HEAD_FILE).write_text(json.dumps(head))
        try:
            staging.rename(folder)
        except OSError:  # another process finished first; its graph is the same
            if not (folder / ONNX_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted the model to ONNX in %.1f s (cached in %s)",
             time.monotonic() - started, folder)
    return folder


def _load_keras(directory: Path):
    from .bundle import load_bundle

    model, _ = load_bundle(directory, verify=False)  # checksums were verified above
    return model


def _head(model) -> tuple[np.ndarray, float]:
    """The dense head's weights and bias: the class activation map needs them."""
    kernel, bias = model.get_layer("logit").get_weights()
    return np.asarray(kernel, dtype=np.float32).reshape(-1), float(np.ravel(bias)[0])


def _compiled(model):
    """The model's call compiled once (a graph on TensorFlow), not ``predict()``,
    which rebuilds state per call and leaks in loops."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: [t.numpy() for t in function(tf.convert_to_tensor(x))]
    return lambda x: [np.asarray(t) for t in model(x, training=False)]

