"""The full-original baseline: WordNet-id mapping by hand, then whole runs of a randomly
initialised MobileNetV2 classifier at 32 px (mocked tfds dogs, and WordNet-id folders)."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from tltk.cli import main
from tltk.config import DataConfig, RunConfig
from tltk.errors import TltkError
from tltk.methods import full_original as ib
from tltk.models.backbones import get_backbone

MALAMUTE, HUSKY, CHIHUAHUA = "n02110063", "n02110185", "n02085620"


def test_map_hand_built_case():
    # Outputs: 0 -> class 1, 1 -> none, 2 -> class 0, 3 -> class 0 (two outputs, one class).
    index = np.array([1, -1, 0, 0])
    probs = np.array([[0.1, 0.6, 0.2, 0.1],    # argmax is output 1: outside
                      [0.5, 0.1, 0.3, 0.1],    # argmax output 0: class 1
                      [0.0, 1.0, 0.0, 0.0]])   # nothing on the classes: all zero
    mapped, outside = ib.map_imagenet_to_classes(probs, index)
    np.testing.assert_allclose(mapped, [[0.75, 0.25], [4 / 9, 5 / 9], [0.0, 0.0]], atol=1e-6)
    assert outside == pytest.approx(200 / 3)


def test_imagenet_wnids_follow_keras_output_order():
    wnids = ib.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[151] == CHIHUAHUA and wnids[250] == HUSKY


def test_imagenet_index_and_class_wnids():
    wnids = ib.imagenet_wnids()
    index = ib.imagenet_index(wnids, [HUSKY, MALAMUTE])
    assert index[wnids.index(HUSKY)] == 0 and index[wnids.index(MALAMUTE)] == 1
    assert (index >= 0).sum() == 2
    with pytest.raises(TltkError, match="not ImageNet classes"):
        ib.imagenet_index(wnids, ["n99999999"])
    folder = DataConfig(dataset="folder")
    assert ib.class_wnids(folder, [f"{HUSKY}-Siberian_husky", MALAMUTE]) == [HUSKY, MALAMUTE]
    with pytest.raises(TltkError, match="'daisy'.*carries no WordNet id"):
        ib.class_wnids(folder, ["daisy", "rose"])
    dogs = ib.class_wnids(DataConfig(dataset="dogs"), [])
    assert len(dogs) == 120 and dogs[0] == CHIHUAHUA


@pytest.mark.slow
def test_random_classifier_maps_onto_dog_classes():
    spec = get_backbone("mobilenetv2")
    model = ib.build_imagenet_classifier(spec, "none", 32)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    probs_1000 = model.predict_on_batch(images)
    assert probs_1000.shape == (4, 1000)
    index = ib.imagenet_index(ib.imagenet_wnids(), ib.class_wnids(DataConfig(dataset="dogs"), []))
    mapped, outside = ib.map_imagenet_to_classes(probs_1000, index)
    assert mapped.shape == (4, 120)
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0, atol=1e-5)
    # Ranking over the dog classes is the ranking of their ImageNet outputs.
    dog_outputs = np.argsort(index)[-120:]  # ImageNet outputs of classes 0..119, in order
    assert (mapped.argmax(1) == probs_1000[:, dog_outputs].argmax(1)).all()
    assert outside == 100.0 * np.mean(index[probs_1000.argmax(1)] < 0)


@pytest.mark.slow
def test_local_include_top_weights_and_clear_errors(tmp_path):
    spec = get_backbone("mobilenetv2")
    random = ib.build_imagenet_classifier(spec, "none", 32)
    (classifier,) = [layer for layer in random.layers if isinstance(layer, keras.Model)]
    path = tmp_path / "mobilenet_v2_top.weights.h5"
    classifier.save_weights(path)
    loaded = ib.build_imagenet_classifier(spec, str(path), 32)
    images = np.full((1, 32, 32, 3), 128.0, np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(images), random.predict_on_batch(images),
                               atol=1e-6)
    with pytest.raises(TltkError, match="--weights: file not found"):
        ib.build_imagenet_classifier(spec, str(tmp_path / "missing.h5"), 32)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not an HDF5 file")
    with pytest.raises(TltkError, match="does not fit mobilenetv2 with its 1000-class top"):
        ib.build_imagenet_classifier(spec, str(broken), 32)
    with pytest.raises(TltkError, match="no ImageNet classifier"):
        ib.build_imagenet_classifier(get_backbone("scratch"), "none", 32)
    expected = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160.h5"
    assert ib.include_top_file(spec, 160) == expected


def check_outputs(out, splits):
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["weights", "split", "top1", "topk", "k", "outside"]
    assert metrics["split"].tolist() == splits and set(metrics["weights"]) == {"original"}
    classes = json.loads((out / "classes.json").read_text())
    for row in metrics.itertuples():
        saved = np.load(out / "predictions" / f"original-{row.split}.npz")
        assert saved["probs"].shape == (len(saved["labels"]), len(classes))
        top1 = 100 * np.mean(saved["probs"].argmax(1) == saved["labels"])
        assert row.top1 == pytest.approx(top1, abs=0.01)
        assert 0 <= row.outside <= 100
    return metrics


def mocked_tfds(tfds, splits):
    """mock_data serving fixed label arrays per dataset and split, with tiny PNG images.

    A fixed `as_dataset_fn` keeps labels identical between the sources' label pass and
    their image pass (the default mock draws new random examples per call).
    """
    png = tf.io.encode_png(np.full((6, 5, 3), 90, np.uint8)).numpy()

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        labels = np.concatenate([splits[self.name][part] for part in str(split).split("+")])
        return tf.data.Dataset.from_tensor_slices(
            {"label": tf.constant(labels, tf.int64), "image": tf.constant([png] * len(labels))})

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.mark.slow
def test_full_original_on_mocked_dogs(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    few = [3, 7, 100]  # three breeds keep it fast; the 120 dog classes all stay outputs
    splits = {"stanford_dogs": {"train": np.repeat(few, 12), "test": np.repeat(few, 4)},
              "imagenet_v2": {"test": np.arange(1000)}}
    config = RunConfig(recipe="dogs", backbone="mobilenetv2", weights="none",
                       data=DataConfig(dataset="dogs", split="official", image_size=32),
                       batch_size=32, out=str(tmp_path / "orig"))
    with mocked_tfds(tfds, splits):
        metrics = ib.full_original(config)
    check_outputs(tmp_path / "orig", ["val", "test", "v2"])
    assert metrics["k"].tolist() == [5, 5, 5]
    v2 = np.load(tmp_path / "orig" / "predictions" / "original-v2.npz")
    assert v2["probs"].shape == (120, 120) and sorted(v2["labels"]) == list(range(120))


@pytest.mark.slow
def test_cli_baseline_on_wordnet_folders(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "Images"
    for name in (f"{MALAMUTE}-malamute", f"{HUSKY}-Siberian_husky", f"{CHIHUAHUA}-Chihuahua"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / name / f"{i}.jpg")
    out = tmp_path / "orig"
    result = CliRunner().invoke(main, ["baseline", "folder", "--backbone", "mobilenetv2",
                                       "--weights", "none", "--data", str(root),
                                       "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| weights | val top-1 | val top-2 | val outside |" in result.output
    check_outputs(out, ["val", "test"])
    assert (out / "report.html").is_file()

    result = CliRunner().invoke(main, ["baseline", "folder", "--backbone", "mobilenetv2",
                                       "--data", str(root), "--out", str(tmp_path / "x"),
                                       "--image-size", "32"])
    assert result.exit_code == 2 and "--image-size" in result.output


def test_full_original_takes_a_model_file_with_its_imagenet_top(tmp_path):
    from tests.models.test_modelfile import tiny_classifier

    rng = np.random.default_rng(1)
    root = tmp_path / "Images"
    for name in (f"{MALAMUTE}-malamute", f"{HUSKY}-Siberian_husky"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / name / f"{i}.jpg")
    model_file = tmp_path / "clf1000.keras"
    tiny_classifier(classes=1000).save(model_file)
    out = tmp_path / "orig"
    result = CliRunner().invoke(main, ["full-original", "folder", "--backbone", str(model_file),
                                       "--data", str(root), "--image-size", "32",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["weights"]) == {"original"} and metrics["outside"].between(0, 100).all()
    small_top = tmp_path / "clf10.keras"
    tiny_classifier(classes=10).save(small_top)
    result = CliRunner().invoke(main, ["full-original", "folder", "--backbone", str(small_top),
                                       "--data", str(root), "--image-size", "32",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "has a 10-class top" in result.output
