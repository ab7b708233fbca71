"""The network: Xception backbone, a class-activation-friendly head, and the
helpers that freeze, unfreeze and re-wire it.

The head is global average pooling -> dropout -> one logit. With that head the
class activation map (features . logit weights) is *exactly* the logit's
spatial decomposition, so the heatmap costs no second pass (see ``explain.py``).

The backbone may end early, at the output of an earlier block than the last
(``feature_block``): the middle flow's features generalise to other hospitals
better than the exit flow's, which are the most specific to ImageNet's objects
(docs/training.md, "Which depth").
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from .config import BACKBONE_WEIGHTS_ENV, IMAGE_SIZE
from .preprocessing import input_layers

log = logging.getLogger(__name__)

BACKBONE_NAME = "xception"
#: Xception has 14 blocks: 1-4 the entry flow, 5-12 the middle flow, 13-14 the exit flow.
#: Blocks 2-13 end in a residual addition; their outputs are where a backbone may end.
N_BLOCKS = 14
FIRST_FEATURE_BLOCK = 2


class BackboneWeightsError(RuntimeError):
    """The ImageNet weights could neither be loaded from a file nor downloaded."""


def resolve_backbone_weights(path: str | None) -> str:
    """``"random"``, a local ``.weights.h5`` path, or ``"imagenet"`` (download).

    An explicit path wins, then ``$PNEUMO_BACKBONE_WEIGHTS``; otherwise Keras'
    own download is used, which needs internet access.
    """
    path = path or os.environ.get(BACKBONE_WEIGHTS_ENV)
    if path in ("random", "imagenet"):
        return path
    if path:
        if not Path(path).is_file():
            raise BackboneWeightsError(f"backbone weights file not found: {path}")
        return str(path)
    return "imagenet"


def build_backbone(image_size: int, weights: str | None, feature_block: int = N_BLOCKS):
    """ImageNet Xception without its top, from a local file or Keras' download, ending at
    the output of block ``feature_block``."""
    return truncate(_full_backbone(image_size, weights), feature_block)


def truncate(backbone, feature_block: int):
    """``backbone`` up to the output of block ``feature_block`` (the same layers, weights
    shared): block 14's is the backbone's own output, blocks 2-13's their residual sums."""
    import keras

    if not FIRST_FEATURE_BLOCK <= feature_block <= N_BLOCKS:
        raise ValueError(f"feature block {feature_block}: expected "
                         f"{FIRST_FEATURE_BLOCK} to {N_BLOCKS}")
    if feature_block == N_BLOCKS:
        return backbone
    # Keras numbers the names of Add layers per process ("add_7"), so the residual sums
    # are found by their order, which is the blocks' order
    sums = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Add)]
    return keras.Model(backbone.input, sums[feature_block - FIRST_FEATURE_BLOCK].output,
                       name=BACKBONE_NAME)


def _full_backbone(image_size: int, weights: str | None):
    import keras

    source = resolve_backbone_weights(weights)
    shape = (image_size, image_size, 3)
    if source in ("random", "imagenet"):
        try:
            return keras.applications.Xception(include_top=False, input_shape=shape,
                                               weights=None if source == "random" else "imagenet",
                                               name=BACKBONE_NAME)
        except Exception as exc:  # the download raises URL/OS errors of many kinds
            raise BackboneWeightsError(
                "could not download the ImageNet Xception weights "
                f"({type(exc).__name__}). Offline, pass --backbone-weights PATH or set "
                f"{BACKBONE_WEIGHTS_ENV} to a local xception_imagenet_notop.weights.h5"
            ) from None
    base = keras.applications.Xception(include_top=False, input_shape=shape, weights=None,
                                       name=BACKBONE_NAME)
    try:
        base.load_weights(source)
    except Exception as exc:
        raise BackboneWeightsError(f"could not load backbone weights from {source}: {exc}") from None
    return base


def build_model(image_size: int = IMAGE_SIZE, backbone_weights: str | None = None,
                dropout: float = 0.3, feature_block: int = N_BLOCKS):
    """The inference model: uint8 grayscale ``(S, S, 1)`` -> one logit for PNEUMONIA,
    from the features at the output of Xception's block ``feature_block``.

    The backbone is called with ``training=False`` so its BatchNormalization
    layers stay in inference mode, even while its top blocks are fine-tuned.
    """
    import keras

    backbone = build_backbone(image_size, backbone_weights, feature_block)
    backbone.trainable = False
    pixels = keras.Input((image_size, image_size, 1), dtype="uint8", name="pixels")
    features = backbone(input_layers(pixels), training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    dropped = keras.layers.Dropout(dropout, name="dropout")(pooled)
    logit = keras.layers.Dense(1, name="logit")(dropped)
    return keras.Model(pixels, logit, name="pneumo_xception")


def augmentation(seed: int):
    """Augmentations that keep a chest X-ray plausible.

    Small rotations, shifts and zoom mimic patient positioning; brightness and
    contrast mimic exposure. No flips: the heart sits on the left, and a
    mirrored chest is not a radiograph any scanner produces.
    """
    import keras

    return keras.Sequential([
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),  # about +-10 degrees
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomContrast(0.15, seed=seed + 4),
    ], name="augmentation")


def training_model(model, seed: int):
    """``model`` behind the augmentation layers; they are active only in ``fit``."""
    import keras

    pixels = keras.Input(model.input.shape[1:], dtype="uint8", name="pixels")
    x = keras.ops.cast(pixels, "float32")
    x = augmentation(seed)(x)
    x = keras.ops.cast(keras.ops.clip(keras.ops.round(x), 0, 255), "uint8")
    return keras.Model(pixels, model(x), name="pneumo_training")


def backbone_of(model):
    return model.get_layer(BACKBONE_NAME)


def feature_block_of(model) -> int:
    """The last Xception block in ``model``'s backbone (14 unless it ends early)."""
    return max(int(match.group(1)) for layer in backbone_of(model).layers
               if (match := re.match(r"block(\d+)_", layer.name)))


def set_trainable_blocks(model, n_blocks: int) -> int:
    """Unfreeze the top ``n_blocks`` blocks of the backbone (their residual convs too).

    BatchNormalization layers stay frozen. Returns the number of trainable
    backbone weights.
    """
    import keras

    backbone = backbone_of(model)
    backbone.trainable = n_blocks > 0
    if n_blocks <= 0:
        return 0
    first_block = feature_block_of(model) - n_blocks + 1
    start = 0
    for index, layer in enumerate(backbone.layers):
        match = re.match(r"block(\d+)_", layer.name)
        if match and int(match.group(1)) < first_block:
            start = index + 1
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(math.prod(w.shape) for w in backbone.trainable_weights)


def with_features(model):
    """The same weights, re-wired to return ``(last conv features, logit)`` in one pass."""
    import keras

    pixels = keras.Input(model.input.shape[1:], dtype="uint8", name="pixels")
    x = model.get_layer("scale")(pixels)
    x = model.get_layer("to_rgb")([x, x, x])
    features = backbone_of(model)(x, training=False)
    logit = model.get_layer("logit")(model.get_layer("pool")(features))
    return keras.Model(pixels, [features, logit], name="pneumo_xception_features")


def head_only(model):
    """A model from pooled features to the logit sharing ``model``'s head layers.

    Phase 1 trains the head on cached backbone features; sharing the layers
    means the trained weights are already in place in the full model.
    """
    import keras

    width = backbone_of(model).output.shape[-1]
    pooled = keras.Input((width,), name="pooled")
    logit = model.get_layer("logit")(model.get_layer("dropout")(pooled))
    return keras.Model(pooled, logit, name="pneumo_head")
