"""The folder source survives bad files and odd image modes (tltk.data.folder)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FLOWERS, require_shared
from tests.data.conftest import BLUE, GOOD, RED, WHITE, load_folder, make_bad, save, solid
from tltk.data import make_pipeline
from tltk.errors import TltkError


def test_bad_files_are_skipped_with_reasons(messy):
    root, bad = messy
    before = sorted(p for p in root.rglob("*"))
    ds = load_folder(root, val_fraction=0.25, test_fraction=0.0)
    assert ds.class_names == ["odd", "plain"]
    reasons = {Path(path).name: reason for path, reason in ds.skipped}
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert words in reasons[name], reasons[name]
    used = sum(len(split) for split in ds.splits.values())
    seen = len(GOOD) + len(bad) + 6  # hidden files and .txt are not seen at all
    assert used + len(ds.skipped) == seen
    assert used == len(GOOD) + 6
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the data


def test_odd_modes_decode_to_the_right_colours(messy):
    root, _ = messy
    ds = load_folder(root, val_fraction=0.25, test_fraction=0.0)
    seen = {}
    for split in ds.splits.values():
        for path, (image, _) in zip(split.paths, split.source()):
            original = Path(path).stem.rsplit("-", 1)[0] if "cache" in path else Path(path).stem
            seen[original] = image.numpy()
    for name, (_, colour) in GOOD.items():
        image = seen[Path(name).stem]
        assert image.dtype == np.uint8 and image.shape == (20, 24, 3), name
        if colour is not None:
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colour, atol=6,
                                       err_msg=name)
    grey = seen["gray"].reshape(-1, 3).mean(0)
    assert np.ptp(grey) < 2  # grayscale comes out as three equal channels
    rgba = seen["rgba"].astype(float)
    np.testing.assert_allclose(rgba[:, :12].mean((0, 1)), RED, atol=1)
    np.testing.assert_allclose(rgba[:, 12:].mean((0, 1)), WHITE, atol=1)  # not black


def test_every_split_runs_through_make_pipeline(messy):
    root, _ = messy
    ds = load_folder(root, val_fraction=0.25, test_fraction=0.0)
    for name, split in ds.splits.items():
        batches = list(make_pipeline(split, image_size=32, batch_size=4,
                                     training=name == "train", seed=0))
        images = np.concatenate([x.numpy() for x, _ in batches])
        labels = np.concatenate([y.numpy() for _, y in batches])
        assert images.shape == (len(split), 32, 32, 3)
        assert np.isfinite(images).all() and sorted(labels) == sorted(split.labels)


def test_empty_class_is_dropped_with_a_warning(messy, caplog):
    root, _ = messy
    (root / "nothing").mkdir()
    make_bad(root / "broken")  # a class whose every file is bad
    with caplog.at_level(logging.WARNING, logger="tltk.data.folder"):
        ds = load_folder(root, val_fraction=0.25, test_fraction=0.0)
    assert ds.class_names == ["odd", "plain"]
    assert "broken, nothing" in caplog.text
    assert len(ds.skipped) == 8  # the four bad files of odd/ and of broken/


def test_single_class_is_an_error(tmp_path):
    for i in range(4):
        save(solid(RED), tmp_path / "only" / f"{i}.png", "PNG")
    with pytest.raises(TltkError, match="at least two class subfolders"):
        load_folder(tmp_path)


def test_too_small_class_is_an_error(messy):
    root, _ = messy
    save(solid(RED), root / "tiny" / "one.jpg", "JPEG")
    save(solid(RED), root / "tiny" / "two.jpg", "JPEG")
    with pytest.raises(TltkError, match="class 'tiny' .* has 2 image.*need at least 3"):
        load_folder(root, val_fraction=0.2, test_fraction=0.2)


def test_presplit_layout_skips_bad_files(tmp_path):
    root = tmp_path / "pre"
    for split, n in (("train", 4), ("val", 2)):
        for cls, colour in (("cat", RED), ("dog", BLUE)):
            for i in range(n):
                save(solid(colour), root / split / cls / f"{i}.jpg", "JPEG")
    (root / "val" / "cat" / "bad.jpg").write_bytes(b"")
    ds = load_folder(root)
    assert ds.class_names == ["cat", "dog"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 4}
    assert [Path(p).name for p, _ in ds.skipped] == ["bad.jpg"]


@pytest.mark.realdata
def test_real_flowers_folder_scans_fast():
    require_shared()
    ds = load_folder(FLOWERS, val_fraction=0.3, test_fraction=0.0, group_duplicates=False)
    assert ds.class_names == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert sum(len(s) for s in ds.splits.values()) == 4317 and ds.skipped == []
    stratified = np.round(0.3 * np.array([764, 1052, 784, 733, 984]))
    np.testing.assert_array_equal(np.bincount(ds.splits["val"].labels), stratified)
    # Keeping duplicate groups whole (the default) moves a few images between splits.
    grouped = load_folder(FLOWERS, val_fraction=0.3, test_fraction=0.0)
    np.testing.assert_allclose(np.bincount(grouped.splits["val"].labels), stratified, atol=4)
