"""`tltk data describe` writes its report files (tltk.data.describe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tltk.cli import main
from tltk.data.describe import describe

REPORT = {"summary.csv", "image_sizes.csv", "samples.png", "augmentation.png", "summary.md"}


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two classes of small images of mixed sizes, plus one broken file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for cls, n in (("cat", 5), ("dog", 7)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (30 + 2 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_describe_folder_writes_every_file(photos, tmp_path):
    out = tmp_path / "report"
    files = describe("folder", out, data=str(photos), val_fraction=0.4, test_fraction=0.0)
    assert {p.name for p in files.values()} == REPORT | {"skipped.csv"}
    assert {p.name for p in out.iterdir()} == REPORT | {"skipped.csv"}
    summary = pd.read_csv(out / "summary.csv")
    assert summary["class"].tolist() == ["cat", "dog"]
    assert summary["total"].tolist() == [5, 7]
    assert (summary["train"] + summary["val"] == summary["total"]).all()
    sizes = pd.read_csv(out / "image_sizes.csv")
    assert len(sizes) == 12 and set(sizes["width"]) == {40}
    assert sorted(sizes.loc[sizes["class"] == "cat", "height"]) == [30, 32, 34, 36, 38]
    assert pd.read_csv(out / "skipped.csv")["path"].str.endswith("broken.jpg").all()
    width, height = png_size(out / "augmentation.png")
    assert width > 2 * height  # 2 rows x 5 panels: original + nine augmented
    assert png_size(out / "samples.png")[1] > 100
    text = (out / "summary.md").read_text()
    for needle in ("2 classes, 12 images", "| cat | 0 |", "broken.jpg", "samples.png",
                   "augmentation.png", "height max"):
        assert needle in text


def test_describe_streamed_dataset(tmp_path):
    files = describe("demo", tmp_path / "demo", size_samples=50, per_class=2, max_classes=3)
    sizes = pd.read_csv(files["image_sizes"])
    assert sizes.groupby("split").size().max() == 50  # streamed splits are sampled
    assert set(sizes["width"]) == {64}
    summary = pd.read_csv(files["summary"])
    assert len(summary) == 6 and summary["total"].sum() == 1200
    text = files["summary_md"].read_text()
    assert "first 3 of 6 classes" in text and "None: every image file decoded." in text
    assert not (tmp_path / "demo" / "skipped.csv").exists()


def test_cli_data_describe(photos, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(main, ["data", "describe", "folder", "--data", str(photos),
                                  "--out", str(out), "--test-fraction", "0"])
    assert result.exit_code == 0, result.output
    assert REPORT <= {p.name for p in out.iterdir()}
    bad = runner.invoke(main, ["data", "describe", "flowerz", "--out", str(out)])
    assert bad.exit_code == 2
    assert "unknown name 'flowerz'" in bad.output and "Traceback" not in bad.output
