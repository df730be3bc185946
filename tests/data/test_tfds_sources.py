"""tfds sources (`dogs`, `dogs-v2`, `flowers`) under `tfds.testing.mock_data`.

The mock's `as_dataset_fn` serves small in-memory splits whose every image is a solid
colour encoding its original label, so a test can check that streamed images, labels
and the v2 relabelling line up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from tests.conftest import colour, mocked
from tltk.config import DataConfig
from tltk.data import SOURCES, load, make_pipeline
from tltk.data.tfds_sources import (
    STANFORD_DOGS,
    dog_wnids,
    imagenet_to_dogs,
    load_dogs,
    load_dogs_v2,
    tfds_builder,
    v2_split,
)
from tltk.errors import TltkError

DOG_TRAIN, DOG_TEST = 36, 16  # per class: 52 >= the 30 + 20 the thesis split holds out


def label_of(image: np.ndarray) -> int:
    red, green = image[0, 0, :2].astype(int)
    return round(red / 5) + 50 * round(green / 12)


def fake_splits() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "stanford_dogs": {"train": rng.permutation(np.repeat(np.arange(120), DOG_TRAIN)),
                          "test": np.repeat(np.arange(120), DOG_TEST)},
        "imagenet_v2": {"test": rng.permutation(np.repeat(np.arange(1000), 2))},
        "tf_flowers": {"train": np.repeat(np.arange(5), [60, 80, 70, 50, 40])},
    }


def stream(split) -> tuple[list[int], list[int]]:
    """(labels yielded, labels encoded in the images) of a whole split."""
    pairs = [(int(y), label_of(x.numpy())) for x, y in split.source()]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.slow
def test_dogs_default_split_follows_the_thesis():
    with mocked(fake_splits()):
        ds = load(DataConfig(dataset="dogs", split_seed=3), seed=3)
        again = load(DataConfig(dataset="dogs", split_seed=3), seed=3)
        other = load(DataConfig(dataset="dogs", split_seed=4), seed=3)
        # The split follows data.split_seed, not the run's seed (fixed at 0 by default).
        default = load(DataConfig(dataset="dogs"), seed=3)
        reseeded = load(DataConfig(dataset="dogs"), seed=4)
        streamed, encoded = stream(ds.splits["test"])
    assert ds.num_classes == 120 and ds.class_names[0] == "chihuahua"
    assert "siberian_husky" in ds.class_names
    sizes = {name: len(split) for name, split in ds.splits.items()}
    assert sizes == {"train": 120 * 2, "val": 120 * 30, "test": 120 * 20, "v2": 240}
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(np.bincount(ds.splits[name].labels),
                                      np.full(120, sizes[name] // 120))
        assert ds.splits[name].fingerprint == again.splits[name].fingerprint
        assert ds.splits[name].fingerprint != other.splits[name].fingerprint
        assert default.splits[name].fingerprint == reseeded.splits[name].fingerprint
    assert len({split.fingerprint for split in ds.splits.values()}) == 4
    assert streamed == encoded == ds.splits["test"].labels.tolist()


def test_dogs_official_split_carves_val_from_train():
    with mocked(fake_splits()):
        ds = load(DataConfig(dataset="dogs", split="official", val_fraction=0.25), seed=0)
        streamed, encoded = stream(ds.splits["val"])
    assert {k: len(v) for k, v in ds.splits.items()} == {
        "train": 120 * 27, "val": 120 * 9, "test": 120 * DOG_TEST, "v2": 240}
    assert streamed == encoded == ds.splits["val"].labels.tolist()
    with mocked(fake_splits()), pytest.raises(TltkError, match="data.split.*official"):
        load(DataConfig(dataset="dogs", split="thesis"), seed=0)


def test_dogs_v2_is_relabelled_to_the_dogs_classes():
    imagenet = list(tfds_builder("imagenet_v2/matched-frequency", None)
                    .info.features["label"].names)
    with mocked(fake_splits()):
        dogs = load_dogs_v2(DataConfig(dataset="dogs-v2"), seed=0)
        streamed, original = stream(dogs.splits["test"])
    wnids = [name.split("-")[0] for name in STANFORD_DOGS]
    assert list(dogs.splits) == ["test"] and dogs.eval_splits() == ["test"]
    assert dogs.num_classes == 120 and dogs.class_names[-1] == "african_hunting_dog"
    assert len(streamed) == 240 and sorted(set(streamed)) == list(range(120))
    assert streamed == dogs.splits["test"].labels.tolist()
    for new, old in zip(streamed, original):
        assert wnids[new] == imagenet[old]  # same WordNet id before and after


def test_imagenet_dog_mapping_is_one_to_one():
    imagenet = tfds_builder("imagenet_v2/matched-frequency", None).info.features["label"]
    dogs = dog_wnids(tfds_builder("stanford_dogs", None))
    table = imagenet_to_dogs(imagenet.names, dogs)
    assert len(imagenet.names) == 1000 and len(dogs) == 120
    hits = np.flatnonzero(table >= 0)
    assert sorted(table[hits]) == list(range(120))  # every dog class exactly once
    assert [imagenet.names[i] for i in hits[np.argsort(table[hits])]] == dogs
    with pytest.raises(TltkError, match="not in the ImageNet label list"):
        imagenet_to_dogs(imagenet.names, dogs + ["n99999999"])


def test_dogs_without_imagenet_v2_fails_unless_v2_is_turned_off():
    splits = fake_splits()
    del splits["imagenet_v2"]
    with mocked(splits):
        with pytest.raises(TltkError) as info:
            load_dogs(DataConfig(dataset="dogs"), seed=0)
        ds = load_dogs(DataConfig(dataset="dogs", v2=False), seed=0)
        with pytest.raises(TltkError, match="imagenet_v2/matched-frequency"):
            v2_split(DataConfig(dataset="dogs-v2"), dog_wnids(tfds_builder("stanford_dogs",
                                                                            None)))
    message = str(info.value)
    assert "\n" not in message and "tltk data prepare dogs-v2" in message
    assert "--no-v2" in message and "imagenet_v2/matched-frequency" in message
    assert set(ds.splits) == {"train", "val", "test"}


@pytest.mark.parametrize("test_fraction", [0.0, 0.2])
def test_flowers_stratified_70_30(test_fraction):
    counts = np.array([60, 80, 70, 50, 40])
    cfg = DataConfig(dataset="flowers", val_fraction=0.3, test_fraction=test_fraction)
    with mocked(fake_splits()):
        ds = load(cfg, seed=0)
        same = load(cfg, seed=0)
        batches = list(make_pipeline(ds.splits["val"], image_size=32, batch_size=64,
                                     training=False, seed=0))
    assert ds.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert set(ds.splits) == ({"train", "val", "test"} if test_fraction else {"train", "val"})
    np.testing.assert_array_equal(np.bincount(ds.splits["val"].labels), np.round(0.3 * counts))
    total = sum(len(split) for split in ds.splits.values())
    assert total == counts.sum()
    assert all(ds.splits[k].fingerprint == same.splits[k].fingerprint for k in ds.splits)
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert batches[0][0].shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(labels, ds.splits["val"].labels)
    assert labels.min() >= 0 and labels.max() < 5


@pytest.mark.parametrize("dataset,full_name", [("dogs", "stanford_dogs/0.2.0"),
                                               ("flowers", "tf_flowers/3.0.1"),
                                               ("dogs-v2", "imagenet_v2/matched-frequency")])
def test_missing_data_is_one_clear_error(tmp_path, dataset, full_name):
    with pytest.raises(TltkError) as info:
        SOURCES[dataset](DataConfig(dataset=dataset, path=str(tmp_path)), 0)
    message = str(info.value)
    assert "\n" not in message and full_name in message and str(tmp_path) in message
    assert "--data-dir" in message and not any(tmp_path.iterdir())  # nothing downloaded
    assert f"tltk data prepare {dataset} --data-dir {tmp_path}" in message


@pytest.fixture(scope="module")
def prepared_dogs(tmp_path_factory):
    """A tiny but real (not mocked) prepared stanford_dogs in a tfds data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    base = tfds.builder_cls("stanford_dogs")

    class TinyDogs(base, skip_registration=True):
        name = "stanford_dogs"

        def _split_generators(self, dl_manager):
            self.info.features["label"].names = list(STANFORD_DOGS)
            return {"train": self._generate_examples(0, 40), "test": self._generate_examples(1, 11)}

        def _generate_examples(self, part, per_class):
            for label in (3, 7, 100):
                for i in range(per_class):
                    image = np.zeros((8 + i % 3, 9, 3), np.uint8) + np.uint8(colour(label))
                    yield f"{part}-{label}-{i}", {"image": image, "label": label,
                                                  "image/filename": f"{label}_{i}.jpg",
                                                  "objects": []}

    TinyDogs(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def test_dogs_reads_real_prepared_tfds_data(prepared_dogs):
    # Only stanford_dogs is prepared there, so v2 is turned off (else it is an error).
    ds = load_dogs(DataConfig(dataset="dogs", path=str(prepared_dogs), v2=False), seed=0)
    assert ds.class_names[:2] == ["chihuahua", "japanese_spaniel"]  # from the metadata
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3, "val": 90, "test": 60}
    for split in ds.splits.values():
        streamed, encoded = stream(split)
        assert streamed == encoded == split.labels.tolist()
        assert set(streamed) == {3, 7, 100}


@pytest.mark.slow
def test_dogs_recipe_end_to_end_evaluates_on_v2(tmp_path):
    from tltk.recipes import run

    few = [3, 7, 100]  # three breeds present keep the run to seconds; 120 outputs remain
    splits = {"stanford_dogs": {"train": np.repeat(few, 45), "test": np.repeat(few, 15)},
              "imagenet_v2": {"test": np.arange(1000)}}
    with mocked(splits):
        result = run("dogs", backbone="scratch", data={"image_size": 32}, epochs_head=1,
                     epochs_finetune=1, batch_size=16, out=str(tmp_path / "run"))
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert set(metrics["split"]) == {"val", "test", "v2"}
    assert set(metrics["weights"]) == {"best", "final"}
    v2 = np.load(tmp_path / "run" / "predictions" / "final-v2.npz")
    assert v2["probs"].shape == (120, 120) and sorted(v2["labels"]) == list(range(120))
    assert Path(result.run_dir) == tmp_path / "run" and len(result.metrics) == 6
