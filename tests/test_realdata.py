"""Real transfer on real photos: flowers-128 with the shared MobileNetV2 weights.

Skipped, with the reason, when ../shared is absent (a user's machine)."""

from __future__ import annotations

import pytest

from tests.conftest import FLOWERS, MNV2_WEIGHTS, require_shared
from tltk.config import DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.engine.run import train
from tltk.log import silent


@pytest.mark.slow
@pytest.mark.realdata
def test_folder_transfer_on_flowers_is_far_above_chance(tmp_path):
    require_shared()
    config = RunConfig(
        recipe="folder", backbone="mobilenetv2", weights=str(MNV2_WEIGHTS),
        data=DataConfig(dataset="folder", path=str(FLOWERS), image_size=96, per_class=60,
                        val_fraction=0.1, test_fraction=0.05),
        head=HeadConfig(units=128),
        stages=[StageConfig("bottleneck", epochs=15, unfreeze=0, augment=False)],
        out=str(tmp_path / "run"))
    result = train(config, say=silent)
    metrics = result.metrics.set_index(["weights", "split"])
    assert result.config.top_k == 2  # five classes
    # Chance is 20 %; frozen features from these weights give ~60-70 %.
    assert metrics.loc[("best", "val"), "top1"] > 50.0
    assert metrics.loc[("best", "test"), "top1"] > 50.0
