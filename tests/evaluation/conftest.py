"""Tiny Keras models saved in synthetic run directories, for predict, export and ensembles;
a synthetic history.csv and a PNG check, for plots and reports."""


import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tltk.config import DataConfig, RunConfig
from tltk.evaluation import predict
from tltk.models.preprocessing import Preprocess
from tltk.rundir import RunDir

CLASSES = ["circle", "square", "triangle"]
SIZE = 32


def tiny_model(seed=0, num_classes=3):
    """Raw RGB 0..255 in, softmax out, with tltk's custom Preprocess layer inside."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = Preprocess("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def make_image_folder(root, per_class=6, size=40, seed=0):
    """ROOT/<class>/*.png with a different colour cast per class."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3)) + np.eye(3, dtype=int)[label] * 120
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def make_run(path, data_root, seed=0, classes=CLASSES):
    """A finished run over the folder `data_root` whose best/final models are tiny."""
    config = RunConfig(recipe="folder", seed=0,
                       data=DataConfig(dataset="folder", path=str(data_root),
                                       val_fraction=0.34, test_fraction=0.34))
    run = RunDir.create(path, config.to_yaml())
    run.write_json("classes.json", list(classes))
    model = tiny_model(seed, len(classes))
    model.save(run.file("best.keras"))
    tiny_model(seed + 100, len(classes)).save(run.file("final.keras"))
    run.set_status("complete")
    return run, model


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory, data_root):
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", data_root)


def expected_probs(model, paths):
    images = np.stack([predict.read_image(p, SIZE) for p in paths])
    return model.predict_on_batch(images)


def write_history(path, stages=(("head", 3), ("finetune", 2))):
    rows, epoch = [], 0
    for name, epochs in stages:
        for stage_epoch in range(epochs):
            acc = 0.4 + 0.1 * epoch
            rows.append({"stage": name, "epoch": epoch, "stage_epoch": stage_epoch,
                         "loss": 1.5 - 0.2 * epoch, "top1": acc, "topk": acc + 0.2,
                         "val_loss": 1.6 - 0.2 * epoch, "val_top1": acc - 0.05,
                         "val_topk": acc + 0.15, "lr": 1e-3})
            epoch += 1
    pd.DataFrame(rows).to_csv(path, index=False)


def assert_png(path, min_size=(100, 100)):
    assert path.is_file() and path.stat().st_size > 1024
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size >= min_size
        return image.size
