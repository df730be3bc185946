"""Shared fixtures: the ../shared assets, tiny configs and quiet TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[2] / "shared"
FLOWERS = SHARED / "data" / "flowers-128"
MNV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_dogs19_notop.weights.h5"


def require_shared():
    """Skip a real-data test, with the reason, when ../shared is absent."""
    if not (FLOWERS.is_dir() and MNV2_WEIGHTS.is_file()):
        pytest.skip(f"real assets not found at {SHARED} (flowers-128 and MobileNetV2 weights)")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Feature caches and the Keras cache live in temp folders, never in $HOME."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TLTK_CACHE", str(root / "tltk-cache"))
    monkeypatch.setenv("KERAS_HOME", str(root / "keras-home"))


@pytest.fixture(autouse=True, scope="module")
def _clear_keras():
    """Free Keras graph state once per test module (per test, the gc pause costs more)."""
    yield
    import keras

    keras.backend.clear_session()
