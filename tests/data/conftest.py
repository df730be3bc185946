"""Image folders for the folder source and the scan: odd modes, bad files, hidden ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tltk.config import DataConfig
from tltk.data import load

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 40), (30, 40, 230)
WHITE = (255, 255, 255)


def solid(colour, size=(24, 20)) -> Image.Image:
    return Image.new("RGB", size, colour)


def save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)
    return path


def half_transparent(colour) -> Image.Image:
    """Left half opaque `colour`, right half fully transparent (black underneath)."""
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[:, :12, :3], rgba[:, :12, 3] = colour, 255
    return Image.fromarray(rgba, "RGBA")


# Good files in odd formats/modes, with the colour every pixel must have after decoding
# (None: the RGBA images, checked separately for the white background).
GOOD = {
    "gray.jpg": (lambda p: save(solid(RED).convert("L"), p, "JPEG", quality=100), None),
    "cmyk.jpg": (lambda p: save(solid(GREEN).convert("CMYK"), p, "JPEG", quality=100), GREEN),
    "palette.png": (lambda p: save(solid(BLUE).convert("P"), p, "PNG"), BLUE),
    "rgba.png": (lambda p: save(half_transparent(RED), p, "PNG"), None),
    "frames.gif": (lambda p: save(solid(GREEN), p, "GIF", save_all=True,
                                  append_images=[solid(RED)]), GREEN),
    "palette.bmp": (lambda p: save(solid(BLUE).convert("P"), p, "BMP"), BLUE),
    "mono.bmp": (lambda p: save(solid(WHITE).convert("1"), p, "BMP"), WHITE),
    "photo.webp": (lambda p: save(solid(RED), p, "WEBP", lossless=True), RED),
    "uppercase.JPEG": (lambda p: save(solid(BLUE), p, "JPEG", quality=100), BLUE),
}


def make_bad(folder: Path) -> dict[str, str]:
    """Write every kind of bad file; returns {file name: expected words in the reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    whole = save(solid(RED, (64, 64)), folder / "truncated.jpg", "JPEG")
    whole.write_bytes(whole.read_bytes()[:300])
    (folder / "notes.jpg").write_text("these are my notes, not a picture\n")
    png = save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3),
                                                                 dtype=np.uint8)),
               folder / "corrupt.png", "PNG")
    data = bytearray(png.read_bytes())
    start = data.index(b"IDAT") + 14
    data[start:start + 200] = bytes(200)
    png.write_bytes(bytes(data))
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "notes.jpg": "not an image",
            "corrupt.png": "corrupt"}


@pytest.fixture
def messy(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "messy"
    for name, (write, _) in GOOD.items():
        write(root / "odd" / name)
    bad = make_bad(root / "odd")
    for i in range(6):
        save(solid((i * 40, 100, 200 - i * 30)), root / "plain" / f"p{i}.jpg", "JPEG")
    save(solid(RED), root / "plain" / ".hidden.jpg", "JPEG")
    (root / "plain" / "readme.txt").write_text("ignored")
    save(solid(RED), root / ".thumbs" / "x.jpg", "JPEG")  # a hidden folder is no class
    return root, bad


def load_folder(root: Path, **kwargs):
    cfg = DataConfig(dataset="folder", path=str(root), **kwargs)
    return load(cfg, seed=0)
