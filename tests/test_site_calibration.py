"""`pneumo calibrate`: calibration, threshold, band and sample sizes on scores with known
answers, then a tiny end-to-end run through the real CLI with the tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo.bundle import read_card, sha256_of, verify_files
from pneumo.calibration import choose_inconclusive_band, in_band, sigmoid
from pneumo.cli import main
from pneumo.metrics import images_needed, sample_size_report
from pneumo.site_calibration import fit_site, site_version
from synthetic import make_dataset


def site_scores(n=3000, temperature=2.0, bias=-1.0, seed=0):
    """Logits whose true P(pneumonia) is sigmoid(logit / temperature + bias)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, n)
    y = (rng.random(n) < sigmoid(logits / temperature + bias)).astype(int)
    return logits, y


def test_fit_site_recovers_the_sites_temperature_and_bias():
    logits, y = site_scores()
    fit = fit_site(logits, y)
    assert fit["temperature"] == pytest.approx(2.0, rel=0.1)
    assert fit["bias"] == pytest.approx(-1.0, abs=0.1)
    # the bundle's old calibration (T=1, b=0) is badly off on this site; the new one is not
    assert fit["metrics"]["ece"] < 0.02 < fit["metrics"]["ece_before"]


def test_fit_site_reaches_the_target_sensitivity():
    logits, y = site_scores(seed=1)
    fit = fit_site(logits, y, target_sensitivity=0.95)
    assert fit["metrics"]["sensitivity"] >= 0.95
    assert fit["threshold_method"] == "sensitivity>=0.95"


def test_images_needed_follows_the_normal_approximation():
    assert images_needed(0.9, 0.05) == 139  # 1.96^2 * 0.09 / 0.0025 = 138.3
    assert images_needed(0.5, 0.05) == 385
    assert images_needed(float("nan"), 0.05) == 385  # unknown proportion: worst case
    assert images_needed(1.0, 0.05) > 0  # a perfect sample still needs images


def test_sample_size_report_warns_when_the_sample_is_small():
    metrics = {"sensitivity": 0.9, "specificity": 0.8, "n_pneumonia": 30, "n_normal": 200,
               "sensitivity_ci95": [0.75, 0.98], "specificity_ci95": [0.74, 0.85]}
    report = sample_size_report(metrics, half_width=0.05)
    assert not report["enough"]
    assert report["sensitivity"]["images_needed"] == 139
    assert report["specificity"]["images_needed"] == 246  # 1.96^2 * 0.16 / 0.0025
    assert any("only 30 PNEUMONIA" in w for w in report["warnings"])
    assert any("246" in w for w in report["warnings"])
    big = {**metrics, "n_pneumonia": 500, "n_normal": 500}
    assert sample_size_report(big)["enough"]


def ambiguous_scores(n_clear=800, n_unsure=100, seed=0):
    """Clear cases far from 0.5, always right; unsure cases within 0.45-0.55, right every
    other one in order of distance from 0.5, so that the best band holds exactly them."""
    rng = np.random.default_rng(seed)
    y_clear = rng.integers(0, 2, n_clear)
    p_clear = np.where(y_clear == 1, rng.uniform(0.7, 0.99, n_clear), rng.uniform(0.01, 0.3, n_clear))
    p_unsure = rng.uniform(0.45, 0.55, n_unsure)
    p_unsure = p_unsure[np.argsort(np.abs(p_unsure - 0.5))]
    right = np.arange(n_unsure) % 2 == 0
    y_unsure = np.where(right, p_unsure >= 0.5, p_unsure < 0.5).astype(int)
    return np.concatenate([y_clear, y_unsure]), np.concatenate([p_clear, p_unsure])


def test_band_catches_the_region_of_low_accuracy():
    y, p = ambiguous_scores()
    band = choose_inconclusive_band(y, p, 0.5)
    assert band is not None
    # edges midway (logit scale) between the last unsure case and the first clear one
    assert 0.3 < band["lower"] < 0.45 and 0.55 < band["upper"] < 0.7
    assert band["n_inside"] == 100
    assert band["accuracy_outside"] == 1.0
    assert band["accuracy_inside"] < 0.7
    inside = np.array([in_band(v, band) for v in p])
    assert inside.sum() == band["n_inside"]


def test_no_band_when_accuracy_does_not_drop_near_the_threshold():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 1000)
    correct = rng.random(1000) < 0.85  # same accuracy everywhere
    y = np.where(correct, p >= 0.5, p < 0.5).astype(int)
    assert choose_inconclusive_band(y, p, 0.5) is None


def test_no_band_from_too_few_cases():
    y, p = ambiguous_scores(n_clear=30, n_unsure=5)
    assert choose_inconclusive_band(y, p, 0.5) is None
    assert not in_band(0.5, None)


def test_site_version_keeps_the_model_version_readable():
    assert site_version("0.1.0+v1", "2026-11-26") == "0.1.0+v1.site20261126"
    assert site_version("0.1.0", "2026-11-26") == "0.1.0+site20261126"


def test_calibrate_writes_a_new_bundle_with_the_network_untouched(tiny_bundle, tmp_path, capsys):
    data = make_dataset(tmp_path / "site", n_per_class=8)
    out = tmp_path / "site-bundle"
    assert main(["calibrate", str(data), "--model", str(tiny_bundle), "--out", str(out),
                 "--target-sensitivity", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: only 8 PNEUMONIA images" in printed
    card = read_card(out)
    verify_files(out, card)
    assert sha256_of(out / "model.keras") == sha256_of(tiny_bundle / "model.keras")
    record = card["site_calibration"]
    assert (record["n"], record["n_normal"], record["n_pneumonia"]) == (16, 8, 8)
    assert record["target_sensitivity"] == 0.9
    assert record["base"]["version"] == "0.0.0+test"
    assert card["version"].startswith("0.0.0+test.site")
    assert card["threshold_method"] == "sensitivity>=0.9"
    assert card["calibration"]["temperature"] > 0
    report = json.loads((out / "site_report" / "metrics.json").read_text())
    assert report["sample_size"]["enough"] is False
    assert "optimistic" in report["note"]
    assert report["sensitivity"] >= 0.9
    for name in ("roc.png", "precision_recall.png", "confusion_matrix.png", "reliability.png"):
        assert (out / "site_report" / name).stat().st_size > 1000
        assert f"site_report/{name}" in card["files"]
    # counts and date, never the site's file names
    names = [f.name for f in data.rglob("*.png")] + [f.stem for f in data.rglob("*.png")]
    stored = (out / "card.json").read_text() + (out / "site_report" / "metrics.json").read_text()
    assert not [name for name in names if name in stored]
    assert str(data) not in stored
    # the new bundle is usable as it stands
    from pneumo.predictor import Predictor

    predictor = Predictor.from_bundle(out)
    assert predictor.threshold == pytest.approx(card["threshold"])


def test_calibrate_refuses_to_overwrite_a_folder_that_is_not_a_bundle(tiny_bundle, tmp_path,
                                                                        capsys):
    data = make_dataset(tmp_path / "site", n_per_class=4)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["calibrate", str(data), "--model", str(tiny_bundle), "--out", str(out)]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
