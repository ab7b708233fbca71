"""The inference engines (``pneumo.engine``): ONNX Runtime gives TensorFlow's answers,
its converted graph is cached outside the bundle, serving needs no TensorFlow, and
without onnxruntime everything falls back to TensorFlow."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import encode, synthetic_xray
from pneumo.bundle import MODEL_FILE, read_card, sha256_of
from pneumo.engine import (OnnxEngine, TensorFlowEngine, load_engine, onnx_cache_folder,
                           requested_engine)
from pneumo.predictor import Predictor

pytest.importorskip("onnxruntime")


def _inputs(size: int, n: int = 5) -> np.ndarray:
    """Chest-like pictures and plain noise, prepared as the model's uint8 input."""
    from pneumo.preprocessing import to_model_input

    images = [synthetic_xray(i, (120 + 10 * i, 100), opacity=i % 2 == 0) for i in range(n - 1)]
    images.append(np.random.default_rng(0).integers(0, 256, (90, 90), dtype=np.uint8))
    return np.stack([to_model_input(image, size) for image in images])


def _assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """Within ``tolerance`` of the expected values' own scale (random-weight features
    are tiny, so an absolute 1e-4 would accept anything)."""
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


def test_onnx_runtime_gives_tensorflows_features_and_logits(tiny_bundle):
    card = read_card(tiny_bundle)
    onnx = load_engine(tiny_bundle, card, "onnxruntime")
    tensorflow = load_engine(tiny_bundle, card, "tensorflow")
    assert isinstance(onnx, OnnxEngine) and isinstance(tensorflow, TensorFlowEngine)
    batch = _inputs(card["input"]["size"])
    features, logits = onnx(batch)
    expected_features, expected_logits = tensorflow(batch)
    assert features.shape == expected_features.shape and features.dtype == np.float32
    _assert_close(features, expected_features)
    _assert_close(logits, expected_logits)
    np.testing.assert_array_equal(onnx.logit_weights, tensorflow.logit_weights)
    assert onnx.logit_bias == tensorflow.logit_bias
    # one image alone gets the answer it gets inside the batch
    single_features, single_logits = onnx(batch[2:3])
    _assert_close(single_features[0], features[2])
    _assert_close(single_logits, logits[2:3])


def test_the_shipped_model_agrees_across_engines_within_1e_4(shipped_bundle):
    """On the real weights the logits, probabilities and features agree to 1e-4."""
    onnx = Predictor.from_bundle(shipped_bundle, engine="onnxruntime")
    tensorflow = Predictor.from_bundle(shipped_bundle, engine="tensorflow")
    batch = _inputs(onnx.image_size, n=8)
    features, logits = onnx.engine(batch)
    expected_features, expected_logits = tensorflow.engine(batch)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    _assert_close(features, expected_features)
    for mine, theirs in zip(onnx.predict_batch(batch), tensorflow.predict_batch(batch)):
        assert mine.probability == pytest.approx(theirs.probability, abs=1e-4)
        np.testing.assert_allclose(mine.heatmap, theirs.heatmap, rtol=0, atol=1e-3)


def test_the_graph_is_cached_outside_the_bundle_and_reused(tiny_bundle, engine_cache, caplog):
    before = sorted(os.listdir(tiny_bundle))
    card = read_card(tiny_bundle)
    folder = onnx_cache_folder(sha256_of(tiny_bundle / MODEL_FILE))
    assert folder.parent.parent == engine_cache  # $PNEUMO_CACHE_DIR/engines/<sha>-onnxN
    with caplog.at_level(logging.INFO, logger="pneumo.engine"):
        load_engine(tiny_bundle, card, "onnxruntime")
    assert (folder / "model.onnx").is_file()
    assert json.loads((folder / "head.json").read_text())["source_sha256"] == \
        card["files"][MODEL_FILE]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pneumo.engine"):
        load_engine(tiny_bundle, card, "onnxruntime")
    assert "converted" not in caplog.text  # the second load reuses the graph
    assert sorted(os.listdir(tiny_bundle)) == before  # nothing written into the bundle


def test_a_damaged_cached_graph_is_converted_again(tiny_bundle, tmp_path, monkeypatch):
    card = read_card(tiny_bundle)
    good = onnx_cache_folder(sha256_of(tiny_bundle / MODEL_FILE))
    load_engine(tiny_bundle, card, "onnxruntime")
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path))
    damaged = onnx_cache_folder(sha256_of(tiny_bundle / MODEL_FILE))
    shutil.copytree(good, damaged)
    (damaged / "model.onnx").write_bytes(b"not an onnx graph")
    engine = load_engine(tiny_bundle, card, "onnxruntime")
    assert isinstance(engine, OnnxEngine)
    assert (damaged / "model.onnx").stat().st_size > 1000
    batch = _inputs(card["input"]["size"], n=2)
    _assert_close(engine(batch)[1], load_engine(tiny_bundle, card, "tensorflow")(batch)[1])


def test_without_onnxruntime_the_predictor_falls_back_to_tensorflow(tiny_bundle, monkeypatch,
                                                                    caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" fails
    with caplog.at_level(logging.INFO, logger="pneumo.engine"):
        predictor = Predictor.from_bundle(tiny_bundle)
    assert predictor.engine.name == "tensorflow"
    assert "onnxruntime is not installed" in caplog.text
    result = predictor.predict(encode(synthetic_xray(3)))
    assert result.label in ("NORMAL", "PNEUMONIA") and result.heatmap is not None
    with pytest.raises(RuntimeError, match="onnxruntime is not installed"):
        Predictor.from_bundle(tiny_bundle, engine="onnxruntime")


def test_the_engine_is_chosen_by_name_or_environment(tiny_bundle, monkeypatch):
    monkeypatch.setenv("PNEUMO_ENGINE", "TensorFlow")
    assert requested_engine() == "tensorflow"
    assert Predictor.from_bundle(tiny_bundle).engine.name == "tensorflow"
    monkeypatch.setenv("PNEUMO_ENGINE", "torch")
    with pytest.raises(ValueError, match="unknown inference engine 'torch'"):
        Predictor.from_bundle(tiny_bundle)
    monkeypatch.delenv("PNEUMO_ENGINE")
    assert Predictor.from_bundle(tiny_bundle).engine.name == "onnxruntime"


def test_serving_from_a_cached_graph_never_imports_tensorflow(tiny_bundle):
    load_engine(tiny_bundle, read_card(tiny_bundle), "onnxruntime")  # the cache is warm
    script = (
        "import sys\n"
        "from pneumo.web import create_app\n"
        f"app = create_app({{'PNEUMO_MODEL': {str(tiny_bundle)!r}}})\n"
        "predictor = app.extensions['pneumo.predictor']\n"
        f"result = predictor.predict({encode(synthetic_xray(4))!r})\n"
        "print(predictor.engine.name, result.heatmap.shape,\n"
        "      sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "onnxruntime (3, 3) []"


def test_the_heatmap_png_is_the_colour_map_with_its_alpha():
    """The 256-colour palette PNG shows what an RGBA rendering by matplotlib shows."""
    from matplotlib import colormaps

    from pneumo.explain import heatmap_png, resize_map

    heatmap = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    heatmap[0, 0], heatmap[6, 6] = 0.0, 1.0
    for size in ((512, 384), (31, 77), (1, 1)):
        image = Image.open(io.BytesIO(heatmap_png(heatmap, size)))
        assert image.size == size and image.format == "PNG"
        shown = np.asarray(image.convert("RGBA"), dtype=np.int32)
        heat = resize_map(heatmap, size)
        expected = np.round(colormaps["jet"](heat) * 255).astype(np.int32)
        expected[..., 3] = np.round(np.clip(heat * 1.25, 0, 1) * 255)
        assert np.abs(shown - expected).max() <= 1


def test_a_predictor_holds_numpy_blas_to_one_thread(tiny_predictor):
    """OpenBLAS threads spinning beside the engine's cost a third of its speed."""
    from threadpoolctl import threadpool_info

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)
