"""Shared fixtures: generated X-ray-like images, a tiny real bundle, the shipped bundle.

The tiny bundle is the real Xception builder at a small input size with random
weights: every code path runs for real, in seconds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import reliability
from synthetic import encode, synthetic_xray  # noqa: F401  (re-exported for tests)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN_DATA = SHARED / "data" / "chest_xray" / "train"
ADULT_DATA = SHARED / "data" / "external" / "nih-dev"
BACKBONE_WEIGHTS = SHARED / "weights" / "xception_imagenet_notop.weights.h5"
SHIPPED_BUNDLE = ROOT / "models" / "pneumo-xception"
TINY_SIZE = 71  # the smallest input Xception accepts


def build_tiny_bundle(path: Path, threshold: float = 0.5, temperature: float = 1.0) -> Path:
    from pneumo.bundle import save_bundle
    from pneumo.models import build_model

    model = build_model(TINY_SIZE, "random", dropout=0.0)
    card = {
        "name": "pneumo-xception-tiny-test",
        "version": "0.0.0+test",
        "class_names": ["NORMAL", "PNEUMONIA"],
        "input": {"size": TINY_SIZE, "channels": 1, "dtype": "uint8", "value_range": [0, 255],
                  "preprocessing": "test", "preprocessing_version": 1},
        "threshold": threshold,
        "threshold_method": "test",
        "calibration": {"method": "temperature scaling", "temperature": temperature},
        "validation": {"roc_auc": 0.5},
    }
    return save_bundle(path, model, card)


def _session_folder_in_env(tmp_path_factory, variable: str, name: str):
    """A per-session folder named by ``variable`` for this process and the servers it
    starts, restored afterwards."""
    folder = tmp_path_factory.mktemp(name)
    previous = os.environ.get(variable)
    os.environ[variable] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory) -> Path:
    """Converted ONNX graphs go to a per-session folder, never to the user's cache:
    every tiny bundle has new random weights."""
    yield from _session_folder_in_env(tmp_path_factory, "PNEUMO_CACHE_DIR", "cache")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> Path:
    """Kept studies go to a per-session folder, never to the user's ~/.local/share/pneumo."""
    yield from _session_folder_in_env(tmp_path_factory, "PNEUMO_DATA_DIR", "data")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real bundle (random-weight Xception at 71x71), built once per test session."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_predictor(tiny_bundle):
    from pneumo.predictor import Predictor

    return Predictor.from_bundle(tiny_bundle)


@pytest.fixture
def xray_png() -> bytes:
    return encode(synthetic_xray(1, opacity=True))


@pytest.fixture
def train_data() -> Path:
    if not TRAIN_DATA.is_dir():
        pytest.skip(f"real training X-rays not found at {TRAIN_DATA} (../shared/data)")
    return TRAIN_DATA


@pytest.fixture
def adult_data() -> Path:
    """The NIH development set (mostly adults, another hospital, with a manifest)."""
    if not ADULT_DATA.is_dir():
        pytest.skip(f"the NIH development X-rays were not found at {ADULT_DATA} (../shared/data)")
    return ADULT_DATA


@pytest.fixture(scope="session")
def shipped_bundle() -> Path:
    if not (SHIPPED_BUNDLE / "card.json").is_file():
        pytest.skip(f"no shipped bundle at {SHIPPED_BUNDLE}")
    return SHIPPED_BUNDLE


# -- the reliability report (see reliability.py) ------------------------------------------

_OUTCOMES = reliability.Outcomes()
_FIGURES = reliability.Figures()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "reliability(*rows): covers these rows of RELIABILITY.md against the real "
                   "app or server")


def pytest_collection_modifyitems(items):
    for item in items:
        rows = tuple(row for mark in item.iter_markers("reliability") for row in mark.args)
        unknown = [row for row in rows if row not in reliability.ROWS]
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: no reliability row {unknown}")
        if rows:
            _OUTCOMES.rows[item.nodeid] = rows


def pytest_runtest_logreport(report):
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
    _OUTCOMES.record(report.nodeid, report.when, report.outcome, reason)


@pytest.fixture(scope="session")
def reliability_figures() -> reliability.Figures:
    """Where tests put the figures of the reliability report."""
    return _FIGURES


def pytest_sessionstart(session):
    session.reliability_started = time.monotonic()


def pytest_sessionfinish(session, exitstatus):
    if not any(nodeid in _OUTCOMES.results for nodeid in _OUTCOMES.rows):
        return
    results = list(_OUTCOMES.results.values())
    totals = {"passed": results.count("passed"), "failed": results.count("failed"),
              "skipped": sum(r.startswith("skipped") for r in results),
              "seconds": time.monotonic() - session.reliability_started}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for path in reliability.write(ROOT, _OUTCOMES, _FIGURES, totals):
        if reporter:
            reporter.write_line(f"reliability report written to {path.relative_to(ROOT)}")


@pytest.fixture
def app(tiny_predictor):
    """The web app on the tiny bundle; test files that need other settings define their own."""
    from pneumo.web import create_app

    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def sharp_bundle(tiny_bundle, tiny_predictor, tmp_path_factory) -> Path:
    """The tiny bundle with a card whose temperature spreads its (nearly equal) logits
    over the probability range, so that results of different images really differ. For
    the tests that start the real server."""
    logit = tiny_predictor.predict(encode(synthetic_xray(0)), heatmap=False).logit
    target = tmp_path_factory.mktemp("sharp") / "bundle"
    target.mkdir()
    (target / "model.keras").symlink_to(tiny_bundle / "model.keras")
    card = json.loads((tiny_bundle / "card.json").read_text())
    card["calibration"] = {**card["calibration"], "temperature": abs(logit) / 1.5 or 1.0}
    (target / "card.json").write_text(json.dumps(card))
    return target
