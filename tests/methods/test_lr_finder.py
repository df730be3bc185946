"""LR range test: exponential rates, per-batch losses, divergence stop, exact restore."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from tests.conftest import FLOWERS, MNV2_WEIGHTS, require_shared  # noqa: E402
from tltk.cli import main  # noqa: E402
from tltk.errors import TltkError  # noqa: E402
from tltk.methods.lr_finder import (  # noqa: E402
    MIN_OVER_10,
    STEEPEST,
    find_lr,
    lr_find_config,
    plot_lr_find,
    suggest,
    write_lr_find,
)


def tiny_problem(seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def test_weights_and_compiled_optimizer_are_restored_exactly():
    model, ds = tiny_problem()
    adam = keras.optimizers.Adam(0.01)
    model.compile(adam, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ds, epochs=1, verbose=0)  # 4 steps of optimizer state worth keeping
    weights = [w.copy() for w in model.get_weights()]
    state = [keras.ops.convert_to_numpy(v).copy() for v in adam.variables]
    result = find_lr(model, ds, start_lr=1e-5, end_lr=1.0, steps=20, optimizer="sgd")
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert model.optimizer is adam and int(adam.iterations) == 4
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v))
               for a, v in zip(state, adam.variables))
    assert "accuracy" in model.fit(ds, epochs=1, verbose=0).history  # still compiled as before
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 20


def test_rates_rise_exponentially_and_losses_are_per_batch():
    model, ds = tiny_problem()
    x, y = next(iter(ds))
    # The loss fit sees on the first batch: training mode (BatchNorm on batch statistics).
    first = float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, model(x, training=True))))
    result = find_lr(model, ds.take(1), start_lr=1e-4, end_lr=1e-2, steps=9, optimizer="adam")
    np.testing.assert_allclose(result.lrs, np.logspace(-4, -2, 9), rtol=1e-12)
    assert result.losses[0] == pytest.approx(first, rel=1e-5)  # the loss before any update
    assert result.smoothed[0] == pytest.approx(result.losses[0])  # bias-corrected average
    # Nine points are too few for a slope past the noisy start: the fallback rule says so.
    assert not result.diverged and result.rule == MIN_OVER_10
    assert result.suggestion == result.alternative == pytest.approx(
        result.lrs[np.argmin(result.smoothed)] / 10)


def test_stops_when_the_loss_diverges_and_works_uncompiled():
    model, ds = tiny_problem()
    result = find_lr(model, ds, start_lr=1e-3, end_lr=1e6, steps=100, optimizer="sgd")
    assert result.diverged and len(result.losses) < 100
    last = result.smoothed[-1]
    assert not np.isfinite(last) or last > 4 * np.nanmin(result.smoothed[:-1])


def test_suggestion_is_the_steepest_descent_and_min_over_ten():
    lrs = np.logspace(-6, 0, 61)
    loss = 2 / (1 + np.exp(3 * (np.log10(lrs) + 3)))  # falls fastest at 1e-3
    loss[-5:] = np.linspace(loss[-6], 3, 5)  # then blows up
    steepest, rule, alternative = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-3, rel=1e-9) and rule == STEEPEST
    assert alternative == pytest.approx(lrs[np.argmin(loss)] / 10)
    startup = loss.copy()
    startup[:8] += np.linspace(1.5, 0.0, 8)  # a steep fall while the average warms up
    assert suggest(lrs, startup)[0] == pytest.approx(1e-3, rel=1e-9)


def test_plot_and_csv(tmp_path):
    model, ds = tiny_problem()
    result = find_lr(model, ds, start_lr=1e-4, end_lr=10.0, steps=30)
    csv, png = write_lr_find(result, tmp_path)
    assert list(np.loadtxt(csv, delimiter=",", skiprows=1, usecols=1)) == pytest.approx(
        list(result.lrs))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300
    assert plot_lr_find(result, tmp_path / "again.png").stat().st_size > 1000
    assert f"({result.rule})" in result.summary() and "/ 10)" in result.summary()


def test_bad_arguments_are_user_errors():
    model, ds = tiny_problem()
    with pytest.raises(TltkError, match="did you mean 'adam'"):
        find_lr(model, ds, optimizer="adan")
    with pytest.raises(TltkError, match="need 0 < start < end"):
        find_lr(model, ds, start_lr=1.0, end_lr=0.1)


@pytest.mark.slow
def test_lr_find_command_on_the_demo_recipe(tmp_path):
    args = ["lr-find", "demo", "--image-size", "32", "--per-class", "8", "--batch-size", "8",
            "--steps", "12", "--start-lr", "1e-5", "--end-lr", "10", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "stage train (adam" in result.output and "suggested lr" in result.output
    frame = pd.read_csv(tmp_path / "lr_find.csv")
    assert list(frame.columns) == ["step", "lr", "loss", "smoothed"] and len(frame) <= 12
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    bad = CliRunner().invoke(main, args + ["--stage", "warmup"])
    assert bad.exit_code == 2 and "no stage named 'warmup'" in bad.output


@pytest.mark.slow
@pytest.mark.realdata
def test_lr_find_on_flowers_finetune_stage_with_block_rates(tmp_path):
    require_shared()
    from tltk.recipes import folder

    config = folder.config().override({
        "data.path": str(FLOWERS), "weights": str(MNV2_WEIGHTS), "data.image_size": 64,
        "data.per_class": 8, "batch_size": 8, "stages.finetune.block_lr_decay": 0.5})
    lines = []
    # Up to 0.1: on 40 images the whole-net sweep diverges (and stops) near lr 0.3.
    result = lr_find_config(config, "finetune", steps=10, start_lr=1e-5, end_lr=0.1,
                            out=tmp_path, say=lines.append)
    assert "stage finetune (adam, 17 trainable blocks) on mobilenetv2 at 64px" in lines[0]
    assert len(result.losses) == 10 and np.isfinite(result.losses).all()
    assert (tmp_path / "lr_find.csv").is_file()
