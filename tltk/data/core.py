"""Data types shared by every source, and the tf.data input pipeline.

A source (demo, folder, tfds sets) returns a `Dataset`: class names plus named
`Split`s. A split knows its labels up front (for counts, class weights and
stratified subsets) and builds a `tf.data.Dataset` of `(uint8 image, label)` on
demand, in a fixed order aligned with `labels`.

Example::

    ds = tltk.data.load(DataConfig(dataset="demo"), seed=0)
    train = make_pipeline(ds.splits["train"], image_size=64, batch_size=32,
                          training=True, seed=0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class Split:
    """One split of a dataset.

    `source()` yields unbatched `(image uint8 [H, W, 3], label int32)` in the order of
    `labels`; images may have any size. `paths` is set for file-backed splits (used by
    reports to show misclassified images). `fingerprint` identifies the exact content
    (it keys the bottleneck feature cache).
    """

    labels: np.ndarray
    source: Callable[[], tf.data.Dataset]
    fingerprint: str
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A loaded dataset: class names and splits ('train', 'val', optional 'test', ...)."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def eval_splits(self) -> list[str]:
        """Splits reported in metrics: everything but 'train'."""
        return [name for name in self.splits if name != "train"]


def fingerprint(*parts) -> str:
    """A short stable hash of strings, numbers and numpy arrays."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def array_split(images: np.ndarray, labels: np.ndarray, tag: str) -> Split:
    """A split over in-memory uint8 images, shape [N, H, W, 3]."""
    labels = np.asarray(labels, dtype=np.int32)

    def source():
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return Split(labels=labels, source=source, fingerprint=fingerprint(tag, images, labels))


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """Decode a JPEG/PNG/GIF/BMP file to uint8 RGB (first frame of animations)."""
    return decode_image_bytes(tf.io.read_file(path))


def decode_image_bytes(data: tf.Tensor) -> tf.Tensor:
    """Decode encoded JPEG/PNG/GIF/BMP bytes to uint8 RGB (first frame of animations)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def file_split(paths: list[str], labels, fingerprint_parts=()) -> Split:
    """A split over image files on disk."""
    paths = [str(p) for p in paths]
    labels = np.asarray(labels, dtype=np.int32)

    def source():
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return ds.map(lambda p, y: (decode_image_file(p), y), num_parallel_calls=AUTOTUNE,
                      deterministic=True)

    tag = fingerprint("files", *paths, labels, *fingerprint_parts)
    return Split(labels=labels, source=source, fingerprint=tag, paths=paths)


def resize(image: tf.Tensor, size: int, policy: str = "stretch") -> tf.Tensor:
    """Resize one image to size x size; returns float32 in 0..255.

    policy: `stretch` ignores aspect; `crop` keeps aspect and centre-crops;
    `pad` keeps aspect and pads with black.
    """
    image = tf.cast(image, tf.float32)
    if policy == "stretch":
        out = tf.image.resize(image, (size, size), antialias=True)
    elif policy == "crop":
        out = _resize_crop(image, size)
    elif policy == "pad":
        out = tf.image.resize_with_pad(image, size, size, antialias=True)
    else:
        raise ValueError(f"unknown resize policy {policy!r}: use stretch, crop or pad")
    return tf.clip_by_value(out, 0.0, 255.0)


def prepare_image(image: tf.Tensor, size: int, policy: str = "stretch") -> tf.Tensor:
    """Resize one decoded image and round it to uint8, exactly as every pipeline does.

    Example:
        >>> prepare_image(tf.zeros([40, 30, 3], tf.uint8), 32).dtype
        tf.uint8
    """
    return tf.cast(tf.round(resize(image, size, policy)), tf.uint8)


def _resize_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    image = tf.image.resize(image, new, antialias=True)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def stratified_indices(labels: np.ndarray, fractions: dict[str, float], seed: int,
                       counts: dict[str, int] | None = None,
                       groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Split indices per class, deterministically for a seed.

    Either `fractions` (e.g. {"val": .15, "test": .15}) or fixed per-class `counts`
    (e.g. {"val": 30, "test": 20}); the remainder goes to "train". With `groups` (a group
    id per example, e.g. duplicates of one photo), each group lands whole in one split:
    groups are dealt in the class of their first example, and a split takes whole groups
    until it holds its share. Without groups every example is its own group, which draws
    exactly the split drawn before groups existed.

    Example:
        >>> parts = stratified_indices(np.repeat([0, 1], 10), {"val": .2}, seed=0)
        >>> [len(parts[k]) for k in ("train", "val")]
        [16, 4]
    """
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(np.bincount(inverse))[:-1])  # examples per group, in order
    leads = np.zeros(len(labels), bool)
    leads[first] = True
    rng = np.random.default_rng(seed)
    names = list(counts or fractions)
    out: dict[str, list] = {name: [] for name in ["train", *names]}
    for cls in np.unique(labels):
        leaders = np.flatnonzero((labels == cls) & leads)
        order = rng.permutation(leaders)
        size = int(np.sum(labels[np.concatenate([members[inverse[i]] for i in leaders])]
                          == cls)) if len(leaders) else 0
        position = 0
        for name in names:
            n = counts[name] if counts else int(round(fractions[name] * size))
            taken = 0
            while position < len(order) and taken < n:
                group = members[inverse[order[position]]]
                out[name].extend(group)
                taken += np.sum(labels[group] == cls)
                position += 1
        for leader in order[position:]:
            out["train"].extend(members[inverse[leader]])
    return {name: np.sort(np.asarray(v, dtype=np.int64)) for name, v in out.items()}


def subsample_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of at most `per_class` examples of each class, sorted."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def subset(split: Split, indices: np.ndarray, tag: str = "") -> Split:
    """A split holding the examples of `split` at `indices` (in that order)."""
    indices = np.asarray(indices, dtype=np.int64)
    if split.paths is not None:
        return file_split([split.paths[i] for i in indices], split.labels[indices], (tag,))
    keep = tf.constant(np.isin(np.arange(len(split)), indices))

    def source():
        ds = split.source().enumerate()
        return ds.filter(lambda i, _: keep[i]).map(lambda _, example: example)

    order_ok = np.all(np.diff(indices) > 0)
    if not order_ok:
        raise ValueError("subset indices of a streamed split must be sorted and unique")

    def counted_source():
        # A filter hides the length; Keras then runs one extra step per epoch.
        return source().apply(tf.data.experimental.assert_cardinality(len(indices)))

    return Split(labels=split.labels[indices], source=counted_source,
                 fingerprint=fingerprint(split.fingerprint, indices, tag))


def make_pipeline(split: Split, image_size: int, batch_size: int, *, training: bool,
                  seed: int, augment=None, resize_policy: str = "stretch",
                  cache: bool = True, repeat: bool = False) -> tf.data.Dataset:
    """Batched `(float32 image 0..255, label)` pipeline for a split.

    Decoding and resizing run in parallel and are cached in memory (when `cache`);
    training pipelines are shuffled with a seed (reshuffled every epoch) and passed
    through `augment` (a Keras layer applied per batch) when given.
    """
    # Resized images are rounded to uint8, as a saved image would be: training,
    # feature extraction and evaluation then see identical pixels, and the cache is 4x smaller.
    ds = split.source().map(lambda x, y: (prepare_image(x, image_size, resize_policy), y),
                            num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(split), 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    # The augmenter warps the uint8 batch (faster) and returns float32.
    prepare = (lambda x: augment(x, training=True)) if augment is not None else \
        (lambda x: tf.cast(x, tf.float32))
    ds = ds.map(lambda x, y: (prepare(x), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def images_fit_in_memory(n: int, image_size: int, budget_bytes: float = 4e9) -> bool:
    """Whether n uint8 images of image_size^2 x 3 fit the in-memory cache budget."""
    return n * image_size * image_size * 3 < budget_bytes


def decode_split(split: Split, image_size: int, batch_size: int = 32,
                 resize_policy: str = "stretch") -> np.ndarray:
    """A split decoded and resized into one preallocated uint8 array [N, S, S, 3].

    Example::

        decode_split(dataset.splits["val"], 64).shape
        # (180, 64, 64, 3)
    """
    images = np.empty((len(split), image_size, image_size, 3), np.uint8)
    filled = 0
    for batch, _ in make_pipeline(split, image_size, batch_size, training=False, seed=0,
                                  resize_policy=resize_policy, cache=False):
        images[filled:filled + len(batch)] = tf.cast(batch, tf.uint8).numpy()
        filled += len(batch)
    return images
