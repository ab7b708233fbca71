"""Dataset discovery, the patient-grouped split, decoding with a cache, and
the ``tf.data`` input pipeline.

File names are read for one purpose only: the patient id that keeps one
child's images on one side of the split. Nothing else may learn from them.
A data folder may carry a ``manifest.csv`` (``file,label,patient_id`` and
optionally ``age``, ``view``): the patient id then comes from it, and the age
and view are kept for reporting by subgroup, never shown to the network.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .config import CLASS_NAMES, cache_dir
from .imaging import ImageError, load_image
from .preprocessing import PREPROCESSING_VERSION, decode_side, to_model_input

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
MANIFEST_FILE = "manifest.csv"
#: Ages below this count as children in reports by age group.
ADULT_AGE = 18
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # person1000_bacteria_2931.jpeg
    re.compile(r"^(NORMAL2-IM-\d+)-"),  # NORMAL2-IM-1427-0001.jpeg
    re.compile(r"^(IM-\d+)-"),  # IM-0115-0001.jpeg
)


class DataError(ValueError):
    """A dataset that cannot be trained or evaluated on; the message says why."""


@dataclasses.dataclass
class Sample:
    path: Path
    label: int  # index into CLASS_NAMES
    group: str  # patient id; duplicates are merged into one group
    source: str = ""  # the data folder it came from (see ``source_name``)
    view: str | None = None  # "PA", "AP"... from a manifest, for reports only
    age: int | None = None  # years, from a manifest, for reports only


def source_name(data_dir: str | Path) -> str:
    """A short name for a data folder: its own name, or its parent's when it is a split
    folder (``chest_xray/train`` -> ``chest_xray``)."""
    path = Path(data_dir).resolve()
    if path.name.lower() in ("train", "val", "test") and path.parent.name:
        return path.parent.name
    return path.name


def read_manifest(root: Path) -> dict[Path, dict] | None:
    """``manifest.csv`` rows by resolved file path, or None when the folder has none."""
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        return None
    rows = {}
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "patient_id"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{manifest} lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            rows[(root / row["file"]).resolve()] = row
    return rows


def _apply_manifest(samples: list[Sample], manifest: dict[Path, dict] | None,
                    root: Path) -> list[Sample]:
    if manifest is None:
        return samples
    kept = []
    for sample in samples:
        row = manifest.get(sample.path.resolve())
        if row is None:
            raise DataError(f"{sample.path.relative_to(root)} is not listed in "
                            f"{root / MANIFEST_FILE}: every image needs its patient id there")
        label = (row.get("label") or "").upper()
        if label and label != CLASS_NAMES[sample.label]:
            raise DataError(f"{sample.path.relative_to(root)} lies in "
                            f"{CLASS_NAMES[sample.label]}/ but the manifest says {label}")
        age = (row.get("age") or "").strip()
        kept.append(dataclasses.replace(
            sample, group=f"patient:{row['patient_id']}", view=(row.get("view") or None),
            age=int(float(age)) if age else None))
    return kept


def patient_id(path: Path) -> str:
    """The patient a file belongs to, from its name; unknown names are their own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(path.name)
        if match:
            return match.group(1)
    return f"file:{path.stem}"


def _find_child(folder: Path, name: str) -> Path | None:
    for child in folder.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def find_class_folders(root: Path) -> dict[str, list[Path]]:
    """Folders per split (``train``/``val``/``test`` or ``all``) holding the two classes.

    Accepts ``root/{NORMAL,PNEUMONIA}`` and the downloaded layout
    ``root/[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}``, names case-insensitive.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    nested = _find_child(root, "chest_xray")
    if nested is not None and _find_child(root, "train") is None:
        root = nested
    splits = {}
    for split in ("train", "val", "test"):
        folder = _find_child(root, split)
        if folder is not None:
            splits[split] = folder
    if not splits:
        splits["all"] = root
    found: dict[str, list[Path]] = {}
    for split, folder in splits.items():
        classes = [_find_child(folder, name) for name in CLASS_NAMES]
        present = [c for c in classes if c is not None]
        if present:
            found[split] = classes
    if not found:
        raise DataError(f"no NORMAL/ or PNEUMONIA/ subfolder under {root}; expected "
                        "DATA/{NORMAL,PNEUMONIA} or DATA/{train,val,test}/{NORMAL,PNEUMONIA}")
    return found


def list_samples(class_folders: list[Path | None]) -> tuple[list[Sample], int]:
    """Image files under the class folders (recursive), and how many files were skipped."""
    samples, skipped = [], 0
    for label, folder in enumerate(class_folders):
        if folder is None:
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            if any(part.startswith(".") for part in path.relative_to(folder).parts) or \
                    path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            samples.append(Sample(path=path, label=label, group=patient_id(path)))
    return samples, skipped


def discover(data_dir: str | Path, *, for_training: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Samples for training and, when the layout brings a trustworthy one, validation.

    For training, ``test/`` is never read, and a ``val/`` of fewer than 100 images
    (the collection's own has 16) is merged into training rather than trusted.
    For evaluation, every split found is used.
    """
    found = find_class_folders(Path(data_dir))
    root, name = Path(data_dir), source_name(data_dir)
    manifest = read_manifest(root)
    train, val, skipped = [], [], 0
    for split, folders in found.items():
        if for_training and split == "test":
            log.info("ignoring %s: the test split is never used for training", folders)
            continue
        samples, n_skipped = list_samples(folders)
        samples = [dataclasses.replace(s, source=name)
                   for s in _apply_manifest(samples, manifest, root)]
        skipped += n_skipped
        (val if split == "val" else train).extend(samples)
    if for_training and 0 < len(val) < 100:
        log.warning("the layout's val/ has only %d images: merged into training and "
                    "validation is drawn by patient instead", len(val))
        train, val = train + val, []
    if skipped:
        log.warning("skipped %d hidden or non-image files", skipped)
    everything = train + val
    if not everything:
        raise DataError(f"no images found under {data_dir}")
    labels = {s.label for s in everything}
    if len(labels) < 2:
        only = CLASS_NAMES[labels.pop()]
        if for_training:
            raise DataError(f"only {only} images were found under {data_dir}; "
                            "training needs both NORMAL and PNEUMONIA")
    return train, val


def file_digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def merge_duplicates(samples: list[Sample]) -> tuple[list[Sample], int]:
    """Put byte-identical files in one group so they land on one side of a split.

    Identical files carrying different labels are dropped: they cannot be trusted.
    Returns the kept samples and how many duplicates were found.
    """
    digests = [file_digest(s.path) for s in samples]
    by_digest: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(index)
    parent = {s.group: s.group for s in samples}

    def find(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    conflicting, n_duplicates = set(), 0
    for indices in by_digest.values():
        if len(indices) < 2:
            continue
        n_duplicates += len(indices) - 1
        if len({samples[i].label for i in indices}) > 1:
            conflicting.update(indices)
            continue
        root = find(samples[indices[0]].group)
        for i in indices[1:]:
            parent[find(samples[i].group)] = root
    if conflicting:
        log.warning("dropped %d identical files that carry different labels", len(conflicting))
    kept = [dataclasses.replace(s, group=find(s.group))
            for i, s in enumerate(samples) if i not in conflicting]
    return kept, n_duplicates


def split_by_patient(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified train/validation indices with every patient on one side only."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < val_fraction < 1.0:
        raise DataError("the validation fraction must be between 0 and 1")
    n_splits = max(2, round(1 / val_fraction))
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples])
    for label in (0, 1):
        n_groups = len(set(groups[labels == label]))
        if n_groups < n_splits:
            raise DataError(f"only {n_groups} {CLASS_NAMES[label]} patients: a validation split of "
                            f"{val_fraction:g} needs at least {n_splits} per class")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def split_by_block(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A harder validation: hold out whole acquisition blocks instead of random patients.

    Patient ids are issued in acquisition order within each naming family
    (``IM-``, ``NORMAL2-IM-``, ``person``), so the lowest-numbered
    ``val_fraction`` of each family is a different stretch of time, closer to
    how a new site or a later test set differs. Unknown names go by patient.
    """
    def family_and_number(group: str) -> tuple[str, int] | None:
        match = re.match(r"^(person|NORMAL2-IM-|IM-)(\d+)$", group)
        return (match.group(1), int(match.group(2))) if match else None

    val_groups: set[str] = set()
    families: dict[tuple[str, int], list[int]] = {}
    others: list[int] = []
    for index, sample in enumerate(samples):
        key = family_and_number(sample.group)
        if key is None:
            others.append(index)
        else:
            families.setdefault((key[0], sample.label), []).append(index)
    for indices in families.values():
        ordered = sorted(indices, key=lambda i: family_and_number(samples[i].group)[1])
        quota, taken = round(len(ordered) * val_fraction), 0
        for i in ordered:
            if taken >= quota and samples[i].group not in val_groups:
                break
            val_groups.add(samples[i].group)
            taken += 1
    if others:
        sub = [samples[i] for i in others]
        _, sub_val = split_by_patient(sub, val_fraction, seed) if len({s.label for s in sub}) > 1 \
            else (None, [])
        val_groups.update(sub[i].group for i in sub_val)
    val_idx = [i for i, s in enumerate(samples) if s.group in val_groups]
    train_idx = [i for i, s in enumerate(samples) if s.group not in val_groups]
    return train_idx, val_idx


#: A subgroup gets its own report row only with at least this many images of each class.
MIN_SUBGROUP_PER_CLASS = 10


def subgroups(name: str, samples: list[Sample]) -> dict[str, list[Sample]]:
    """``{row name: samples}`` by view and by age group, for sets whose manifest gives
    them; only groups with ``MIN_SUBGROUP_PER_CLASS`` images of each class."""
    groups: dict[str, list[Sample]] = {}
    for view in sorted({s.view for s in samples if s.view}):
        groups[f"{name}, {view} view"] = [s for s in samples if s.view == view]
    if any(s.age is not None for s in samples):
        groups[f"{name}, under {ADULT_AGE}"] = [s for s in samples
                                                if s.age is not None and s.age < ADULT_AGE]
        groups[f"{name}, {ADULT_AGE} and over"] = [s for s in samples
                                                    if s.age is not None and s.age >= ADULT_AGE]
    return {group: members for group, members in groups.items()
            if min(sum(s.label == c for s in members) for c in (0, 1)) >= MIN_SUBGROUP_PER_CLASS}


def limit_per_class(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A reproducible subset of at most ``limit`` images per class (smoke runs)."""
    if not limit:
        return samples
    rng = np.random.default_rng(seed)
    kept = []
    for label in range(len(CLASS_NAMES)):
        members = [s for s in samples if s.label == label]
        order = rng.permutation(len(members))[:limit]
        kept.extend(members[i] for i in sorted(order))
    return kept


def decode_for_model(path: Path, size: int, normalization: str = "none") -> np.ndarray:
    """One file -> the model's uint8 ``(size, size, 1)`` input, via the shared path."""
    return to_model_input(load_image(path, reduce_to=decode_side(size)).pixels, size,
                          normalization)


def load_images(samples: list[Sample], size: int, *, normalization: str = "none",
                use_cache: bool = True, progress: bool = True,
                desc: str = "decoding") -> tuple[list[Sample], np.ndarray]:
    """Decode every sample in parallel threads; unreadable files are skipped with a warning.

    The decoded array is cached (keyed by paths, sizes, mtimes, input size and
    preprocessing version) so that the next run on the same data starts at once.
    """
    from tqdm.auto import tqdm

    key = hashlib.sha256(repr((PREPROCESSING_VERSION, size, normalization, [
        (str(s.path.resolve()), s.path.stat().st_size, s.path.stat().st_mtime_ns) for s in samples
    ])).encode()).hexdigest()[:24]
    cache_file = cache_dir() / f"images-{key}.npz"
    if use_cache and cache_file.exists():
        try:
            with np.load(cache_file) as cached:
                keep = cached["keep"]
                images = cached["images"]
            return [s for s, k in zip(samples, keep) if k], images
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable cache %s", cache_file)

    images = np.zeros((len(samples), size, size, 1), dtype=np.uint8)
    keep = np.ones(len(samples), dtype=bool)
    failures: Counter = Counter()

    def work(index: int) -> None:
        try:
            images[index] = decode_for_model(samples[index].path, size, normalization)
        except ImageError as exc:
            keep[index] = False
            failures[str(exc).split(":")[0]] += 1

    with ThreadPoolExecutor() as pool:
        list(tqdm(pool.map(work, range(len(samples))), total=len(samples), desc=desc,
                  unit="img", disable=not progress, leave=False))
    if not keep.all():
        log.warning("skipped %d unreadable images (%s)", int((~keep).sum()),
                    ", ".join(f"{n}x {why}" for why, n in failures.most_common(3)))
    images = images[keep]
    if not len(images):
        raise DataError("no readable image was found")
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, keep=keep)
            tmp.replace(cache_file)
        except OSError as exc:
            log.warning("could not write the image cache (%s); continuing without it", exc)
    return [s for s, k in zip(samples, keep) if k], images


def make_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 shuffle: bool, seed: int, sample_weights: np.ndarray | None = None):
    """A ``tf.data`` pipeline over decoded images: shuffle, batch, prefetch.

    Decoded images are held in memory (5,216 images at 224x224 are 260 MB), so
    decoding is done once per dataset, not once per epoch. Augmentation lives in
    the training model (see ``models.augmentation``) and runs inside the graph.
    """
    import tensorflow as tf

    tensors = (images, labels.astype("float32").reshape(-1, 1))
    if sample_weights is not None:
        tensors = tensors + (sample_weights.astype("float32"),)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
