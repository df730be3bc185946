"""A one-time, cached scan of image files: what can be used, what must be skipped and why.

Every file is opened and fully decoded with Pillow (in a thread pool; Pillow releases
the GIL while decoding). A file that is empty, not an image, truncated, corrupt or
unreadable is *skipped* with a one-line reason. A good file is *used*: the training
pipeline reads it either as it is or, for formats and modes that TensorFlow decodes
wrongly or not at all, from an RGB PNG copy converted once here (see `needs_conversion`).

Results are cached per file under `$TLTK_CACHE/scans/` (default `~/.cache/tltk`), keyed
by the folder's absolute path and each file's size and mtime, so a rescan only opens new
or changed files. Nothing is ever written into the data folder.

Example::

    result = scan_files(Path("photos"), sorted(Path("photos").rglob("*.jpg")))
    len(result.used) + len(result.skipped) == len(result.files)  # -> True
    write_skipped_csv("runs/x/skipped.csv", result.skipped)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from tltk.errors import TltkError
from tltk.fileio import atomic_path, write_csv, write_text

log = logging.getLogger(__name__)

SCAN_VERSION = 1  # bump when the rules below change, so old cache entries are ignored
# Formats and Pillow modes that tf.io.decode_image reads exactly as Pillow does. Anything
# else is converted: TF silently mis-decodes some (8-bit palette BMP), rejects others
# (1-bit BMP, TIFF), drops alpha without compositing, and its CMYK/16-bit handling
# differs between versions, so we do not rely on it for them.
DIRECT_FORMATS = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "L"}}
WORKERS = min(8, 2 * (os.cpu_count() or 1))  # decoding is I/O and C bound: a few threads
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


def cache_root() -> Path:
    """Root of tltk's caches: `$TLTK_CACHE`, or `~/.cache/tltk`."""
    return Path(os.environ.get("TLTK_CACHE") or Path.home() / ".cache" / "tltk")


@dataclass(frozen=True)
class ScannedFile:
    """The outcome for one file.

    `decode_path` is the file the pipeline reads (the original or a converted copy);
    it is None exactly when the file is skipped, and `reason` then says why.
    """

    path: str
    decode_path: str | None
    reason: str | None
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    size: int = 0  # bytes
    mtime_ns: int = 0

    @property
    def ok(self) -> bool:
        return self.decode_path is not None


@dataclass
class ScanResult:
    """All files of one scan, in the order given, plus timing."""

    files: list[ScannedFile]
    seconds: float
    opened: int  # files opened in this scan (the rest came from the cache)

    @property
    def used(self) -> list[ScannedFile]:
        return [f for f in self.files if f.ok]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) for every skipped file."""
        return [(f.path, f.reason) for f in self.files if not f.ok]


def needs_conversion(fmt: str, mode: str) -> bool:
    """Whether a file must be re-encoded as RGB PNG before TensorFlow reads it.

    Example:
        >>> needs_conversion("JPEG", "CMYK"), needs_conversion("PNG", "L")
        (True, False)
    """
    return mode not in DIRECT_FORMATS.get(fmt, set())


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha over white, 16-bit scaled to 8-bit)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit (and 32-bit integer PNG) data spans 0..65535; Pillow's own conversion clips.
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _inspect(path: Path, converted_dir: Path, stat: os.stat_result | None) -> ScannedFile:
    """Open and fully decode one file; convert it when TensorFlow cannot read it as is."""
    size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)
    try:
        image = _decode(path)
    except _Skip as skip:
        return ScannedFile(str(path), None, str(skip), size=size, mtime_ns=mtime)
    fmt, mode, (width, height) = image.format or "", image.mode, image.size
    decode_path = path
    if needs_conversion(fmt, mode):
        # Keyed by path, size and mtime: an edited file gets a fresh copy.
        key = hashlib.sha256(f"{path.resolve()}|{size}|{mtime}".encode()).hexdigest()
        decode_path = converted_dir / f"{path.stem}-{key[:10]}.png"
        if not decode_path.is_file():
            _write_converted(image, decode_path)
    image.close()
    return ScannedFile(str(path), str(decode_path), None, width, height, fmt, mode, size, mtime)


def _write_converted(image: Image.Image, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            to_rgb(image).save(tmp, format="PNG")
    except OSError as exc:
        raise TltkError(f"cannot write a converted copy of an image to {path.parent}: "
                        f"{exc.strerror or exc}; free disk space or point TLTK_CACHE "
                        "at a writable folder") from None


class _Skip(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


def _decode(path: Path) -> Image.Image:
    """The fully decoded image at `path`, or `_Skip` with the reason it is unusable."""
    try:
        if path.stat().st_size == 0:
            raise _Skip("empty file (0 bytes)")
        image = Image.open(path)  # reads the header only
        try:
            # Checked by hand: warnings filters are process-wide, not per thread.
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise _Skip(f"too large: {image.width}x{image.height} pixels")
            image.load()  # a full decode: catches truncated and corrupt data
        except BaseException:
            image.close()
            raise
        return image
    except UnidentifiedImageError:
        raise _Skip("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise _Skip(f"too large: {_first_line(exc)}") from None
    except (PermissionError, FileNotFoundError) as exc:
        raise _Skip(f"unreadable: {exc.strerror}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError / ValueError.
        raise _Skip(f"truncated or corrupt: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def scan_files(root: Path, paths: list[Path], progress: bool = True) -> ScanResult:
    """Scan `paths` (files below the folder `root`), reusing cached results.

    Example::

        result = scan_files(root, list_of_paths)
        result.skipped[:1]
        # -> [('root/cat/broken.jpg', 'truncated or corrupt: image file is truncated')]
    """
    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    root_id = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    cache_file = cache_root() / "scans" / f"{root_id}.json"
    converted_dir = cache_root() / "converted" / root_id
    cached = _read_cache(cache_file)
    stats = {p: _stat(p) for p in paths}
    results = {p: _cached(cached, p, stats[p]) for p in paths}
    todo = [p for p in paths if results[p] is None]
    if todo:
        with ThreadPoolExecutor(WORKERS) as pool:
            jobs = pool.map(lambda p: _inspect(p, converted_dir, stats[p]), todo)
            # disable=None: tqdm shows the bar only on a terminal.
            bar = tqdm(jobs, total=len(todo), desc=f"scan {root.name}", unit="file",
                       disable=None if progress else True)
            for path, found in zip(todo, bar):
                results[path] = found
        _write_cache(cache_file, root, results, stats)
    seconds = time.perf_counter() - start
    if todo:
        log.info("scanned %d files in %s in %.1f s (%d from cache)", len(paths), root,
                 seconds, len(paths) - len(todo))
    return ScanResult([results[p] for p in paths], seconds, len(todo))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _read_cache(cache_file: Path) -> dict:
    """The cached entries; a damaged cache is logged, deleted and rebuilt by the scan."""
    if not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text())
        files = data.get("files", {}) if data.get("version") == SCAN_VERSION else {}
        if not isinstance(files, dict) or not all(_valid_entry(e) for e in files.values()):
            raise ValueError("malformed entries")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("scan cache %s is damaged (%s): deleted, rescanning", cache_file,
                    type(exc).__name__ if not isinstance(exc, ValueError) else "not valid")
        with contextlib.suppress(OSError):  # a read-only cache is simply not reused
            cache_file.unlink(missing_ok=True)
        return {}
    return files


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("size"), int)
            and isinstance(entry.get("mtime_ns"), int) and isinstance(entry.get("result"), dict)
            and set(entry["result"]) == {f.name for f in fields(ScannedFile)})


def _cached(cached: dict, path: Path, stat) -> ScannedFile | None:
    """The cached result for `path` when its size and mtime are unchanged."""
    entry = cached.get(str(path))
    if not entry or stat is None:
        return None
    if entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
        return None
    found = ScannedFile(**entry["result"])
    # A converted copy may have been cleaned out of the cache since.
    if found.ok and not Path(found.decode_path).is_file():
        return None
    return found


def _write_cache(cache_file: Path, root: Path, results: dict, stats: dict) -> None:
    files = {str(p): {"size": stats[p].st_size, "mtime_ns": stats[p].st_mtime_ns,
                      "result": asdict(found)}
             for p, found in results.items() if stats[p] is not None}
    old = _read_cache(cache_file)
    old.update(files)  # a scan of some files must not forget the others
    try:
        write_text(cache_file, json.dumps({"version": SCAN_VERSION, "root": str(root),
                                           "files": old}))
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not write the scan cache %s: %s", cache_file, exc)


def write_skipped_csv(path: str | Path, skipped: list[tuple[str, str]]) -> None:
    """Write `skipped` as a CSV with columns path,reason (atomically).

    Example::

        write_skipped_csv(run.file("skipped.csv"), dataset.skipped)
    """
    write_csv(Path(path), pd.DataFrame(list(skipped), columns=["path", "reason"]))
