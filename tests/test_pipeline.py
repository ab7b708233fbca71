"""A tiny end-to-end run through the real CLI: train -> evaluate -> predict.

The real Xception builder at 71x71 with random weights on generated images:
every artifact is produced by the same code the full run uses.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from pneumo.cli import main
from pneumo.config import TrainConfig
from synthetic import make_dataset

pytestmark = pytest.mark.slow

RUN_ARTIFACTS = ["config.json", "history.csv", "metrics.json", "learning_curves.png", "roc.png",
                 "precision_recall.png", "confusion_matrix.png", "reliability.png",
                 "bundle/model.keras", "bundle/card.json", "bundle/plots/roc.png",
                 "bundle/gate.npz"]
METRIC_KEYS = ["n", "accuracy", "loss", "roc_auc", "roc_auc_ci95", "sensitivity", "specificity",
               "ppv", "npv", "f1", "ece", "threshold", "confusion_matrix"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = make_dataset(root / "data", n_per_class=10)
    args = ["train", str(data), "--out", str(root / "runs"), "--run-name", "tiny",
            "--backbone-weights", "random", "--image-size", "71", "--head-epochs", "2",
            "--fine-tune-blocks", "1", "--fine-tune-epochs", "1", "--batch-size", "8",
            "--val-fraction", "0.3"]
    assert main(args) == 0
    return root, data, root / "runs" / "tiny", args


def test_training_writes_every_artifact(trained_run):
    _, _, run_dir, _ = trained_run
    missing = [name for name in RUN_ARTIFACTS if not (run_dir / name).is_file()]
    assert not missing
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS + ["ece_uncalibrated", "temperature", "threshold_method"]:
        assert key in metrics, key
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["phase"] for r in rows] == ["head", "head", "fine-tune"]
    assert all(r["val_loss"] for r in rows)


def test_card_records_command_threshold_and_data(trained_run):
    _, _, run_dir, _ = trained_run
    card = json.loads((run_dir / "bundle" / "card.json").read_text())
    assert card["training"]["command"].startswith("pneumo train")
    assert card["threshold"] == pytest.approx(json.loads(
        (run_dir / "metrics.json").read_text())["threshold"])
    assert card["training"]["data"]["train"]["images"] + \
        card["training"]["data"]["validation"]["images"] == 20
    assert card["input"]["size"] == 71
    gate = card["input_gate"]
    assert gate["warn_above"] <= gate["reject_above"]
    # the cut-off is the 99.5th percentile of the validation scores: of so few images,
    # at most the one with the highest score lies above it
    assert gate["false_rejection_validation"] * gate["images"]["validation"] <= 1 + 1e-9
    assert set(card["files"]) >= {"model.keras", "gate.npz", "plots/roc.png"}


def test_trained_bundle_scores_inputs_with_its_gate(trained_run):
    from pneumo.imaging import load_image
    from pneumo.predictor import Predictor

    _, data, run_dir, _ = trained_run
    predictor = Predictor.from_bundle(run_dir / "bundle")
    image = load_image(next((data / "NORMAL").iterdir()))
    prediction = predictor.predict(image)
    # standard deviations from typical training X-rays: any finite number, negative too
    assert prediction.feature_score is not None and np.isfinite(prediction.feature_score)
    from pneumo.screening import assess

    assessment = assess(predictor, image, prediction)
    assert assessment.feature_score == pytest.approx(prediction.feature_score)
    # a generated 96-pixel film is only warned about by the image checks: it is refused
    # exactly when its features lie beyond the gate's cut-off
    assert (assessment.status == "rejected") == \
        (prediction.feature_score > predictor.gate.reject_above)
    assert assessment.status != "ok"  # "low resolution (96x96 pixels)" at least


def test_rerun_with_the_same_name_resumes(trained_run, caplog):
    _, _, run_dir, args = trained_run
    caplog.set_level("INFO")
    assert main(args) == 0
    assert "resuming: phase 1 already done" in caplog.text


def test_a_run_resumed_with_another_recipe_is_refused(trained_run, capsys):
    _, _, run_dir, args = trained_run
    before = (run_dir / "config.json").read_text()
    started = TrainConfig(data_dir="").feature_block
    assert main([*args, "--feature-block", str(started + 1)]) == 2
    error = capsys.readouterr().err
    assert f"was started with feature_block = {started}" in error and "--run-name" in error
    assert (run_dir / "config.json").read_text() == before  # its record is left as it was


def test_a_run_from_before_feature_blocks_is_resumed_only_at_block_14(trained_run, tmp_path,
                                                                      capsys):
    """A run folder whose record predates --feature-block ended its network at block 14:
    resuming it with another block is refused, not a failed load of the head's weights."""
    import shutil

    _, _, run_dir, args = trained_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    record = json.loads((old / "config.json").read_text())
    del record["feature_block"]
    (old / "config.json").write_text(json.dumps(record))
    resume = [*args[:args.index("--out")], "--out", str(tmp_path), "--run-name", "old",
              *args[args.index("--run-name") + 2:], "--feature-block", "9"]
    assert main(resume) == 2
    assert "was started with feature_block = 14" in capsys.readouterr().err


def test_evaluate_writes_one_report_over_several_sets(trained_run, tmp_path):
    _, data, run_dir, _ = trained_run
    other = make_dataset(tmp_path / "other", n_per_class=6)  # never trained on
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), str(other), "--model", str(run_dir / "bundle"),
                 "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    card = json.loads((run_dir / "bundle" / "card.json").read_text())
    sets = report["sets"]
    # the training folder is measured on its validation part only
    assert list(sets) == ["data (validation part)", "other"]
    assert sets["data (validation part)"]["images"] == \
        card["training"]["data"]["validation"]["images"]
    assert sets["other"]["images"] == 12
    for metrics in sets.values():
        # refused images are counted, and the metrics cover exactly the rest
        assert metrics.get("n", 0) + metrics["refused"] == metrics["images"]
        if "roc_auc" in metrics:
            for key in METRIC_KEYS:
                assert key in metrics, key
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(m["images"] for m in sets.values())
    refused = [r for r in rows if r["status"].startswith("rejected") or not r["probability"]]
    assert len(refused) == sum(m["refused"] for m in sets.values())
    table = (out / "report.md").read_text()
    assert all(f"| {name} |" in table for name in sets)
    assert (out / "roc_by_set.png").stat().st_size > 0
    for name in ("roc.png", "precision_recall.png", "confusion_matrix.png", "reliability.png"):
        assert (out / "other" / name).is_file()


def test_evaluate_needs_something_to_measure(trained_run, tmp_path, capsys):
    _, _, run_dir, _ = trained_run
    assert main(["evaluate", "--model", str(run_dir / "bundle"), "--out", str(tmp_path)]) == 2
    assert "at least one labelled folder" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_predict_writes_one_row_per_file_and_survives_bad_files(trained_run, tmp_path, fmt):
    _, data, run_dir, _ = trained_run
    (data / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "PNEUMONIA" / "notes.jpg").write_bytes(b"plain text")
    out = tmp_path / f"predictions.{fmt}"
    try:
        code = main(["predict", str(data), "--model", str(run_dir / "bundle"), "--output",
                     str(out), "--format", fmt, "--batch-size", "4"])
    finally:
        (data / "NORMAL" / "broken.png").unlink()
        (data / "PNEUMONIA" / "notes.jpg").unlink()
    assert code == 0
    if fmt == "csv":
        with open(out) as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["path", "probability", "label", "inconclusive", "status"]
    else:
        rows = json.loads(out.read_text())
    assert len(rows) == 22
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert "truncated" in by_name["broken.png"]["status"] or \
        "could not be decoded" in by_name["broken.png"]["status"]
    assert "not a PNG, JPEG or DICOM" in by_name["notes.jpg"]["status"]
    # 96x96 images: the input gate warns about the resolution (or, for an outlier of
    # this 20-image gate of a random network, rejects); every readable file gets one of
    # its three verdicts, and most get a label.
    readable = [r for r in rows if r["path"].rsplit("/", 1)[-1] not in ("broken.png", "notes.jpg")]
    assert all(r["status"] == "ok" or r["status"].startswith(("warning: ", "rejected: "))
               for r in readable)
    good = [r for r in readable if not r["status"].startswith("rejected")]
    assert len(good) >= 12
    assert all("low resolution (96x96 pixels)" in r["status"] for r in readable)
    threshold = json.loads((run_dir / "bundle" / "card.json").read_text())["threshold"]
    # the threshold is one image's own score, and the rows give six decimals: allow that
    assert all(r["label"] == ("PNEUMONIA" if float(r["probability"]) >= threshold else "NORMAL")
               or abs(float(r["probability"]) - threshold) <= 5e-7 for r in good)
    assert all(not r["label"] and not r["probability"] for r in readable if r not in good)


@pytest.mark.parametrize("args, message", [
    (["train", "/no/such/folder", "--backbone-weights", "random"], "data folder not found"),
    (["train", "{empty}", "--backbone-weights", "random"], "no NORMAL/ or PNEUMONIA/"),
    (["evaluate", "{empty}", "--out", "{empty}/o", "--model", "/no/bundle"], "bundle not found"),
    (["predict", "/no/such/file.png", "--model", "/no/bundle"], "bundle not found"),
    (["train", "{data}", "--backbone-weights", "/no/weights.h5"], "weights file not found"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    make_dataset(tmp_path / "data", n_per_class=2)
    args = [a.format(empty=tmp_path / "empty", data=tmp_path / "data") for a in args]
    result = subprocess.run([sys.executable, "-m", "pneumo.cli", *args], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # a failed run leaves no half-made run folder


def test_every_subcommand_explains_its_options():
    for command in ("train", "evaluate", "predict", "serve", "dicom-listen"):
        result = subprocess.run([sys.executable, "-m", "pneumo.cli", command, "--help"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0
        assert "--model" in result.stdout or "--backbone-weights" in result.stdout


@pytest.fixture(scope="module")
def multi_source_run(tmp_path_factory):
    """Two training sources (the second with a manifest of patients and views) and a
    calibration set never trained on."""
    root = tmp_path_factory.mktemp("multi")
    kids = make_dataset(root / "kids", n_per_class=10)
    adults = make_dataset(root / "adults", n_per_class=10, size=(128, 128))
    files = sorted(p.relative_to(adults) for p in adults.rglob("*.png"))
    (adults / "manifest.csv").write_text("file,label,patient_id,age,view\n" + "".join(
        f"{f},{f.parts[0]},{i},{30 + i},{'PA' if i % 2 else 'AP'}\n" for i, f in enumerate(files)))
    calibration = make_dataset(root / "shift", n_per_class=6)
    assert main(["train", str(kids), str(adults), "--calibrate-on", str(calibration),
                 "--out", str(root / "runs"), "--run-name", "multi", "--backbone-weights",
                 "random", "--image-size", "71", "--head-epochs", "1", "--fine-tune-blocks", "0",
                 "--batch-size", "8", "--val-fraction", "0.3", "--normalization", "clahe",
                 "--feature-block", "12"]) == 0
    return root, root / "runs" / "multi"


def test_card_records_every_source_and_what_chose_the_threshold(multi_source_run):
    root, run_dir = multi_source_run
    card = json.loads((run_dir / "bundle" / "card.json").read_text())
    sources = card["training"]["data"]["sources"]
    assert list(sources) == ["kids", "adults"]
    for source in sources.values():
        assert source["train"]["images"] + source["validation"]["images"] == 20
        assert source["validation"]["normal"] > 0 and source["validation"]["pneumonia"] > 0
    text = json.dumps(card)
    assert not [f.name for f in (root / "adults").rglob("*.png") if f.name in text]  # no file names
    assert card["calibration"]["fitted_on"] == {
        "kids": sources["kids"]["validation"]["images"],
        "adults": sources["adults"]["validation"]["images"], "shift": 12}
    assert list(card["validation_by_set"]) == ["kids", "adults", "shift"]
    assert set(card["input_gate"]["false_rejection_validation_by_source"]) == {"kids", "adults"}
    assert card["input"]["normalization"] == "clahe"


def test_a_backbone_ending_early_is_what_the_bundle_runs(multi_source_run):
    """--feature-block 12: the saved network ends at block 12 (the middle flow's 728
    channels), the card says so, and the heatmap is that block's class activation map."""
    import keras

    from pneumo.models import backbone_of, feature_block_of
    from pneumo.predictor import Predictor

    _, run_dir = multi_source_run
    card = json.loads((run_dir / "bundle" / "card.json").read_text())
    assert "up to block 12 of 14" in card["description"]
    assert "block 12's output" in card["head"]
    model = keras.models.load_model(run_dir / "bundle" / "model.keras", compile=False)
    assert feature_block_of(model) == 12
    assert backbone_of(model).output.shape[-1] == 728
    predictor = Predictor.from_bundle(run_dir / "bundle")
    image = np.random.default_rng(0).integers(0, 256, (71, 71), dtype=np.uint8)
    prediction = predictor.predict(image, heatmap=True)
    # the map at block 12's resolution (stride 16), twice as fine as block 14's
    assert prediction.heatmap.shape == tuple(backbone_of(model).output.shape[1:3])
    assert 0.0 <= prediction.heatmap.min() <= prediction.heatmap.max() <= 1.0
    assert 0.0 <= prediction.probability <= 1.0


def test_evaluate_rebuilds_every_sources_validation_part(multi_source_run, tmp_path):
    root, run_dir = multi_source_run
    card = json.loads((run_dir / "bundle" / "card.json").read_text())
    assert main(["evaluate", "--validation", str(root / "shift"), "--model",
                 str(run_dir / "bundle"), "--out", str(tmp_path)]) == 0
    sets = json.loads((tmp_path / "metrics.json").read_text())["sets"]
    assert {name: m["images"] for name, m in sets.items()
            if name.endswith("(validation part)") or name == "shift"} == {
        "kids (validation part)": card["training"]["data"]["sources"]["kids"]["validation"]["images"],
        "adults (validation part)": card["training"]["data"]["sources"]["adults"]["validation"]["images"],
        "shift": 12}
