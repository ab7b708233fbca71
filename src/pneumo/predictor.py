"""Load a bundle once per process; predict probabilities and heatmaps together.

One forward pass returns both the last convolutional features and the logit,
so the heatmap is free. The calibrated probability and the label come from the
card's calibration and threshold; nothing here is a typed constant.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from .bundle import ModelCard, read_card
from .calibration import calibrate
from .config import CLASS_NAMES, default_bundle_path
from .explain import class_activation_maps, evidence_map
from .gate import GATE_FILE, Assessment, FeatureGate, image_checks
from .imaging import DecodedImage, load_image
from .preprocessing import decode_side, to_model_input


@dataclasses.dataclass
class Prediction:
    probability: float  # calibrated P(PNEUMONIA)
    label: str  # "NORMAL" or "PNEUMONIA", by the bundle's threshold
    threshold: float
    logit: float
    heatmap: np.ndarray | None = None  # float32 (h, w) in [0, 1], evidence for ``label``
    feature_score: float | None = None  # input gate's distance from training X-rays
    inconclusive: bool = False  # in the card's band of clearly lower accuracy

    def to_dict(self) -> dict:
        return {"label": self.label, "probability": round(self.probability, 6),
                "threshold": round(self.threshold, 6), "inconclusive": self.inconclusive}


class Predictor:
    """A loaded bundle. Thread-safe: calls into the network are serialised.

    ``engine`` runs the network (``engine.py``: ONNX Runtime or TensorFlow); a
    Keras model given instead is run with TensorFlow.
    """

    def __init__(self, engine, card: dict | ModelCard, bundle_path: Path | None = None):
        typed = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
        self.typed_card = typed
        self.card = typed.to_dict()  # the whole card, for the API and the pages
        self.bundle_path = bundle_path
        self.image_size = typed.input.size
        self.normalization = typed.input.normalization
        self.threshold = typed.threshold
        self.temperature = typed.calibration.temperature
        self.bias = typed.calibration.bias
        # probabilities where validation accuracy was clearly lower; None: no band
        self.inconclusive_band = typed.inconclusive
        from .engine import TensorFlowEngine, hold_blas_to_one_thread

        hold_blas_to_one_thread()
        if not hasattr(engine, "logit_weights"):
            engine = TensorFlowEngine(engine)
        self.engine = engine
        self._logit_weights = engine.logit_weights
        self._lock = threading.Lock()
        gate_file = Path(bundle_path) / GATE_FILE if bundle_path else None
        self.gate = FeatureGate.load(gate_file) if gate_file and gate_file.is_file() else None

    @classmethod
    def from_bundle(cls, path: str | Path | None = None, engine: str | None = None) -> Predictor:
        """Load the bundle at ``path`` (default: the shipped one) with ``engine``
        ("auto", "onnxruntime" or "tensorflow"; default ``$PNEUMO_ENGINE`` or auto)."""
        from .engine import load_engine

        path = Path(path) if path else default_bundle_path()
        card = read_card(path)
        return cls(load_engine(path, card, engine), card, path)

    @property
    def name(self) -> str:
        return self.typed_card.name

    @property
    def version(self) -> str:
        return self.typed_card.version

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(PNEUMONIA) for raw logits, with the card's calibration."""
        return calibrate(logits, self.temperature, self.bias)

    def decode(self, source: str | Path | bytes, at_least: int | None = None) -> DecodedImage:
        """A file or upload decoded for this model: large JPEGs at a reduced scale, but
        never below ``at_least`` pixels a side (e.g. for showing the image back)."""
        return load_image(source, reduce_to=max(decode_side(self.image_size), at_least or 0))

    def prepare(self, image: DecodedImage | np.ndarray | str | Path | bytes) -> np.ndarray:
        """Any accepted input -> the model's uint8 ``(S, S, 1)`` array."""
        if isinstance(image, (str, Path, bytes, bytearray)):
            image = self.decode(image)
        pixels = image.pixels if isinstance(image, DecodedImage) else image
        return to_model_input(pixels, self.image_size, self.normalization)

    def check_input(self, image: DecodedImage, model_input: np.ndarray | None = None) -> Assessment:
        """The input gate's image checks, before the network. ``model_input`` (from
        ``prepare``) saves a resize when it holds the plain resized pixels the checks'
        cut-offs were set on, i.e. when the card asks for no intensity normalisation."""
        plain = model_input if self.normalization == "none" else None
        return image_checks(image, plain)

    def predict_batch(self, batch: np.ndarray, heatmaps: bool = True) -> list[Prediction]:
        """Predictions for prepared inputs ``(N, S, S, 1)`` uint8."""
        if len(batch) == 0:
            return []
        with self._lock:
            features, logits = self.engine(np.ascontiguousarray(batch, dtype=np.uint8))
        probabilities = self.calibrate(logits)
        cams = class_activation_maps(features, self._logit_weights) if heatmaps else None
        scores = self.gate.score(features.mean(axis=(1, 2))) if self.gate else [None] * len(logits)
        results = []
        for i, (logit, probability) in enumerate(zip(logits, probabilities)):
            positive = bool(probability >= self.threshold)
            results.append(Prediction(
                probability=float(probability), label=CLASS_NAMES[int(positive)],
                threshold=self.threshold, logit=float(logit),
                heatmap=evidence_map(cams[i], positive) if heatmaps else None,
                feature_score=None if scores[i] is None else float(scores[i]),
                inconclusive=self.inconclusive_band is not None
                and float(probability) in self.inconclusive_band))
        return results

    def predict(self, image, heatmap: bool = True) -> Prediction:
        """One image (decoded, a path or raw bytes) -> its prediction."""
        return self.predict_batch(self.prepare(image)[None], heatmaps=heatmap)[0]

