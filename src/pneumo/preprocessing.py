"""The one preprocessing path shared by training and serving.

Outside the network: decoded grayscale -> resized uint8 ``(S, S, 1)`` -> the
card's intensity normalisation (none, or CLAHE).
Inside the network (``input_layers``): uint8 -> [-1, 1] -> three channels, the
scaling the ImageNet Xception weights expect. Because the scaling lives in the
saved model, no caller can re-type it differently.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Bumped whenever decoding for the model or ``to_model_input`` changes, so caches are
#: rebuilt. 2: JPEGs of at least 4S a side are decoded at a reduced DCT scale (none of
#: the training collection's 224-pixel X-rays is; their inputs are those of version 1).
PREPROCESSING_VERSION = 2
PREPROCESSING_DESCRIPTION = (
    "decode (JPEGs of 4S or more a side at 1/2-1/8 DCT scale, never below 2S) -> "
    "grayscale uint8 -> bilinear (antialiased) resize to SxS without keeping the aspect "
    "ratio, as the training collection was prepared -> in-model scale to [-1, 1] "
    "(Xception convention) -> gray replicated to 3 channels"
)


def decode_side(size: int) -> int:
    """The fewest pixels a side an image is decoded to for a ``size`` model input
    (``load_image(..., reduce_to=)``): twice the input, so the antialiased resize still
    does the last step. On 150 validation X-rays enlarged to 900-2000 pixels as JPEGs,
    the shipped model's probabilities moved by 0.0074 on average from their originals'
    with this and with a full decode alike (0.0102 when decoding to ``size`` itself)."""
    return 2 * int(size)


#: Intensity normalisations a card may name (``input.normalization``). Applied to the
#: resized image, so a 224-pixel training JPEG and a 3000-pixel upload are equalised at
#: the same scale. "clahe": contrast-limited adaptive histogram equalisation (OpenCV,
#: clip limit 2, 8x8 tiles), which evens out exposure and detector differences between
#: hospitals; "equalize": global histogram equalisation.
NORMALIZATIONS = ("none", "clahe", "equalize")


def normalize_intensity(gray: np.ndarray, normalization: str) -> np.ndarray:
    """``gray`` (2-D uint8) with ``normalization`` applied; a new array unless "none"."""
    if normalization == "none":
        return gray
    import cv2

    if normalization == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    if normalization == "equalize":
        return cv2.equalizeHist(gray)
    raise ValueError(f"unknown intensity normalisation {normalization!r}; "
                     f"expected one of {', '.join(NORMALIZATIONS)}")


def to_model_input(gray: np.ndarray, size: int, normalization: str = "none") -> np.ndarray:
    """A 2-D uint8 grayscale image -> the model's ``(size, size, 1)`` input: resized,
    then normalised as the card says."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grayscale array, got {gray.dtype} {gray.shape}")
    if gray.shape != (size, size):
        gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))
    gray = normalize_intensity(np.ascontiguousarray(gray), normalization)
    return gray[:, :, None]


def input_layers(pixels):
    """Keras layers turning the uint8 input tensor into what Xception expects."""
    import keras

    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(pixels)
    return keras.layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])
