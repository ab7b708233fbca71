"""Would int8 inference be worth it? Validation AUC and speed, fp32 against int8.

The issue allows lower precision only if the validation AUC drops by less than
0.005, off by default, reported either way. This script quantises the cached
fp32 ONNX graph of a bundle with ONNX Runtime's static quantisation (QDQ, int8
weights per channel, uint8 activations calibrated on training X-rays), then
scores the bundle's own validation split with both graphs and times both.

    python benchmarks/lower_precision.py --model models/pneumo-xception \\
        --data ../shared/data/chest_xray/train

It needs the training X-rays (the validation split is rebuilt from the card's
training configuration) and writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def validation_split(bundle: Path, data: Path, card: dict):
    """The bundle's own training and validation samples, as training made them."""
    from pneumo.config import TrainConfig
    from pneumo.train import prepare_split

    fields = dict(card.get("training", {}).get("config", {}))
    config = TrainConfig(**{k: v for k, v in fields.items()
                            if k in TrainConfig.__dataclass_fields__})
    config.data_dir = str(data)
    train, val, _ = prepare_split(config)
    return train, val


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the labelled training folder")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from sklearn.metrics import roc_auc_score

    from pneumo.bundle import MODEL_FILE, read_card, sha256_of
    from pneumo.data import load_images
    from pneumo.engine import ONNX_FILE, OnnxEngine, load_engine, onnx_cache_folder

    bundle = Path(args.model)
    card = read_card(bundle)
    size = int(card["input"]["size"])
    load_engine(bundle, card, "onnxruntime")  # converts once if needed
    fp32_folder = onnx_cache_folder(sha256_of(bundle / MODEL_FILE))
    train, val = validation_split(bundle, Path(args.data), card)
    rng = np.random.default_rng(0)
    picked = [train[i] for i in rng.choice(len(train), args.calibration_images, replace=False)]
    _, calibration = load_images(picked, size, use_cache=False, progress=False)
    val, x_val = load_images(val, size, use_cache=False, progress=False)
    y_val = np.array([s.label for s in val])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": calibration[i:i + 8]}
                                 for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    results = {}
    with tempfile.TemporaryDirectory() as temp:
        int8_folder = Path(temp) / "int8"
        int8_folder.mkdir()
        (int8_folder / "head.json").write_text((fp32_folder / "head.json").read_text())
        started = time.perf_counter()
        quantize_static(str(fp32_folder / ONNX_FILE), str(int8_folder / ONNX_FILE), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        results["quantisation_seconds"] = round(time.perf_counter() - started, 1)
        for name, folder in (("fp32", fp32_folder), ("int8", int8_folder)):
            engine = OnnxEngine(folder)
            logits = np.concatenate([engine(x_val[i:i + 16])[1] for i in range(0, len(x_val), 16)])
            single = []
            for _ in range(args.repeats + 3):
                began = time.perf_counter()
                engine(x_val[:1])
                single.append(time.perf_counter() - began)
            batch = x_val[:8]
            began = time.perf_counter()
            for _ in range(4):
                engine(batch)
            rate = 32 / (time.perf_counter() - began)
            results[name] = {"val_auc": round(float(roc_auc_score(y_val, logits)), 5),
                             "single_ms": round(1000 * statistics.median(single[3:]), 1),
                             "batch8_img_per_s": round(rate, 1), "logits": logits}
    drop = results["fp32"]["val_auc"] - results["int8"]["val_auc"]
    agreement = float(np.corrcoef(results["fp32"].pop("logits"),
                                  results["int8"].pop("logits"))[0, 1])
    results.update(auc_drop=round(drop, 5), logit_correlation=round(agreement, 5),
                   validation_images=len(y_val), onnxruntime=ort.__version__,
                   qualifies=bool(drop < 0.005))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
