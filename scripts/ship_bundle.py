"""Make the shipped bundle from a training run and its development-set report.

The network, input gate, calibration and threshold are copied untouched (with
their checksums checked, by ``bundle.rebundle``). The card gains what a
training run cannot know by itself: the intended use and limitations a person
wrote for this model, and the figures ``pneumo evaluate`` measured on every
development set (refused images counted), which the About page shows.

    pneumo evaluate --validation ../shared/data/shift-dev --out runs/eval-v2 \\
        --model runs/v2/bundle
    python scripts/ship_bundle.py runs/v2/bundle runs/eval-v2 --out models/pneumo-xception
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

DESCRIPTION = (
    "Xception (ImageNet) at 299 x 299, frozen, with a head trained on its features to tell "
    "NORMAL from PNEUMONIA on frontal chest X-rays of children (Guangzhou) and adults (NIH)."
)
INTENDED_USE = (
    "A second opinion for clinicians reading frontal (PA or AP) chest radiographs of "
    "children and adults: it flags images that look like pneumonia so that a clinician "
    "looks again. It is not a diagnosis and must not be used alone to treat or to rule out "
    "disease."
)
LIMITATIONS = [
    "Trained on two sources: pediatric AP films (ages 1-5) from one hospital in Guangzhou, "
    "and mostly adult PA and AP films from the NIH Clinical Center (Bethesda). Other "
    "hospitals, detectors and age groups may behave differently.",
    "Adult figures carry label noise: the NIH labels were mined from radiology reports by "
    "text processing, PNEUMONIA often stands beside infiltration, atelectasis, effusion or "
    "oedema, and 'No Finding' is not a radiologist's second read. They rest on about 100 "
    "validation images, hence their wide intervals.",
    "Not validated: lateral views, neonates (under one year), children of 6-17 years (few "
    "images), intensive-care films crowded with lines and tubes, and any finding other than "
    "pneumonia (effusion, mass, tuberculosis, COVID-19).",
    "The operating threshold and the calibration were chosen on the development sets the "
    "card lists, with every set counting equally; a new site should check them on its own "
    "labelled images (pneumo calibrate).",
    "The heatmap shows where the evidence for the score lies, not the extent of disease.",
]
#: The fields of each development-set row kept in the card.
KEPT = ("images", "refused", "refused_rate", "warned", "n", "n_normal", "n_pneumonia", "roc_auc",
        "roc_auc_ci95", "accuracy", "accuracy_ci95", "sensitivity", "sensitivity_ci95",
        "specificity", "specificity_ci95", "ppv", "npv", "confusion_matrix", "ece",
        "ece_uncalibrated", "loss", "loss_uncalibrated")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="the training run's bundle")
    parser.add_argument("evaluation", type=Path, help="pneumo evaluate's --out folder for it")
    parser.add_argument("--out", type=Path, required=True, help="the shipped bundle folder")
    parser.add_argument("--note", default=None,
                        help="how the run was made, where its command alone does not say")
    args = parser.parse_args()

    from pneumo.bundle import read_card, rebundle

    card = read_card(args.bundle)
    report = json.loads((args.evaluation / "metrics.json").read_text())
    if report["model"]["version"] != card["version"]:
        print(f"the report measured {report['model']['version']}, not {card['version']}",
              file=sys.stderr)
        return 1
    # calibration, as fitted: every set counting equally, measured as served
    whole = [row for name, row in report["sets"].items() if ", " not in name and "ece" in row]
    card["calibration"].update(
        ece_before=sum(row["ece_uncalibrated"] for row in whole) / len(whole),
        ece_after=sum(row["ece"] for row in whole) / len(whole),
        ece_measured_on="the mean over the development sets (" + ", ".join(
            name for name, row in report["sets"].items() if ", " not in name and "ece" in row)
        + "), each counting equally, by pneumo evaluate")
    if args.note:
        card["training"]["note"] = args.note
    card["description"] = DESCRIPTION
    card["intended_use"] = INTENDED_USE
    card["limitations"] = LIMITATIONS
    card["development_sets"] = {
        "measured": datetime.date.today().isoformat(),
        "by": "pneumo evaluate (input checks, network and input gate, as served)",
        "sets": {name: {key: row[key] for key in KEPT if key in row}
                 for name, row in report["sets"].items()},
    }
    with tempfile.TemporaryDirectory(prefix="pneumo-ship-") as scratch:
        staged = Path(scratch) / "bundle"
        rebundle(args.bundle, staged, card)
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(staged, args.out)
    print(f"shipped bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
