"""Constants and the training configuration, kept in one place so that the
values a model was trained with travel with it (see ``bundle.py``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

#: Class order of the model's single output: P(index 1) = P(PNEUMONIA).
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

#: Side of the square model input: Xception's native 299, which raised ROC AUC on
#: shift-dev and the NIH adults more than any other input choice measured
#: (docs/training.md). Images are resized without keeping the aspect ratio, as the
#: training collection was prepared.
IMAGE_SIZE = 299

#: The file names of the plots a run folder and a bundle carry: the one home that
#: ``plots``, training and the About page read (here, so the web app need not import
#: matplotlib to know them).
ROC, PRECISION_RECALL, CONFUSION, RELIABILITY, LEARNING_CURVES = (
    "roc.png", "precision_recall.png", "confusion_matrix.png", "reliability.png",
    "learning_curves.png")
RUN_PLOTS = (LEARNING_CURVES, ROC, PRECISION_RECALL, CONFUSION, RELIABILITY)

#: Environment variable naming a local ImageNet Xception ``.weights.h5`` file.
BACKBONE_WEIGHTS_ENV = "PNEUMO_BACKBONE_WEIGHTS"

#: Environment variable overriding the default model bundle.
MODEL_ENV = "PNEUMO_MODEL"

#: Environment variable overriding where decoded-image caches are written.
CACHE_ENV = "PNEUMO_CACHE_DIR"

PACKAGE_ROOT = Path(__file__).resolve().parent
#: The bundle shipped in the repository (``models/`` at the project root).
DEFAULT_BUNDLE = PACKAGE_ROOT.parent.parent / "models" / "pneumo-xception"


def default_bundle_path() -> Path:
    """The bundle every command uses unless told otherwise."""
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_BUNDLE)


def cache_dir() -> Path:
    """Where decoded training images are cached; never inside the data folder,
    which may be read-only."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pneumo"


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides what ``pneumo train`` produces.

    Written verbatim to ``config.json`` in the run folder and into the model
    card, so a run can be repeated from its own outputs.
    """

    data_dir: str  # the first (or only) labelled training folder
    # More labelled folders, each a source of its own: split by patient on its own,
    # reported on its own, and weighted by ``balance``.
    extra_sources: list[str] = dataclasses.field(default_factory=list)
    # Labelled folders never trained on whose images, with every source's validation
    # part, choose the calibration and the threshold (each set counting equally).
    calibrate_on: list[str] = dataclasses.field(default_factory=list)
    out_dir: str = "runs"
    run_name: str | None = None
    backbone_weights: str | None = None
    image_size: int = IMAGE_SIZE
    normalization: str = "none"  # intensity normalisation, see preprocessing.NORMALIZATIONS
    # The head reads the output of this Xception block (14: the last; 12: the end of the
    # middle flow), see models.truncate. 9: the middle flow's features generalised to
    # shift-dev and the NIH adults far better than block 14's (docs/training.md).
    feature_block: int = 9
    seed: int = 1337
    validation_design: str = "patient"  # "patient" or "block"
    val_fraction: float = 0.2
    batch_size: int = 32
    # "source": every (source, class) cell weighs the same in the loss; "class": every class.
    balance: str = "source"
    label_smoothing: float = 0.0
    # Phase 1: the head alone, on cached features of the frozen backbone.
    head_epochs: int = 40
    head_learning_rate: float = 1e-3
    dropout: float = 0.3
    # Phase 2: fine-tune the top Xception blocks, BatchNorm kept frozen.
    # 0 by default: fine-tuning the top 2 blocks on children and adults made the weighted
    # validation loss worse than the head alone (docs/training.md); --fine-tune-blocks N
    # runs it.
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 4
    fine_tune_learning_rate: float = 2e-5
    patience: int = 2
    augment: bool = True
    # Operating point: Youden's J unless a target sensitivity is given.
    target_sensitivity: float | None = None
    limit_per_class: int | None = None  # for smoke runs only

    @property
    def sources(self) -> list[str]:
        """Every training folder, the first one first."""
        return [self.data_dir, *self.extra_sources]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
