"""``pneumo predict``: many files and folders -> one row per file.

Decoding runs in a thread pool a bounded number of files ahead of the network
(memory stays flat on a folder of any size), so the network never waits for
the decoder. Unless told, the batch size is chosen on the run's own first
batches: each candidate size is timed on real work and the fastest per image
is kept. A bad file becomes a row with its reason in ``status``; it never
stops the batch.

``inconclusive`` is ``yes`` when the probability lies in the model card's
inconclusive band (validation accuracy clearly lower there: read the label as
"not sure"), ``no`` otherwise, empty without a result. ``status`` is ``ok``, ``warning: <reasons>`` (probability and label given, to
be read with care) or ``rejected: <reasons>`` (the input gate refused it: no
label); a file that cannot be read at all gets its reason alone. The input
gate's image checks run while decoding, so a refused file never reaches the
network.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .data import IMAGE_SUFFIXES
from .predictor import Prediction, Predictor
from .screening import Admitted, Refusal, admit, conclude

COLUMNS = ["path", "probability", "label", "inconclusive", "status"]

#: Batch sizes tried when none is given, and the size used on runs too short to try them.
CANDIDATE_BATCH_SIZES = (1, 4, 8, 16, 32)
DEFAULT_BATCH_SIZE = 16
#: Timed batches per candidate size.
TRIALS = 2
DECODE_THREADS = 2


@dataclasses.dataclass
class RunStats:
    """What a ``predict_paths`` run did: filled in as rows are produced."""

    images: int = 0  # images that went through the network
    inference_seconds: float = 0.0
    seconds: float = 0.0  # from the first file opened to the last row
    batch_size: int = 0

    def summary(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        return (f"{self.images} images in {self.seconds:.1f} s, {rate:.1f} images/s, "
                f"batch size {self.batch_size}")


class BatchSizer:
    """The batch size: fixed when given, else the candidate with the lowest measured
    time per image on this run's first full batches (real work, nothing wasted)."""

    def __init__(self, total: int, fixed: int | None = None):
        if fixed is not None and fixed < 1:
            raise ValueError(f"--batch-size must be at least 1, not {fixed}")
        self.timings: dict[int, list[float]] = collections.defaultdict(list)
        self._trials: list[int] = []
        if fixed is not None:
            self.size = fixed
        elif total < 2 * TRIALS * sum(CANDIDATE_BATCH_SIZES):
            self.size = min(DEFAULT_BATCH_SIZE, max(1, total))
        else:  # one warm-up batch, then each candidate TRIALS times
            self._trials = [CANDIDATE_BATCH_SIZES[0]] + [
                size for size in CANDIDATE_BATCH_SIZES for _ in range(TRIALS)]
            self.size = self._trials[0]

    @property
    def tuning(self) -> bool:
        return bool(self._trials)

    def record(self, images: int, seconds: float) -> None:
        """One batch of ``images`` took ``seconds`` in the network."""
        if not self._trials or images != self.size:
            return  # a short batch (before a bad file, or the last one) says little
        if len(self._trials) < 1 + TRIALS * len(CANDIDATE_BATCH_SIZES):
            self.timings[images].append(seconds / images)
        self._trials.pop(0)
        if self._trials:
            self.size = self._trials[0]
        else:
            self.size = min(self.timings, key=lambda size: min(self.timings[size]))


def _ahead(pool: ThreadPoolExecutor, function, items: list, depth: int) -> Iterator:
    """``function(item)`` for each item, in order, computed at most ``depth`` items ahead."""
    iterator = iter(items)
    futures = collections.deque(pool.submit(function, item)
                                for item in itertools.islice(iterator, depth))
    while futures:
        result = futures.popleft().result()
        for item in itertools.islice(iterator, 1):
            futures.append(pool.submit(function, item))
        yield result


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


@dataclasses.dataclass
class Screened:
    """One file through the screening flow: ``prediction`` is None when the file could
    not be read or the image checks refused it before the network; ``status`` is the
    row's status text."""

    path: Path
    prediction: Prediction | None
    status: str

    @property
    def refused(self) -> bool:
        return self.prediction is None or self.status.startswith("rejected")


def screen_paths(predictor: Predictor, paths: list[Path], batch_size: int | None = None,
                 progress: bool = True, stats: RunStats | None = None) -> Iterator[Screened]:
    """Every file through the screening flow (``screening.admit``, the network in
    batches, ``screening.conclude``), in input order; decoding of later files overlaps
    inference of earlier ones.

    ``batch_size``: None chooses it on the run (``BatchSizer``). ``stats``, if
    given, is filled in as the results are produced."""
    from tqdm.auto import tqdm

    stats = stats if stats is not None else RunStats()
    sizer = BatchSizer(len(paths), batch_size)
    started = time.perf_counter()

    def decode(path: Path):
        """The file admitted (its model input and checks; the full-size pixels are
        dropped, since only the checks needed them), or its refusal."""
        admitted = admit(predictor, path)
        if isinstance(admitted, Admitted):
            return admitted.model_input, admitted.checks
        return admitted

    depth = 2 * max(batch_size or 0, *CANDIDATE_BATCH_SIZES)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool, \
            tqdm(total=len(paths), unit="img", desc="predicting", disable=not progress) as bar:
        decoded = _ahead(pool, decode, paths, depth)
        pending: list[tuple[Path, object, object]] = []

        def flush():
            batch = np.stack([array for _, array, _ in pending])
            began = time.perf_counter()
            results = predictor.predict_batch(batch, heatmaps=False)
            took = time.perf_counter() - began
            sizer.record(len(batch), took)
            stats.images += len(batch)
            stats.inference_seconds += took
            stats.batch_size = sizer.size
            for (path, _, checks), result in zip(pending, results):
                outcome = conclude(predictor, checks, result)
                yield Screened(path, result, outcome.reason if isinstance(outcome, Refusal)
                               else outcome.status)
            bar.update(len(pending))
            pending.clear()
            stats.seconds = time.perf_counter() - started

        for path, admitted in zip(paths, decoded):
            if isinstance(admitted, Refusal):
                if pending:
                    yield from flush()
                bar.update(1)
                yield Screened(path, None, admitted.reason)
                continue
            pending.append((path, *admitted))
            if len(pending) >= sizer.size:
                yield from flush()
        if pending:
            yield from flush()
        stats.seconds = time.perf_counter() - started


def predict_paths(predictor: Predictor, paths: list[Path], batch_size: int | None = None,
                  progress: bool = True, stats: RunStats | None = None) -> Iterator[dict]:
    """``pneumo predict``'s rows (``COLUMNS``), in input order (see ``screen_paths``)."""
    for screened in screen_paths(predictor, paths, batch_size, progress, stats):
        result = screened.prediction
        if screened.refused:
            yield {"path": str(screened.path), "probability": "", "label": "",
                   "inconclusive": "", "status": screened.status}
        else:
            yield {"path": str(screened.path), "probability": f"{result.probability:.6f}",
                   "label": result.label, "inconclusive": "yes" if result.inconclusive else "no",
                   "status": screened.status}


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
                row["inconclusive"] = {"yes": True, "no": False}.get(row["inconclusive"])
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
