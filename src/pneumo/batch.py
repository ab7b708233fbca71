"""``pneumo predict``: many files and folders -> one row per file.

Decoding runs in a thread pool ahead of the network, so the CPU that decodes
the next batch is not waiting for the one that runs the model. A bad file
becomes a row with its reason in ``status``; it never stops the batch.

``status`` is ``ok``, ``warning: <reasons>`` (probability and label given, to
be read with care) or ``rejected: <reasons>`` (the input gate refused it: no
label); a file that cannot be read at all gets its reason alone. The input
gate's image checks run while decoding, so a refused file never reaches the
network.
"""

from __future__ import annotations

import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .data import IMAGE_SUFFIXES
from .gate import image_checks
from .imaging import ImageError, load_image
from .predictor import Predictor

COLUMNS = ["path", "probability", "label", "status"]


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, and image files found recursively under folders (hidden ones skipped)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES and \
                        not any(part.startswith(".") for part in relative):
                    yield child
        else:
            yield path


def predict_paths(predictor: Predictor, paths: list[Path], batch_size: int = 16,
                  progress: bool = True) -> Iterator[dict]:
    """Rows in input order; decoding of later files overlaps inference of earlier ones."""
    from tqdm.auto import tqdm

    def decode(path: Path):
        """(model input or None, image checks or None, status for a refused file)."""
        try:
            decoded = load_image(path)
        except ImageError as exc:
            return None, None, str(exc)
        except OSError as exc:
            return None, None, f"cannot read file: {exc}"
        checks = image_checks(decoded)
        if checks.status == "rejected":
            return None, checks, checks.summary()
        return predictor.prepare(decoded), checks, "ok"

    with ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(paths), unit="img", desc="predicting", disable=not progress) as bar:
        decoded = pool.map(decode, paths)  # lazily consumed: keeps ~all workers busy ahead
        pending: list[tuple[Path, object, object]] = []

        def flush():
            results = predictor.predict_batch(np.stack([array for _, array, _ in pending]),
                                              heatmaps=False)
            for (path, _, checks), result in zip(pending, results):
                assessment = predictor.assess(None, result, checks=checks)
                if assessment.status == "rejected":
                    yield {"path": str(path), "probability": "", "label": "",
                           "status": assessment.summary()}
                else:
                    yield {"path": str(path), "probability": f"{result.probability:.6f}",
                           "label": result.label, "status": assessment.summary()}
            bar.update(len(pending))
            pending.clear()

        for path, (array, checks, status) in zip(paths, decoded):
            if array is None:
                if pending:
                    yield from flush()
                bar.update(1)
                yield {"path": str(path), "probability": "", "label": "", "status": status}
                continue
            pending.append((path, array, checks))
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()


def write_rows(rows: Iterable[dict], output: str | Path | None, fmt: str) -> int:
    """Write rows as CSV or JSON to a file or stdout; returns how many were written."""
    handle = open(output, "w", newline="") if output else sys.stdout
    count = 0
    try:
        if fmt == "json":
            collected = list(rows)
            for row in collected:
                row["probability"] = float(row["probability"]) if row["probability"] else None
                row["label"] = row["label"] or None
            json.dump(collected, handle, indent=2)
            handle.write("\n")
            count = len(collected)
        else:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                count += 1
    finally:
        if output:
            handle.close()
    return count
