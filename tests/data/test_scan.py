"""The image scan (tltk.data.scan): cached per file, edits noticed, reasons written out."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image

from tests.data.conftest import load_folder
from tltk.data.scan import needs_conversion, scan_files, write_skipped_csv


def test_scan_is_cached_and_notices_edits(messy):
    root, _ = messy
    paths = sorted(p for p in (root / "plain").glob("*.jpg") if not p.name.startswith("."))
    first = scan_files(root, paths, progress=False)
    again = scan_files(root, paths, progress=False)
    assert first.opened == len(paths) and again.opened == 0
    assert again.files == first.files
    paths[0].write_bytes(b"")  # an edit: the file is now broken
    os.utime(paths[0], ns=(1, 1))
    third = scan_files(root, paths, progress=False)
    assert third.opened == 1 and third.skipped == [(str(paths[0]), "empty file (0 bytes)")]


def test_write_skipped_csv(messy, tmp_path):
    root, bad = messy
    ds = load_folder(root, val_fraction=0.25, test_fraction=0.0)
    write_skipped_csv(tmp_path / "run" / "skipped.csv", ds.skipped)
    table = pd.read_csv(tmp_path / "run" / "skipped.csv")
    assert list(table.columns) == ["path", "reason"]
    assert sorted(Path(p).name for p in table["path"]) == sorted(bad)


def test_formats_that_decode_directly_are_not_converted():
    assert needs_conversion("JPEG", "CMYK") and needs_conversion("PNG", "P")
    assert not needs_conversion("JPEG", "RGB") and not needs_conversion("PNG", "L")


def test_the_cache_is_keyed_by_file_not_by_folder(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / f"{name}.png")
    paths = sorted(tmp_path.glob("*.png"))
    assert scan_files(tmp_path, paths[:1], progress=False).opened == 1
    both = scan_files(tmp_path, paths, progress=False)
    assert both.opened == 1 and both.skipped == []  # only b.png was new
    assert len(both.used) == len(both.files) == 2
