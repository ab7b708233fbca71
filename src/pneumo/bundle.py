"""The model bundle: a folder with ``model.keras`` and ``card.json``.

The card is the model's passport (after MONAI bundles and timm's pretrained
configs): input size and preprocessing, class names, the operating threshold
and calibration, the data it saw, validation metrics, library versions and a
checksum. The threshold travels with the weights, never typed at a call site.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import shutil
from pathlib import Path

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"

INTENDED_USE = (
    "A second opinion for clinicians reading frontal (AP/PA) chest radiographs: it flags "
    "images that look like pneumonia. It is not a diagnosis and must not be used alone "
    "to treat or to rule out disease."
)
LIMITATIONS = [
    "Measured only on the populations, views and hospitals of its training sources (the "
    "card lists them); others may behave differently.",
    "Two classes only: NORMAL vs PNEUMONIA (bacterial and viral pooled). Other findings "
    "(effusion, mass, devices, tuberculosis, COVID-19) are outside its scope.",
    "Probabilities are calibrated on the images the card names (validation parts and "
    "calibration sets); a new site should re-check the operating point on its own labelled "
    "images (pneumo calibrate).",
    "The heatmap shows where the evidence for the score lies, not the extent of disease.",
]


class BundleError(RuntimeError):
    """A bundle that is missing, corrupt or incompatible; the message says which."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network takes: ``size`` x ``size`` 8-bit gray, after ``normalization``."""

    size: int
    normalization: str = "none"  # a card without the field asks for none


@dataclasses.dataclass(frozen=True)
class Calibration:
    """p = sigmoid(logit / temperature + bias), fitted on validation."""

    temperature: float
    bias: float = 0.0


@dataclasses.dataclass(frozen=True)
class Band:
    """Calibrated probabilities where validation accuracy was clearly lower."""

    lower: float
    upper: float

    def __contains__(self, probability: float) -> bool:
        return self.lower <= probability <= self.upper


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The typed view of ``card.json``: the fields a loaded model relies on, checked on
    load (``card_problems`` names the bad field). ``raw`` is the whole card, every other
    field included, written back unchanged by ``to_dict``; ``schema_version`` is the
    card's ``format_version``."""

    schema_version: int
    class_names: tuple[str, str]
    input: InputSpec
    threshold: float
    calibration: Calibration
    inconclusive: Band | None
    name: str
    version: str
    raw: dict = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, card, source: str = "the model card") -> ModelCard:
        """Check ``card`` whole (format version first) and type it; BundleError naming
        every bad field otherwise."""
        version = card.get("format_version") if isinstance(card, dict) else None
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{source} has format {version!r}, which this version of pneumo does not "
                f"read (it reads {FORMAT_VERSION}); use the pneumo that wrote it, or "
                "train the model again with this one")
        problems = card_problems(card)
        if problems:
            raise BundleError(f"{source} is invalid: " + "; ".join(problems))
        band = card.get("inconclusive")
        calibration = card["calibration"]
        return cls(
            schema_version=version, class_names=tuple(card["class_names"]),
            input=InputSpec(int(card["input"]["size"]),
                            card["input"].get("normalization", "none")),
            threshold=float(card["threshold"]),
            calibration=Calibration(float(calibration["temperature"]),
                                    float(calibration.get("bias", 0.0))),
            inconclusive=Band(float(band["lower"]), float(band["upper"])) if band else None,
            name=card.get("name", "pneumo-xception"), version=card.get("version", "unknown"),
            raw=card)

    def to_dict(self) -> dict:
        """The card as JSON holds it, every field it was read with kept."""
        return self.raw

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """A ``card.json`` file, read and checked."""
        path = Path(path)
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"the model card {path} is unreadable: {exc}") from None
        return cls.from_dict(card, f"the model card {path}")

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict:
    import keras
    import numpy

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "numpy": numpy.__version__, "backend": keras.backend.backend()}
    try:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return versions


def save_bundle(directory: str | Path, model, card: dict,
                extras: dict[str, Path] | None = None) -> Path:
    """Write ``model``, ``card`` and ``extras`` (bundle-relative name -> source file)
    to a sibling folder, then rename it into place, so a crash never leaves half a bundle."""
    directory = Path(directory)
    staging = _staging(directory)
    model.save(staging / MODEL_FILE)
    files = {MODEL_FILE: sha256_of(staging / MODEL_FILE), **_copy_in(staging, extras or {})}
    card = {**card, "format_version": FORMAT_VERSION, "libraries": library_versions(),
            "files": files}
    card.setdefault("intended_use", INTENDED_USE)
    card.setdefault("limitations", LIMITATIONS)
    return _publish(staging, directory, card)


def _staging(directory: Path) -> Path:
    """An empty sibling folder to build the bundle in, so a crash never leaves half of one."""
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _copy_in(staging: Path, sources: dict[str, Path]) -> dict[str, str]:
    """Copy bundle-relative name -> source file into ``staging``; their checksums."""
    files = {}
    for name, source in sources.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        files[name] = sha256_of(target)
    return files


def _publish(staging: Path, directory: Path, card: dict) -> Path:
    """Write the card, then rename the finished bundle into place."""
    ModelCard.from_dict(card, "the new model card").write(staging / CARD_FILE)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


def check_destination(directory: str | Path) -> None:
    """Refuse to replace a folder that holds something other than a bundle."""
    directory = Path(directory)
    if directory.exists() and not (directory / CARD_FILE).is_file() and any(directory.iterdir()):
        raise BundleError(f"{directory} exists and is not a model bundle: not overwriting it")


def rebundle(source: str | Path, directory: str | Path, card: dict,
             extras: dict[str, Path] | None = None) -> Path:
    """A copy of the bundle at ``source`` with a new ``card`` and ``extras`` added: the
    network and every file its card lists are copied byte for byte (after checking
    their checksums), the checksums are written afresh, and the folder is renamed into
    place, as in ``save_bundle``. ``card`` keeps the source's library versions."""
    source, directory = Path(source), Path(directory)
    old = read_card(source)
    verify_files(source, old)
    if directory.resolve() == source.resolve():
        raise BundleError("the new bundle must go to another folder than the one it is made from")
    check_destination(directory)
    staging = _staging(directory)
    names = [MODEL_FILE] + [name for name in old.get("files", {}) if name != MODEL_FILE]
    sources = {name: source / name for name in names}
    sources.update(extras or {})
    card = {**card, "format_version": FORMAT_VERSION,
            "libraries": old.get("libraries", card.get("libraries")),
            "files": _copy_in(staging, sources)}
    return _publish(staging, directory, card)


def read_card(directory: str | Path) -> dict:
    """The card of a bundle, checked for presence and format, without loading weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"model bundle not found: {directory} (expected a folder with "
                          f"{MODEL_FILE} and {CARD_FILE})")
    card_path = directory / CARD_FILE
    if not card_path.is_file():
        raise BundleError(f"{directory} is not a model bundle: {CARD_FILE} is missing")
    return ModelCard.read(card_path).to_dict()


def card_problems(card) -> list[str]:
    """Everything wrong with the fields a loaded model relies on, as plain phrases; empty
    when the card is usable. Checked whole on load, so that a card missing an inner field
    fails there with one message, not later with a KeyError in a loading thread."""
    if not isinstance(card, dict):
        return ["it is not a JSON object"]
    problems: list[str] = []

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)

    def need(path: str, value, ok: bool, what: str) -> None:
        if value is _MISSING:
            problems.append(f"'{path}' is missing")
        elif not ok:
            problems.append(f"'{path}' must be {what}")

    def get(mapping, key):
        return mapping.get(key, _MISSING) if isinstance(mapping, dict) else _MISSING

    names = get(card, "class_names")
    need("class_names", names, isinstance(names, list) and len(names) == 2
         and all(isinstance(n, str) and n for n in names), "a list of two class names")
    inputs = get(card, "input")
    need("input", inputs, isinstance(inputs, dict), "an object")
    if isinstance(inputs, dict):
        size = get(inputs, "size")
        need("input.size", size, isinstance(size, int) and not isinstance(size, bool)
             and 32 <= size <= 4096, "a whole number of pixels from 32 to 4096")
        from .preprocessing import NORMALIZATIONS

        normalization = inputs.get("normalization", "none")
        need("input.normalization", normalization, normalization in NORMALIZATIONS,
             "one of " + ", ".join(NORMALIZATIONS))
    threshold = get(card, "threshold")
    # a number; one outside [0, 1] is allowed: it makes every image one class
    need("threshold", threshold, number(threshold), "a number")
    calibration = get(card, "calibration")
    need("calibration", calibration, isinstance(calibration, dict), "an object")
    if isinstance(calibration, dict):
        temperature = get(calibration, "temperature")
        need("calibration.temperature", temperature, number(temperature) and temperature > 0,
             "a positive number")
        bias = calibration.get("bias", 0.0)
        need("calibration.bias", bias, number(bias), "a number")
    for key in ("name", "version"):
        if key in card:
            need(key, card[key], isinstance(card[key], str) and card[key] != "", "text")
    band = card.get("inconclusive")
    if band is not None:
        lower, upper = get(band, "lower"), get(band, "upper")
        need("inconclusive.lower", lower, number(lower), "a number")
        need("inconclusive.upper", upper, number(upper), "a number")
        if number(lower) and number(upper) and not 0 <= lower <= upper <= 1:
            problems.append("'inconclusive' must have 0 <= lower <= upper <= 1")
    files = card.get("files", {})
    need("files", files, isinstance(files, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
        "an object of file names and checksums")
    libraries = card.get("libraries", {})
    need("libraries", libraries, isinstance(libraries, dict), "an object")
    return problems


_MISSING = object()


def verify_files(directory: str | Path, card: dict) -> dict[str, str]:
    """Check every file the card lists against its checksum; returns name -> SHA-256,
    the model file's included (hashed here if the card does not list it)."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise BundleError(f"{directory} lacks {MODEL_FILE}")
    digests = {}
    for name, expected in card.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{directory} lacks {name}, which its card lists")
        digests[name] = sha256_of(path)
        if digests[name] != expected:
            raise BundleError(f"{path} does not match the checksum in its card: the "
                              "file is corrupt or was replaced")
    if MODEL_FILE not in digests:
        digests[MODEL_FILE] = sha256_of(directory / MODEL_FILE)
    return digests


def load_bundle(directory: str | Path, *, verify: bool = True):
    """``(keras model, card)`` from a bundle, checked against its checksum."""
    import keras

    directory = Path(directory)
    card = read_card(directory)
    model_path = directory / MODEL_FILE
    if verify:
        verify_files(directory, card)
    elif not model_path.is_file():
        raise BundleError(f"{directory} lacks {MODEL_FILE}")
    trained_major = str(card.get("libraries", {}).get("keras", "3")).split(".")[0]
    if trained_major != keras.__version__.split(".")[0]:
        raise BundleError(f"the bundle was saved with Keras {card['libraries']['keras']}, "
                          f"this is Keras {keras.__version__}")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:
        raise BundleError(f"could not load {model_path}: {type(exc).__name__}: {exc}") from None
    return model, card
