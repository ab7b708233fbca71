"""The bare single-image forward pass of two bundles, interleaved in one time window.

The machine's speed drifts by 15% or more between runs minutes apart, so comparing
a new model's cost with the old one's needs both timed side by side: one pass of
each in turn, 60 times, after 5 warm-up passes; medians and their ratio.

    python benchmarks/compare_bundles.py OLD_BUNDLE NEW_BUNDLE
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--passes", type=int, default=60)
    args = parser.parse_args()

    from pneumo.predictor import Predictor

    predictors = [Predictor.from_bundle(args.old), Predictor.from_bundle(args.new)]
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (1, p.image_size, p.image_size, 1), dtype=np.uint8)
              for p in predictors]
    for _ in range(5):
        for predictor, x in zip(predictors, inputs):
            predictor.engine(x)
    times: list[list[float]] = [[], []]
    for _ in range(args.passes):
        for index, (predictor, x) in enumerate(zip(predictors, inputs)):
            started = time.perf_counter()
            predictor.engine(x)
            times[index].append(time.perf_counter() - started)
    medians = [float(np.median(t)) * 1e3 for t in times]
    for predictor, median in zip(predictors, medians):
        print(f"{predictor.version} ({predictor.image_size} px): {median:.1f} ms")
    print(f"ratio new / old: {medians[1] / medians[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
