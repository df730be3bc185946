"""Datasets from tensorflow-datasets: `dogs`, `dogs-v2` and `flowers`.

All three read already prepared tfds data from `cfg.path` (the tfds `data_dir`, CLI
`--data-dir`; default: tfds' own, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`). Training
never downloads: missing data is a `TltkError` naming the folder and the command that
builds it, `tltk data prepare` (see `tltk.data.prepare`). Labels are
read without decoding images, so splitting is fast; images are decoded only while a
split streams (`Split.source()`).

* `dogs` (tfds `stanford_dogs`, 120 breeds, 20,580 images). `split: default` follows the
  reference thesis: pool tfds train+test and take, per class, 30 images for validation
  and 20 for test, the rest for training (seeded). `split: official` keeps tfds'
  train/test and carves a stratified validation split of `val_fraction` from train.
  Class names are the breed names (`chihuahua`, `siberian_husky`, ...); `dog_wnids`
  gives their WordNet ids. The Dataset also has a `v2` split (see below) that every
  run evaluates on; it needs `imagenet_v2` prepared (`tltk data prepare dogs-v2`), and
  is left out only when `cfg.v2` is false (CLI `--no-v2`), never silently.
* `dogs-v2` (tfds `imagenet_v2`, config `matched-frequency`): the images of the 120
  Stanford Dogs classes, relabelled to the `dogs` class order by WordNet id; a
  test-only Dataset (`v2_split` builds its one split).
* `flowers` (tfds `tf_flowers`, 5 classes, 3,670 images, one tfds split): stratified
  into train/val by `val_fraction` (the thesis uses 70/30: val 0.3, test 0.0), plus a
  `test` split when `test_fraction` > 0. The Kaggle flower set used in the thesis is not
  in tfds; use it through the `folder` source instead (one subfolder per class, the same
  stratified split; its class names are singular: `rose`, not `roses`):
  `tltk train folder --data ../shared/data/flowers-128`, or the flower protocol with
  `recipes.run("flowers", data={"dataset": "folder", "path": "../shared/data/flowers-128"})`.

Example::

    cfg = DataConfig(dataset="dogs", path="/data/tfds")
    ds = load_dogs(cfg, seed=0)
    ds.class_names[:2], [len(ds.splits[s]) for s in ("val", "test")]
    # -> (['chihuahua', 'japanese_spaniel'], [3600, 2400])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tltk.data.core import AUTOTUNE, Dataset, Split, fingerprint, stratified_indices
from tltk.data.sources import register
from tltk.errors import TltkError

DOGS = "stanford_dogs"
DOGS_V2 = "imagenet_v2/matched-frequency"
FLOWERS = "tf_flowers"
# The thesis' fixed per-class hold-out for Stanford Dogs.
DOGS_PER_CLASS = {"val": 30, "test": 20}


class DataNotPrepared(TltkError):
    """A tfds dataset is not prepared in the data_dir."""


def tfds_builder(name: str, data_dir: str | None):
    """The tfds builder for `name` reading from `data_dir` (None: tfds' default)."""
    import tensorflow_datasets as tfds  # heavy; only tfds sources need it

    return tfds.builder(name, data_dir=str(Path(data_dir).expanduser()) if data_dir else None)


# What `tltk data prepare NAME` builds: tltk dataset name -> tfds name.
PREPARE = {"dogs": DOGS, "dogs-v2": DOGS_V2, "flowers": FLOWERS}


def _data_root(builder) -> Path:
    """The tfds data_dir a builder reads from (its own data_dir is NAME/[CONFIG/]VERSION)."""
    return Path(builder.data_dir).parents[builder.info.full_name.count("/")]


def _not_prepared(builder) -> DataNotPrepared:
    full = builder.info.full_name  # e.g. stanford_dogs/0.2.0
    name = full.rsplit("/", 1)[0]
    dataset = {tfds: ours for ours, tfds in PREPARE.items()}.get(name, name)
    root = _data_root(builder)
    return DataNotPrepared(
        f"--data-dir: tfds dataset '{full}' is not prepared in {root}; run `tltk data "
        f"prepare {dataset} --data-dir {root}` (it downloads; offline, put the prepared "
        f"files in {builder.data_dir}), then pass --data-dir {root}")


def read_tfds(builder, split: str, decoders=None) -> tf.data.Dataset:
    """`builder.as_dataset` in a fixed file order, never downloading.

    One shard at a time (interleave cycle 1) so that labels read in one pass line up
    with images streamed in another.
    """
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                  read_config=tfds.ReadConfig(interleave_cycle_length=1))
    except AssertionError:  # tfds' "could not find data in ..." when not prepared
        raise _not_prepared(builder) from None


def read_labels(builder, split: str) -> np.ndarray:
    """All labels of a tfds split, in file order, without decoding images."""
    import tensorflow_datasets as tfds

    ds = read_tfds(builder, split, tfds.decode.PartialDecoding({"label": True}))
    batches = list(ds.map(lambda ex: ex["label"]).batch(8192).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def tfds_split(builder, split: str, indices: np.ndarray, labels: np.ndarray, tag: str,
               relabel: np.ndarray | None = None) -> Split:
    """A Split over the examples of tfds `split` at sorted `indices`.

    `labels` are all of the tfds split's labels (from `read_labels`); `relabel` maps
    them to new class indices (for `dogs-v2`).
    """
    import tensorflow_datasets as tfds

    indices = np.asarray(indices, dtype=np.int64)
    mapping = np.arange(labels.max(initial=0) + 1) if relabel is None else relabel
    mapping = np.asarray(mapping, dtype=np.int32)
    keep = np.zeros(len(labels), dtype=bool)
    keep[indices] = True
    decoders = tfds.decode.PartialDecoding({"image": True, "label": True},
                                           decoders={"image": tfds.decode.SkipDecoding()})

    def source() -> tf.data.Dataset:
        mask, table = tf.constant(keep), tf.constant(mapping)

        def wanted(index, example):
            return mask[index]

        def decode(index, example):
            return _decode(example["image"]), tf.gather(table, example["label"])

        # Filter before decoding, so skipped examples cost only a read.
        ds = read_tfds(builder, split, decoders).enumerate().filter(wanted)
        return ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)

    tag = fingerprint(builder.info.full_name, split, tag, indices)
    return Split(labels=mapping[labels[indices]], source=source, fingerprint=tag)


# --- dogs ------------------------------------------------------------------------------

def _dog_label_names(builder) -> list[str]:
    """tfds label names `n02085620-chihuahua`, ... in label order.

    They come from the prepared data's metadata; an unprepared (or mocked) builder only
    knows generic class names, and then the published order is used (tfds sorts the names).
    """
    names = list(builder.info.features["label"].names)
    return names if all("-" in name for name in names) else list(STANFORD_DOGS)


def dog_wnids(builder) -> list[str]:
    """WordNet ids of the 120 `stanford_dogs` classes, in label order.

    Example:
        >>> dog_wnids(tfds_builder("stanford_dogs", None))[:2]
        ['n02085620', 'n02085782']
    """
    return [name.split("-", 1)[0] for name in _dog_label_names(builder)]


def dog_breeds(builder) -> list[str]:
    """Readable breed names of the `stanford_dogs` classes, e.g. `siberian_husky`."""
    return [name.split("-", 1)[1] for name in _dog_label_names(builder)]


@register("dogs")
def load_dogs(cfg, seed: int = 0) -> Dataset:
    """Stanford Dogs with the thesis split (`default`) or tfds' (`official`), plus `v2`."""
    builder = tfds_builder(DOGS, cfg.path)
    if cfg.split == "default":
        pool = "train+test"
        labels = read_labels(builder, pool)
        parts = stratified_indices(labels, {}, seed=seed, counts=DOGS_PER_CLASS)
        splits = {name: tfds_split(builder, pool, idx, labels, f"default/{name}/{seed}")
                  for name, idx in parts.items()}
    elif cfg.split == "official":
        train_labels, test_labels = read_labels(builder, "train"), read_labels(builder, "test")
        parts = stratified_indices(train_labels, {"val": cfg.val_fraction}, seed=seed)
        splits = {name: tfds_split(builder, "train", idx, train_labels,
                                   f"official/{name}/{seed}")
                  for name, idx in parts.items() if len(idx)}
        splits["test"] = tfds_split(builder, "test", np.arange(len(test_labels)),
                                    test_labels, "official/test")
    else:
        raise TltkError(f"data.split: unknown split '{cfg.split}' for dogs; "
                        "use default (thesis: 30 val + 20 test per class) or official")
    if cfg.v2:
        splits["v2"] = _dogs_v2(cfg, builder)
    return Dataset(name="dogs", class_names=dog_breeds(builder), splits=splits)


def _dogs_v2(cfg, builder) -> Split:
    try:
        return v2_split(cfg, dog_wnids(builder))
    except DataNotPrepared:
        root = _data_root(builder)
        raise DataNotPrepared(
            f"dogs: the ImageNetV2 'v2' split needs tfds '{DOGS_V2}' prepared in {root}; "
            f"run `tltk data prepare dogs-v2 --data-dir {root}`, or pass --no-v2 "
            "(data.v2: false) to evaluate on val and test only") from None


# --- dogs-v2 ---------------------------------------------------------------------------

def v2_split(cfg, dogs_wnids: list[str]) -> Split:
    """ImageNetV2 (matched-frequency) images of the dog classes, labelled in dogs order.

    ImageNet's label names are WordNet ids (tfds ships the list), so the mapping is by
    id. Raises `DataNotPrepared` when imagenet_v2 is not in `cfg.path`.
    """
    builder = tfds_builder(DOGS_V2, cfg.path)
    relabel = imagenet_to_dogs(builder.info.features["label"].names, dogs_wnids)
    labels = read_labels(builder, "test")
    keep = np.flatnonzero(relabel[labels] >= 0)
    return tfds_split(builder, "test", keep, labels, f"v2/{','.join(dogs_wnids)}", relabel)


def imagenet_to_dogs(imagenet_wnids: list[str], dogs_wnids: list[str]) -> np.ndarray:
    """For each ImageNet class index, its dogs class index, or -1 for other classes.

    Example:
        >>> imagenet_to_dogs(["n01440764", "n02085620"], ["n02085620"])
        array([-1,  0], dtype=int32)
    """
    index = {wnid: i for i, wnid in enumerate(dogs_wnids)}
    missing = sorted(set(dogs_wnids) - set(imagenet_wnids))
    if missing:
        raise TltkError(f"dogs-v2: dog classes not in the ImageNet label list: {missing}")
    return np.asarray([index.get(wnid, -1) for wnid in imagenet_wnids], dtype=np.int32)


@register("dogs-v2")
def load_dogs_v2(cfg, seed: int = 0) -> Dataset:
    """The test-only ImageNetV2 dogs set, in the class order of `dogs`."""
    dogs = tfds_builder(DOGS, cfg.path)
    split = v2_split(cfg, dog_wnids(dogs))
    return Dataset(name="dogs-v2", class_names=dog_breeds(dogs), splits={"test": split})


# --- flowers ---------------------------------------------------------------------------

@register("flowers")
def load_flowers(cfg, seed: int = 0) -> Dataset:
    """tf_flowers, split stratified by `val_fraction` (and `test_fraction` when > 0)."""
    builder = tfds_builder(FLOWERS, cfg.path)
    labels = read_labels(builder, "train")
    fractions = {"val": cfg.val_fraction, "test": cfg.test_fraction}
    parts = stratified_indices(labels, fractions, seed=seed)
    splits = {name: tfds_split(builder, "train", idx, labels, f"flowers/{name}/{seed}")
              for name, idx in parts.items() if len(idx)}
    names = list(builder.info.features["label"].names)
    return Dataset(name="flowers", class_names=names, splits=splits)


# The 120 Stanford Dogs classes as tfds names them ("<wnid>-<breed>", lower case), in tfds
# label order (sorted). Used when the prepared metadata is not at hand (dogs-v2 on its
# own, mocked tests); prepared stanford_dogs data always takes precedence.
STANFORD_DOGS = (
    "n02085620-chihuahua", "n02085782-japanese_spaniel", "n02085936-maltese_dog",
    "n02086079-pekinese", "n02086240-shih-tzu", "n02086646-blenheim_spaniel",
    "n02086910-papillon", "n02087046-toy_terrier", "n02087394-rhodesian_ridgeback",
    "n02088094-afghan_hound", "n02088238-basset", "n02088364-beagle", "n02088466-bloodhound",
    "n02088632-bluetick", "n02089078-black-and-tan_coonhound", "n02089867-walker_hound",
    "n02089973-english_foxhound", "n02090379-redbone", "n02090622-borzoi",
    "n02090721-irish_wolfhound", "n02091032-italian_greyhound", "n02091134-whippet",
    "n02091244-ibizan_hound", "n02091467-norwegian_elkhound", "n02091635-otterhound",
    "n02091831-saluki", "n02092002-scottish_deerhound", "n02092339-weimaraner",
    "n02093256-staffordshire_bullterrier", "n02093428-american_staffordshire_terrier",
    "n02093647-bedlington_terrier", "n02093754-border_terrier", "n02093859-kerry_blue_terrier",
    "n02093991-irish_terrier", "n02094114-norfolk_terrier", "n02094258-norwich_terrier",
    "n02094433-yorkshire_terrier", "n02095314-wire-haired_fox_terrier",
    "n02095570-lakeland_terrier", "n02095889-sealyham_terrier", "n02096051-airedale",
    "n02096177-cairn", "n02096294-australian_terrier", "n02096437-dandie_dinmont",
    "n02096585-boston_bull", "n02097047-miniature_schnauzer", "n02097130-giant_schnauzer",
    "n02097209-standard_schnauzer", "n02097298-scotch_terrier", "n02097474-tibetan_terrier",
    "n02097658-silky_terrier", "n02098105-soft-coated_wheaten_terrier",
    "n02098286-west_highland_white_terrier", "n02098413-lhasa", "n02099267-flat-coated_retriever",
    "n02099429-curly-coated_retriever", "n02099601-golden_retriever",
    "n02099712-labrador_retriever", "n02099849-chesapeake_bay_retriever",
    "n02100236-german_short-haired_pointer", "n02100583-vizsla", "n02100735-english_setter",
    "n02100877-irish_setter", "n02101006-gordon_setter", "n02101388-brittany_spaniel",
    "n02101556-clumber", "n02102040-english_springer", "n02102177-welsh_springer_spaniel",
    "n02102318-cocker_spaniel", "n02102480-sussex_spaniel", "n02102973-irish_water_spaniel",
    "n02104029-kuvasz", "n02104365-schipperke", "n02105056-groenendael", "n02105162-malinois",
    "n02105251-briard", "n02105412-kelpie", "n02105505-komondor",
    "n02105641-old_english_sheepdog", "n02105855-shetland_sheepdog", "n02106030-collie",
    "n02106166-border_collie", "n02106382-bouvier_des_flandres", "n02106550-rottweiler",
    "n02106662-german_shepherd", "n02107142-doberman", "n02107312-miniature_pinscher",
    "n02107574-greater_swiss_mountain_dog", "n02107683-bernese_mountain_dog",
    "n02107908-appenzeller", "n02108000-entlebucher", "n02108089-boxer", "n02108422-bull_mastiff",
    "n02108551-tibetan_mastiff", "n02108915-french_bulldog", "n02109047-great_dane",
    "n02109525-saint_bernard", "n02109961-eskimo_dog", "n02110063-malamute",
    "n02110185-siberian_husky", "n02110627-affenpinscher", "n02110806-basenji", "n02110958-pug",
    "n02111129-leonberg", "n02111277-newfoundland", "n02111500-great_pyrenees",
    "n02111889-samoyed", "n02112018-pomeranian", "n02112137-chow", "n02112350-keeshond",
    "n02112706-brabancon_griffon", "n02113023-pembroke", "n02113186-cardigan",
    "n02113624-toy_poodle", "n02113712-miniature_poodle", "n02113799-standard_poodle",
    "n02113978-mexican_hairless", "n02115641-dingo", "n02115913-dhole",
    "n02116738-african_hunting_dog",
)
