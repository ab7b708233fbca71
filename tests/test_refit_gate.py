"""`pneumo refit-gate`: a bundle's input gate fitted again through the real CLI, on the
tiny bundle and a synthetic folder; the network and the rest of the card untouched."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.bundle import read_card, sha256_of, verify_files
from pneumo.cli import main
from pneumo.gate import GATE_FILE, FeatureGate
from pneumo.predictor import Predictor
from pneumo.refit_gate import pooled_features, split_config
from pneumo.train import prepare_split
from synthetic import make_dataset


def test_refit_gate_writes_a_bundle_whose_gate_describes_the_folder(tiny_bundle, tmp_path,
                                                                    capsys):
    data = make_dataset(tmp_path / "site", n_per_class=24)
    out = tmp_path / "regated"
    assert main(["refit-gate", str(data), "--model", str(tiny_bundle), "--out", str(out),
                 "--components", "4", "--reject-percentile", "90",
                 "--warn-percentile", "80"]) == 0
    printed = capsys.readouterr().out
    assert "refuse above" in printed and str(out) in printed

    card, before = read_card(out), read_card(tiny_bundle)
    verify_files(out, card)
    assert sha256_of(out / "model.keras") == sha256_of(tiny_bundle / "model.keras")
    assert {k: v for k, v in card.items() if k not in ("input_gate", "files")} == \
        {k: v for k, v in before.items() if k not in ("input_gate", "files")}
    entry = card["input_gate"]
    assert (entry["n_components"], entry["reject_percentile"], entry["warn_percentile"]) == \
        (4, 90.0, 80.0)
    assert entry["fitted"]["by"] == "pneumo refit-gate"

    # The saved cut-offs are the percentiles of the validation part's scores, from the same
    # split pneumo train would make of this folder.
    gate = FeatureGate.load(out / GATE_FILE)
    predictor = Predictor.from_bundle(out)
    train, val, _ = prepare_split(split_config(card, data))
    from pneumo.data import load_images

    _, x_val = load_images(val, predictor.image_size, use_cache=False, progress=False)
    scores = gate.score(pooled_features(predictor, x_val))
    assert gate.reject_above == pytest.approx(np.percentile(scores, 90.0), rel=1e-4)
    assert gate.warn_above == pytest.approx(np.percentile(scores, 80.0), rel=1e-4)
    assert entry["images"] == {"train": len(train), "validation": len(val)}
    assert entry["false_rejection_validation"] == pytest.approx(np.mean(scores > gate.reject_above))
    assert predictor.gate is not None and predictor.gate.reject_above == gate.reject_above


def test_refit_gate_refuses_bad_percentiles_and_foreign_folders(tiny_bundle, tmp_path, capsys):
    data = make_dataset(tmp_path / "site", n_per_class=8)
    assert main(["refit-gate", str(data), "--model", str(tiny_bundle), "--out",
                 str(tmp_path / "a"), "--reject-percentile", "90",
                 "--warn-percentile", "95"]) == 2
    assert "percentiles" in capsys.readouterr().err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["refit-gate", str(data), "--model", str(tiny_bundle), "--out",
                 str(precious)]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a").exists()
