"""How the input gate's design was chosen: candidates compared on a development set.

The test suite's non-X-ray set (tests/non_xrays.py) measures the gate; it must
not also choose it. This script builds a separate development set from images
that happen to be installed on the machine -- scikit-learn's and matplotlib's
sample photos, matplotlib's MRI slice, scikit-image's face and retina samples
that the test set does not use, icons and diagrams from /usr/share, each in
colour and grayscale -- plus 1/f noise from a generator the tests do not use.
It then scores candidate feature gates on the bundle's own split (rebuilt from
the card): PCA with 32, 64 and 128 components and k-nearest-neighbour distance,
each refusing above the 99th or 99.5th validation percentile, and prints the
false-rejection rates on the training and validation X-rays next to the share
of development images refused (by the image checks or the features).

    python benchmarks/gate_design.py --model models/pneumo-xception \\
        --data ../shared/data/chest_xray/train

On 2026-11-26 it chose the shipped design (128 components, refuse above the
99.5th percentile): the smallest PCA that refused all 81 development images,
with 0.57% of validation X-rays refused; with 32 components, as before, 3 or 4
of the 81 passed. Writes nothing.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import site
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def development_images() -> list[tuple[str, bytes]]:
    """Non-X-rays installed on this machine, none of them in tests/non_xrays.py."""
    packages = [Path(p) for p in site.getsitepackages()]
    files = []
    for folder in packages:
        files += [folder / "sklearn/datasets/images/china.jpg",
                  folder / "sklearn/datasets/images/flower.jpg",
                  folder / "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                  folder / "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
                  folder / "matplotlib/mpl-data/sample_data/logo2.png"]
    files += sorted(glob.glob("/usr/share/doc/**/*.png", recursive=True))[:12]
    files += sorted(glob.glob("/usr/share/icons/Adwaita/512x512/*/*.png"))[::4][:15]
    files += glob.glob("/usr/share/**/*.jpg", recursive=True)
    images = []
    for path in map(Path, files):
        if not path.is_file():
            continue
        with Image.open(path) as image:
            image.load()
            images.append((path.name, _png(image.convert("RGB"))))
            images.append((path.name + "-gray", _png(image.convert("L"))))
    for folder in packages:
        mri = folder / "matplotlib/mpl-data/sample_data/s1045.ima.gz"
        if mri.is_file():
            with gzip.open(mri) as raw:
                pixels = np.frombuffer(raw.read(), ">u2").reshape(256, 256)
            images.append(("mri-s1045", _png(Image.fromarray(
                (pixels / pixels.max() * 255).astype(np.uint8)))))
    import skimage.data

    images.append(("microaneurysms", _png(Image.fromarray(skimage.data.microaneurysms()))))
    faces = skimage.data.lfw_subset()
    for i in range(0, 40, 8):
        face = Image.fromarray((faces[i] * 255).astype(np.uint8)).resize((256, 256))
        images.append((f"lfw-{i}", _png(face)))
    rng = np.random.default_rng(7)
    fy, fx = np.meshgrid(np.fft.fftfreq(512), np.fft.fftfreq(512), indexing="ij")
    for i in range(6):  # 1/f^a "clouds", a generator the tests do not use
        spectrum = np.fft.fft2(rng.normal(size=(512, 512)))
        amplitude = 1 / np.maximum(np.hypot(fx, fy), 1 / 512) ** (1 + 0.3 * i)
        field = np.real(np.fft.ifft2(spectrum * amplitude))
        field = (field - field.min()) / np.ptp(field) * 255
        images.append((f"pink-noise-{i}", _png(Image.fromarray(field.astype(np.uint8)))))
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the labelled training folder")
    args = parser.parse_args(argv)

    from pneumo.data import load_images
    from pneumo.gate import FeatureGate, image_checks
    from pneumo.imaging import ImageError, load_image
    from pneumo.predictor import Predictor
    from pneumo.refit_gate import pooled_features, split_config
    from pneumo.train import prepare_split

    predictor = Predictor.from_bundle(args.model)
    train, val, _ = prepare_split(split_config(predictor.card, args.data))
    _, x_train = load_images(train, predictor.image_size, normalization=predictor.normalization,
                             use_cache=False, progress=False)
    _, x_val = load_images(val, predictor.image_size, normalization=predictor.normalization,
                           use_cache=False, progress=False)
    f_train = pooled_features(predictor, x_train).astype(np.float64)
    f_val = pooled_features(predictor, x_val).astype(np.float64)

    names, dev_features, refused_by_checks = [], [], []
    for name, data in development_images():
        try:
            decoded = load_image(data)
        except ImageError:
            continue
        names.append(name)
        dev_features.append(pooled_features(predictor, predictor.prepare(decoded)[None])[0])
        refused_by_checks.append(image_checks(decoded).status == "rejected")
    f_dev, refused_by_checks = np.array(dev_features, np.float64), np.array(refused_by_checks)
    print(f"{len(names)} development images, {refused_by_checks.sum()} refused by the image "
          f"checks; {len(f_train)} X-rays to fit, {len(f_val)} to set cut-offs")

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def knn(k):
        reference = unit(f_train)

        def score(x, exclude_self=False):
            similarity = unit(x) @ reference.T
            if exclude_self:
                np.fill_diagonal(similarity, -np.inf)
            return 1 - np.sort(similarity, axis=1)[:, -k]
        return score(f_train, True), score(f_val), score(f_dev)

    candidates = {}
    for k in (32, 64, 128):
        gate = FeatureGate.fit(f_train, f_val, n_components=k)
        candidates[f"PCA, {k} components"] = (gate.score(f_train), gate.score(f_val),
                                              gate.score(f_dev))
    for k in (1, 5, 20):
        candidates[f"{k}-nearest-neighbour cosine distance"] = knn(k)
    print(f"{'candidate':40s} {'refuse above':>12s} {'train':>7s} {'val':>7s} {'dev refused':>12s}")
    for name, (s_train, s_val, s_dev) in candidates.items():
        for percentile in (99.0, 99.5):
            cut = np.percentile(s_val, percentile)
            dev = (s_dev > cut) | refused_by_checks
            print(f"{name:40s} {percentile:>11g}th {np.mean(s_train > cut):7.2%} "
                  f"{np.mean(s_val > cut):7.2%} {dev.sum():>4d}/{len(dev)} {dev.mean():6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
