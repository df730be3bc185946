"""Grad-CAM localises the evidence: on images whose class depends on one region only,
the heatmap's mass falls in that region; `tltk predict --explain` writes the heatmaps."""

import keras
import numpy as np
import pytest
from PIL import Image

from tests.tiny import TINY
from tltk.config import HeadConfig
from tltk.errors import TltkError
from tltk.evaluation import predict
from tltk.evaluation.gradcam import gradcam, overlay
from tltk.models.backbones import build_backbone
from tltk.models.heads import build_classifier

SIZE = 32
REGION = (slice(0, 16), slice(0, 16))  # the top-left quadrant decides the class


def region_images(n: int, seed: int = 0):
    """Noise everywhere; in the top-left quadrant horizontal (class 0) or vertical
    (class 1) stripes. The rest of the image carries no information on the class."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    stripes = (np.arange(16) % 4 < 2) * 255.0
    for image, label in zip(images, labels):
        pattern = stripes[:, None] if label == 0 else stripes[None, :]
        image[REGION] = np.broadcast_to(pattern, (16, 16))[..., None]
    return images, labels


@pytest.fixture(scope="module")
def region_model():
    keras.utils.set_random_seed(0)
    model = build_classifier(build_backbone(TINY, "none", SIZE), TINY, 2,
                             HeadConfig(layers=0, batchnorm=False))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    images, labels = region_images(256)
    model.fit(images, labels, epochs=12, batch_size=32, verbose=0)
    return model


@pytest.mark.slow  # trains a tiny classifier: ~4 s on two cores
def test_heatmap_mass_falls_in_the_deciding_region(region_model):
    images, labels = region_images(16, seed=1)
    assert np.mean(region_model.predict(images, verbose=0).argmax(1) == labels) == 1.0
    heat = gradcam(region_model, images, labels)
    assert heat.shape == (16, 8, 8) and heat.max() == pytest.approx(1.0)
    inside = heat[:, :4, :4].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    assert inside.min() > 0.6, inside  # the region is a quarter of the image


@pytest.mark.slow
def test_overlay_and_predict_explain_write_heatmaps(region_model, tmp_path):
    images, _ = region_images(2, seed=2)
    painted = overlay(images[0].astype(np.uint8), gradcam(region_model, images[:1])[0])
    assert painted.shape == (SIZE, SIZE, 3) and painted.dtype == np.uint8
    region_model.save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("horizontal\nvertical\n")
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"photo{i}.png")
        Image.fromarray(image.astype(np.uint8)).save(files[-1])
    results = predict.predict_files(tmp_path / "model.keras", files, top=1,
                                    explain=tmp_path / "cams")
    for result in results:
        with Image.open(result["heatmap"]) as cam:
            assert cam.size == (SIZE, SIZE)
    assert "Grad-CAM: " in predict.format_predictions(results, "table")


def test_explain_needs_a_keras_classifier(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    plain = keras.Model(inputs, keras.layers.Dense(2, name="predictions")(inputs))
    with pytest.raises(TltkError, match="--explain: model .* is not a tltk classifier"):
        gradcam(plain, np.zeros((1, SIZE, SIZE, 3), np.float32))


@pytest.mark.slow
def test_report_grid_gets_overlays_for_a_classifier_run(region_model, tmp_path):
    from tests.evaluation.conftest import make_image_folder, make_run
    from tltk.evaluation.gradcam import mistake_overlays

    data = make_image_folder(tmp_path / "shapes", per_class=2)
    run, _ = make_run(tmp_path / "run", data)  # best.keras: a plain model, not a classifier
    photos = sorted(data.rglob("*.png"))[:2] + [tmp_path / "gone.png"]
    assert mistake_overlays(run.path, "best", photos) is None
    region_model.save(run.file("best.keras"))
    run.write_json("classes.json", ["horizontal", "vertical"])
    first, second, gone = mistake_overlays(run.path, "best+tta", photos)
    assert first.shape == (SIZE, SIZE, 3) and second.dtype == np.uint8 and gone is None
