"""The screening flow, written once for the API, ``pneumo predict`` and ``evaluate``.

decode -> prepare -> image checks -> refuse? -> network -> input gate -> label
and inconclusive band -> refuse?

The network is not called here: the server merges requests into micro-batches
(``web/inference.py``) and the CLI batches files (``predict_files.py``), so each
caller runs it its own way between the two steps:

- ``admit``, before the network: an ``Admitted`` input, or a ``Refusal`` with the
  reason (unreadable file, or image checks that refuse it, at no inference cost);
- ``conclude``, after it: a ``Screened`` result (label, probability, band and the
  gate's verdict), or a ``Refusal`` when the features lie too far from the
  training X-rays.

The gate's policy (what is refused, what is only warned about) lives in
``gate.py``; which steps run in which order lives here.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from .gate import Assessment, image_checks
from .imaging import DecodedImage, ImageError
from .predictor import Prediction, Predictor

#: Said with every screened result: in the API, on the page and in the PDF report.
DISCLAIMER = ("A second opinion, not a diagnosis: a clinician must read the image and decide. "
              "The heatmap shows where the evidence lies, not the extent of disease.")


@dataclasses.dataclass
class Admitted:
    """An input the image checks let through: what the network takes, and the checks
    its verdict after the network starts from."""

    decoded: DecodedImage
    model_input: np.ndarray  # uint8 (S, S, 1), from ``Predictor.prepare``
    checks: Assessment


@dataclasses.dataclass
class Refusal:
    """Why an input gets no label. ``error``: the file could not be read (an
    ``ImageError`` carries its status and code); otherwise ``assessment`` says why the
    input gate refused it."""

    reason: str
    assessment: Assessment | None = None
    error: Exception | None = None


@dataclasses.dataclass
class Screened:
    """A prediction with the input gate's verdict (status ``ok`` or ``warning``)."""

    prediction: Prediction
    assessment: Assessment

    @property
    def status(self) -> str:
        return self.assessment.summary()


def admit(predictor: Predictor, source: str | Path | bytes | DecodedImage,
          at_least: int | None = None) -> Admitted | Refusal:
    """Decode and prepare ``source`` and run the image checks; never raises for a bad
    file. ``at_least``: decode at no fewer pixels a side (to show the image back)."""
    try:
        decoded = source if isinstance(source, DecodedImage) \
            else predictor.decode(source, at_least)
    except ImageError as exc:
        return Refusal(str(exc), error=exc)
    except OSError as exc:
        return Refusal(f"cannot read file: {exc}", error=exc)
    model_input = predictor.prepare(decoded)
    checks = predictor.check_input(decoded, model_input)
    if checks.status == "rejected":
        return Refusal(checks.summary(), assessment=checks)
    return Admitted(decoded, model_input, checks)


def judge(predictor: Predictor, checks: Assessment, prediction: Prediction) -> Assessment:
    """The image checks, copied, with the feature gate's verdict on ``prediction``."""
    result = copy.deepcopy(checks)
    if prediction.feature_score is not None and predictor.gate is not None:
        predictor.gate.judge(prediction.feature_score, result)
    return result


def conclude(predictor: Predictor, checks: Assessment,
             prediction: Prediction) -> Screened | Refusal:
    """After the network: the screened result, or a refusal by the feature gate."""
    assessment = judge(predictor, checks, prediction)
    if assessment.status == "rejected":
        return Refusal(assessment.summary(), assessment=assessment)
    return Screened(prediction, assessment)


def screen(predictor: Predictor, image: str | Path | bytes | DecodedImage,
           heatmap: bool = True) -> Screened | Refusal:
    """One image through the whole flow, the network run directly: for scripts and
    tests; the server and the CLI batch the network call themselves."""
    admitted = admit(predictor, image)
    if isinstance(admitted, Refusal):
        return admitted
    prediction = predictor.predict_batch(admitted.model_input[None], heatmaps=heatmap)[0]
    return conclude(predictor, admitted.checks, prediction)


def assess(predictor: Predictor, image: DecodedImage,
           prediction: Prediction | None = None) -> Assessment:
    """The input gate's whole verdict on ``image``: its image checks, then, given its
    prediction, the distance of its features from the training X-rays."""
    checks = image_checks(image)
    return checks if prediction is None else judge(predictor, checks, prediction)
