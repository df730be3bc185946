"""Duplicate images in a folder, found from the pixels alone, and the groups a split keeps whole.

Three signatures per file, computed once and cached beside the folder scan (keyed by each
file's path, size and mtime): the SHA-256 of its bytes, the SHA-256 of its decoded RGB
pixels, and a 16x16 RGB thumbnail with each channel's mean removed, scaled to unit length.
Two files are duplicates when their bytes or pixels are equal, or when their thumbnails'
cosine reaches `PIXEL_THRESHOLD`. Connected files form one group (`duplicate_groups`), which
`tltk.data.core.stratified_indices(groups=...)` keeps in a single split.

The split depends on the images only, never on a backbone: every backbone and image size
sees the same split, so runs stay comparable and `tltk ensemble` can average them.
`tltk audit` adds near duplicates found on a backbone's pooled features.

Example::

    sigs = signatures(Path("photos"), scanned_files)
    groups = duplicate_groups(sigs)      # group id per file; equal ids must not be split
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tltk.data.scan import WORKERS, ScannedFile, cache_root, to_rgb
from tltk.fileio import write_text

log = logging.getLogger(__name__)

SIGNATURE_VERSION = 1  # bump when a signature changes, so old cache entries are ignored
THUMB = 16  # thumbnail side: resized and re-encoded copies agree at this scale
# Thumbnail cosine at which two photos are the same picture. Measured on flowers-128
# (9.3 M pairs), judged by eye: the 22 pairs at >= 0.955 are copies (resized, re-encoded,
# recoloured, greyscale; 16 of them also reach 0.92 on EfficientNet-Lite0 features); the
# next pair down, at 0.950, is two different sunflower fields, and most pairs between 0.90
# and 0.95 are different photos of similar scenes.
PIXEL_THRESHOLD = 0.955
BLOCK = 2048  # rows of the similarity matrix computed at once (memory: BLOCK x N floats)


@dataclass
class Signatures:
    """Per-file signatures, in the order of the files given to `signatures`."""

    files: list[ScannedFile]
    bytes_sha: list[str]
    pixels_sha: list[str]
    thumbs: np.ndarray  # [N, THUMB * THUMB * 3], unit rows (zero for a flat image)


def _signature(found: ScannedFile) -> dict:
    data = Path(found.path).read_bytes()
    with Image.open(found.decode_path) as image:
        rgb = to_rgb(image)
    pixels = np.asarray(rgb)
    thumb = np.asarray(rgb.resize((THUMB, THUMB), Image.BOX), np.uint8)
    return {"bytes": hashlib.sha256(data).hexdigest(),
            "pixels": hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest(),
            "thumb": base64.b64encode(thumb.tobytes()).decode()}


def _unit_thumbs(encoded: list[str]) -> np.ndarray:
    """Thumbnails as unit rows with each channel's mean removed (a colour cast is not
    content); a flat image gives a zero row, similar to nothing."""
    thumbs = np.frombuffer(b"".join(base64.b64decode(t) for t in encoded), np.uint8)
    thumbs = thumbs.reshape(len(encoded), THUMB * THUMB, 3).astype(np.float32)
    thumbs = (thumbs - thumbs.mean(axis=1, keepdims=True)).reshape(len(encoded), -1)
    norms = np.linalg.norm(thumbs, axis=1, keepdims=True)
    return thumbs / np.where(norms > 0, norms, 1)


def signatures(root: Path, files: list[ScannedFile]) -> Signatures:
    """Signatures of the usable `files` below `root`, reusing cached ones.

    Example::

        sigs = signatures(root, used_files)
        len(sigs.bytes_sha) == len(used_files)  # -> True
    """
    root = Path(root).expanduser().resolve()
    cache_file = cache_root() / "signatures" / (
        hashlib.sha256(str(root).encode()).hexdigest()[:16] + ".json")
    cached = _read_cache(cache_file)

    def stamp(found):
        return [found.size, found.mtime_ns]

    todo = [f for f in files if cached.get(f.path, {}).get("stamp") != stamp(f)]
    if todo:
        with ThreadPoolExecutor(WORKERS) as pool:
            for found, sig in zip(todo, pool.map(_signature, todo)):
                cached[found.path] = {"stamp": stamp(found), **sig}
        try:
            write_text(cache_file, json.dumps({"version": SIGNATURE_VERSION, "files": cached}))
        except OSError as exc:  # a read-only home must not stop training
            log.warning("could not write the signature cache %s: %s", cache_file, exc)
    rows = [cached[f.path] for f in files]
    return Signatures(files, [r["bytes"] for r in rows], [r["pixels"] for r in rows],
                      _unit_thumbs([r["thumb"] for r in rows]))


def _read_cache(cache_file: Path) -> dict:
    """The cached entries; a damaged cache is logged and rebuilt."""
    if not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text())
        files = data["files"] if data.get("version") == SIGNATURE_VERSION else {}
        if not all(isinstance(e, dict) and {"stamp", "bytes", "pixels", "thumb"} <= set(e)
                   for e in files.values()):
            raise ValueError("malformed entries")
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("signature cache %s is damaged: rebuilding it", cache_file)
        return {}


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of rows whose cosine is at least `threshold`, with the cosines.

    Rows are L2-normalised here; the N x N similarity is computed `BLOCK` rows at a time.

    Example:
        >>> pairs, cos = similar_pairs(np.array([[1., 0], [2., .01], [0, 1]]), 0.99)
        >>> pairs.tolist(), cos.round(3).tolist()
        ([[0, 1]], [1.0])
    """
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1)
    pairs, scores = [], []
    for start in range(0, len(unit), BLOCK):
        sims = unit[start:start + BLOCK] @ unit.T
        i, j = np.nonzero(sims >= threshold)
        i = i + start
        keep = j > i
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
        scores.append(sims[i[keep] - start, j[keep]])
    return (np.concatenate(pairs).astype(np.int64).reshape(-1, 2),
            np.concatenate(scores).astype(np.float64))


def exact_pairs(keys: list[str]) -> np.ndarray:
    """Pairs (first index, other index) of equal keys: each member linked to the first.

    Example:
        >>> exact_pairs(["a", "b", "a", "a"]).tolist()
        [[0, 2], [0, 3]]
    """
    first: dict[str, int] = {}
    pairs = []
    for index, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], index))
        else:
            first[key] = index
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of n items linked by `pairs`: a group id per item.

    Example:
        >>> components(4, np.array([[0, 2]])).tolist()
        [0, 1, 0, 2]
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def duplicate_pairs(sigs: Signatures) -> np.ndarray:
    """All pixel-level duplicate links: equal bytes, equal pixels, similar thumbnails."""
    near, _ = similar_pairs(sigs.thumbs, PIXEL_THRESHOLD)
    return np.concatenate([exact_pairs(sigs.bytes_sha), exact_pairs(sigs.pixels_sha), near])


def duplicate_groups(sigs: Signatures) -> np.ndarray:
    """A group id per file; files that duplicate each other (directly or through others)
    share one."""
    return components(len(sigs.files), duplicate_pairs(sigs))


def conflicting_copies(sigs: Signatures, labels: np.ndarray) -> list[list[int]]:
    """Groups of byte-identical files filed under more than one class (indices).

    Example::

        conflicting_copies(sigs, labels)  # -> [[812, 3901], ...]
    """
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(sigs.bytes_sha):
        groups.setdefault(key, []).append(index)
    return [members for members in groups.values()
            if len(members) > 1 and len(set(labels[members].tolist())) > 1]
