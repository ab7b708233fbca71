"""The one preprocessing path shared by training and serving.

Outside the network: decoded grayscale -> resized uint8 ``(S, S, 1)``.
Inside the network (``input_layers``): uint8 -> [-1, 1] -> three channels, the
scaling the ImageNet Xception weights expect. Because the scaling lives in the
saved model, no caller can re-type it differently.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Bumped whenever ``to_model_input`` changes, so caches are rebuilt.
PREPROCESSING_VERSION = 1
PREPROCESSING_DESCRIPTION = (
    "grayscale uint8 -> bilinear (antialiased) resize to SxS without keeping the aspect "
    "ratio, as the training collection was prepared -> in-model scale to [-1, 1] "
    "(Xception convention) -> gray replicated to 3 channels"
)


def to_model_input(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 grayscale image to the model's ``(size, size, 1)`` input."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grayscale array, got {gray.dtype} {gray.shape}")
    if gray.shape != (size, size):
        gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))
    return gray[:, :, None]


def input_layers(pixels):
    """Keras layers turning the uint8 input tensor into what Xception expects."""
    import keras

    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(pixels)
    return keras.layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])
