"""RandomAffine against the legacy ImageDataGenerator it replaces."""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
from keras.src.legacy.preprocessing.image import ImageDataGenerator

from tltk.config import AugmentConfig
from tltk.data.augment import FILL_MODES, RandomAffine, affine_matrix, warp_affine

# IDG itself calls the deprecated scipy.ndimage.interpolation namespace.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 48
MARGIN = 8  # border pixels where fill modes legitimately differ (scipy vs TF)
SMOOTHING = 3.0
SAMPLES = 10_000
WARP_OP = "ImageProjectiveTransformV3"

PARAM_SETS = {
    "rotation": {"theta": 17.0},
    "shift": {"tx": 4.5, "ty": -3.2},
    "shear": {"shear": 12.0},
    "zoom": {"zx": 1.15, "zy": 0.85},
    "flip": {"flip_horizontal": True, "flip_vertical": True},
    "combined": {"theta": -8.0, "tx": 3.0, "ty": -2.5, "shear": 5.0, "zx": 0.9, "zy": 1.1,
                 "flip_horizontal": True, "flip_vertical": False},
}


def smooth_image(height=SIZE, width=SIZE, seed=0):
    """A smooth float32 [H, W, 3] image spanning 0..255, so bilinear sampling is exact-ish."""
    noise = np.random.default_rng(seed).uniform(0, 255, (height, width, 3))
    image = scipy.ndimage.gaussian_filter(noise, (SMOOTHING, SMOOTHING, 0))
    image = (image - image.min()) / (image.max() - image.min()) * 255
    return image.astype("float32")


@functools.cache
def layer_for(fill_mode):
    """One layer per fill mode: fixed-parameter warps need no fresh random state."""
    return RandomAffine(fill_mode=fill_mode)


def centre(image):
    return image[MARGIN:-MARGIN, MARGIN:-MARGIN]


@pytest.mark.parametrize("name", sorted(PARAM_SETS))
def test_fixed_parameters_match_idg(name):
    image, params = smooth_image(), PARAM_SETS[name]
    for fill_mode in FILL_MODES:  # one test per set: conftest clears Keras after each
        expected = ImageDataGenerator(fill_mode=fill_mode).apply_transform(image, params)
        got = layer_for(fill_mode).apply_transform(image, params).numpy()
        diff = np.abs(centre(got) - centre(expected))
        assert diff.mean() < 0.05 and diff.max() < 0.5, fill_mode
        if fill_mode in ("reflect", "nearest"):  # same border convention in scipy and TF
            assert np.abs(got - expected).mean() < 1.0, fill_mode


def test_non_square_matches_idg_including_its_centre():
    image = smooth_image(40, 56)
    params = {**PARAM_SETS["combined"], "flip_vertical": True}
    expected = ImageDataGenerator(fill_mode="reflect").apply_transform(image, params)
    got = RandomAffine().apply_transform(image, params).numpy()
    assert np.abs(got - expected).max() < 0.5


def test_brightness_matches_idg():
    image, factor = smooth_image(), 1.3
    params = {"theta": 5.0, "brightness": factor}
    expected = ImageDataGenerator().apply_transform(image, params)
    layer = RandomAffine(fill_mode="nearest")
    got = layer.apply_transform(image, params).numpy()
    plain = layer.apply_transform(image, {"theta": 5.0}).numpy()
    np.testing.assert_allclose(got, np.clip(plain * factor, 0, 255), atol=1e-3)
    # IDG is the same multiply, but truncated to uint8 before and after it (PIL).
    idg_quantised = np.floor(np.clip(np.floor(plain) * factor, 0, 255))
    assert np.mean(idg_quantised != expected) < 0.01
    assert got.max() <= 255.0 and (got - expected).min() > -0.5 and (got - expected).max() < 3


def test_per_image_parameters_in_one_batch():
    images = np.stack([smooth_image(seed=s) for s in range(2)])
    params = {"theta": tf.constant([10.0, -20.0]), "flip_horizontal": tf.constant([True, False])}
    got = RandomAffine().apply_transform(images, params).numpy()
    idg = ImageDataGenerator(fill_mode="reflect")
    for i in range(2):
        one = {k: v.numpy()[i] for k, v in params.items()}
        np.testing.assert_allclose(got[i], idg.apply_transform(images[i], one), atol=0.5)


def test_affine_matrix_identity_and_pure_flip():
    identity = affine_matrix(0.0, 0.0, 0.0, 0.0, 1.0, 1.0, False, False, SIZE, SIZE)
    np.testing.assert_allclose(identity.numpy(), np.eye(3), atol=1e-6)
    flip = affine_matrix(0.0, 0.0, 0.0, 0.0, 1.0, 1.0, True, False, SIZE, SIZE).numpy()
    np.testing.assert_allclose(flip, [[-1, 0, SIZE - 1], [0, 1, 0], [0, 0, 1]], atol=1e-4)
    image = smooth_image()[np.newaxis]
    np.testing.assert_allclose(warp_affine(image, flip).numpy(), image[:, :, ::-1], atol=1e-3)


def test_random_parameters_match_idg_distribution():
    ranges = {"rotation_range": 30.0, "width_shift_range": 0.2, "height_shift_range": 0.1,
              "shear_range": 20.0, "zoom_range": [0.8, 1.3], "horizontal_flip": True,
              "vertical_flip": True, "brightness_range": [0.5, 1.5]}
    height, width = 40, 60  # distinct, so tx (height-scaled) and ty (width-scaled) differ
    bounds = {"theta": (-30, 30), "tx": (-0.1 * height, 0.1 * height),
              "ty": (-0.2 * width, 0.2 * width), "shear": (-20, 20), "zx": (0.8, 1.3),
              "zy": (0.8, 1.3), "flip_horizontal": (0, 1), "flip_vertical": (0, 1),
              "brightness": (0.5, 1.5)}
    idg = ImageDataGenerator(**ranges)
    np.random.seed(0)
    drawn = [idg.get_random_transform((height, width, 3)) for _ in range(SAMPLES)]
    ours = RandomAffine(**ranges, seed=0).sample_transform(SAMPLES, height, width)
    for key, (lo, hi) in bounds.items():
        a = np.array([float(d[key]) for d in drawn])
        b = tf.cast(ours[key], tf.float32).numpy()
        assert b.shape == (SAMPLES,)
        for sample in (a, b):
            assert lo <= sample.min() < lo + 0.01 * (hi - lo), key
            assert hi - 0.01 * (hi - lo) < sample.max() <= hi, key
        assert abs(a.mean() - b.mean()) < 5 * a.std() / np.sqrt(SAMPLES), key
        assert b.std() == pytest.approx(a.std(), rel=0.05), key


def test_disabled_ranges_give_idg_constants():
    off = RandomAffine(rotation_range=0, width_shift_range=0, height_shift_range=0,
                       shear_range=0, zoom_range=0, horizontal_flip=False)
    params = off.sample_transform(64, SIZE, SIZE)
    for key, value in {"theta": 0, "tx": 0, "ty": 0, "shear": 0, "zx": 1, "zy": 1,
                       "flip_horizontal": False, "flip_vertical": False}.items():
        assert np.all(params[key].numpy() == value), key
    image = smooth_image()[np.newaxis]
    np.testing.assert_allclose(off(image, training=True).numpy(), image, atol=1e-3)


def test_identity_when_not_training():
    images = np.stack([smooth_image(seed=s) for s in range(3)])
    layer = RandomAffine(rotation_range=45, seed=1)
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images)
    assert not np.allclose(layer(images, training=True).numpy(), images)


def test_unbatched_and_uint8_inputs():
    layer = RandomAffine(seed=2)
    single = layer(smooth_image(), training=True)
    assert single.shape == (SIZE, SIZE, 3) and single.dtype == tf.float32
    as_uint8 = layer(smooth_image().astype("uint8")[np.newaxis], training=True)
    assert as_uint8.shape == (1, SIZE, SIZE, 3) and as_uint8.dtype == tf.float32


def test_seeded_layer_is_reproducible():
    images = np.stack([smooth_image(seed=s) for s in range(4)])
    first, second = RandomAffine(seed=7), RandomAffine(seed=7)
    a1, a2 = first(images).numpy(), first(images).numpy()
    np.testing.assert_array_equal(a1, second(images).numpy())
    np.testing.assert_array_equal(a2, second(images).numpy())
    assert not np.array_equal(a1, a2)  # fresh parameters on every call
    assert not np.array_equal(a1, RandomAffine(seed=8)(images).numpy())


def test_works_inside_tf_data_map():
    images = np.stack([smooth_image(seed=s) for s in range(6)])
    layer = RandomAffine(seed=3)
    batched = (tf.data.Dataset.from_tensor_slices(images).batch(3)
               .map(lambda x: layer(x, training=True), num_parallel_calls=tf.data.AUTOTUNE))
    per_image = tf.data.Dataset.from_tensor_slices(images).map(layer).batch(3)
    for ds in (batched, per_image):
        out = np.concatenate(list(ds.as_numpy_iterator()))
        assert out.shape == images.shape and np.isfinite(out).all()
        assert not np.allclose(out, images)


def test_one_fused_warp_per_call():
    layer = RandomAffine(rotation_range=20, vertical_flip=True, brightness_range=[0.8, 1.2])
    traced = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))
    graph = traced.graph.as_graph_def()
    ops = [n.op for n in graph.node]
    ops += [n.op for fn in graph.library.function for n in fn.node_def]
    assert ops.count(WARP_OP) == 1
    assert "PyFunc" not in ops and "EagerPyFunc" not in ops
    assert traced.output_shapes.as_list() == [None, SIZE, SIZE, 3]


def test_saving_round_trip(tmp_path):
    layer = RandomAffine(rotation_range=15, zoom_range=[0.9, 1.2], fill_mode="constant",
                         cval=7.0, brightness_range=[0.9, 1.1], seed=5, name="augment")
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.get_layer("augment")
    assert isinstance(restored, RandomAffine)
    assert restored.get_config() == layer.get_config()
    images = np.stack([smooth_image(seed=s) for s in range(2)])
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-5)
    assert RandomAffine.from_config(layer.get_config()).get_config() == layer.get_config()


def test_defaults_are_the_thesis_and_match_augment_config():
    expected = dataclasses.asdict(AugmentConfig())
    config = {k: v for k, v in RandomAffine().get_config().items() if k != "name"}
    assert {k: config[k] for k in expected} == expected
    from_dataclass = RandomAffine(**expected).get_config()
    assert {k: v for k, v in from_dataclass.items() if k != "name"} == config


@pytest.mark.parametrize("bad", [{"fill_mode": "mirror"}, {"width_shift_range": 1.5},
                                 {"zoom_range": [0.9]}, {"brightness_range": 1.2}])
def test_invalid_arguments_raise(bad):
    with pytest.raises(ValueError):
        RandomAffine(**bad)


def test_uint8_input_warps_like_float_within_rounding():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    params = {"theta": 7.0, "tx": 2.5, "ty": -1.5, "shear": 3.0, "zx": 1.05, "zy": 0.95}
    layer = RandomAffine()
    from_uint8 = layer.apply_transform(tf.constant(pixels), params)
    from_float = layer.apply_transform(tf.constant(pixels.astype(np.float32)), params)
    assert from_uint8.dtype == tf.float32
    np.testing.assert_allclose(from_uint8.numpy(), from_float.numpy(), atol=1.0)


def test_randaugment_policy_is_keras_randaugment_seeded_per_batch():
    from tltk.config import RunConfig
    from tltk.data.augment import make_augmenter
    from tltk.engine import streams

    config = RunConfig(augment_policy="randaugment", randaugment_factor=0.4)
    layer = make_augmenter(config, seed=0)
    assert isinstance(layer, keras.layers.RandAugment)
    assert (layer.num_ops, layer.value_range) == (2, (0, 255))
    assert isinstance(make_augmenter(RunConfig(), seed=0), RandomAffine)
    augment = streams.seeded_augment(layer)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)), tf.uint8)
    first = augment(images, tf.constant([7, 0], tf.int64)).numpy()
    again = augment(images, tf.constant([7, 0], tf.int64)).numpy()
    other = augment(images, tf.constant([7, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)  # the draws depend only on the batch seed
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, images.numpy().astype("float32"))
    assert first.dtype == np.float32 and 0 <= first.min() and first.max() <= 255


@pytest.mark.slow
def test_randaugment_epoch_streams_are_reproducible_and_resume_exactly():
    from tltk.config import RunConfig
    from tltk.data.augment import make_augmenter
    from tltk.engine import streams

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices((images, np.arange(8)))
    augment = streams.seeded_augment(make_augmenter(RunConfig(augment_policy="randaugment"), 0))

    def stream(first):
        return streams.epoch_stream(examples, 8, 4, seed=3, first=first, epochs=3, buffer=8,
                                    augment=augment)

    whole = stream(0)  # iterated twice: a second pass must draw the same augmentations
    full, again = ([x.numpy() for x, _ in whole] for _ in range(2))
    tail = [x.numpy() for x, _ in stream(1)]
    for a, b in zip(full, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(full[2:], tail, strict=True):  # epochs 1-2 of a run resumed after 1
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[2])
