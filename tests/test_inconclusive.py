"""The inconclusive band of the model card in the Predictor, the API and `pneumo predict`.
(The band's selection on validation is tested in test_site_calibration.py.)"""

from __future__ import annotations

import csv
import io
import json

import pytest

from pneumo.bundle import read_card, rebundle
from pneumo.cli import main
from pneumo.predictor import Predictor
from pneumo.web import create_app
from synthetic import encode, synthetic_xray


def banded(tiny_bundle, folder, lower, upper):
    card = read_card(tiny_bundle)
    card["inconclusive"] = {"lower": lower, "upper": upper, "method": "test", "n": 100,
                            "n_inside": 10, "accuracy_inside": 0.5, "accuracy_outside": 0.95}
    return rebundle(tiny_bundle, folder, card)


@pytest.fixture(scope="module")
def everything_unsure(tiny_bundle, tmp_path_factory):
    """The tiny network with a band covering every probability."""
    return banded(tiny_bundle, tmp_path_factory.mktemp("band") / "all", 0.0, 1.0)


@pytest.fixture(scope="module")
def unsure_predictor(everything_unsure):
    return Predictor.from_bundle(everything_unsure)


def test_inside_the_band_the_prediction_is_inconclusive_and_keeps_its_label(unsure_predictor):
    result = unsure_predictor.predict(synthetic_xray(1), heatmap=False)
    assert result.inconclusive is True
    assert result.label in ("NORMAL", "PNEUMONIA")
    assert result.to_dict()["inconclusive"] is True


def test_outside_the_band_or_without_one_it_is_not(tiny_bundle, tiny_predictor, tmp_path):
    assert tiny_predictor.predict(synthetic_xray(1), heatmap=False).inconclusive is False
    far = Predictor.from_bundle(banded(tiny_bundle, tmp_path / "far", 0.999, 1.0))
    result = far.predict(synthetic_xray(1), heatmap=False)
    assert result.probability < 0.999 and result.inconclusive is False


def test_api_reports_the_field(unsure_predictor, tiny_predictor):
    png = encode(synthetic_xray(2))
    for predictor, expected in ((unsure_predictor, True), (tiny_predictor, False)):
        client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": predictor}).test_client()
        response = client.post("/api/v1/predict?heatmap=false",
                               data={"file": (io.BytesIO(png), "a.png")})
        assert response.status_code == 200
        assert response.get_json()["inconclusive"] is expected
        spec = client.get("/api/v1/openapi.json").get_json()
        assert "inconclusive" in spec["components"]["schemas"]["Prediction"]["required"]


def test_page_has_the_inconclusive_notice(unsure_predictor):
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": unsure_predictor}).test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'id="result-inconclusive"' in html and "not sure" in html


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_predict_command_has_an_inconclusive_column(everything_unsure, tiny_bundle, tmp_path,
                                                    fmt):
    (tmp_path / "a.png").write_bytes(encode(synthetic_xray(3)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    values = {}
    for bundle, name in ((everything_unsure, "unsure"), (tiny_bundle, "plain")):
        out = tmp_path / f"{name}.{fmt}"
        assert main(["predict", str(tmp_path / "a.png"), str(tmp_path / "broken.png"),
                     "--model", str(bundle), "--format", fmt, "-o", str(out)]) == 0
        if fmt == "csv":
            with out.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = json.loads(out.read_text())
        values[name] = {row["path"].rsplit("/", 1)[-1]: row["inconclusive"] for row in rows}
    if fmt == "csv":
        assert values == {"unsure": {"a.png": "yes", "broken.png": ""},
                          "plain": {"a.png": "no", "broken.png": ""}}
    else:
        assert values == {"unsure": {"a.png": True, "broken.png": None},
                          "plain": {"a.png": False, "broken.png": None}}


def test_the_shipped_cards_band_straddles_its_threshold_and_was_fitted_on_validation(
        shipped_bundle):
    card = read_card(shipped_bundle)
    band = card["inconclusive"]
    assert band["lower"] < card["threshold"] < band["upper"]
    # fitted on the images the threshold was chosen on: every calibration set, nothing else
    assert band["n"] == sum(card["calibration"]["fitted_on"].values())
    assert band["accuracy_inside"] < band["accuracy_outside"] - 0.15
    assert band["n_inside"] <= 0.2 * band["n"]

