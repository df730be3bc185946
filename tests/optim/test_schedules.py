"""Per-stage learning-rate schedules: values against closed-form references, saving."""

import math
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tltk.config import RunConfig, StageConfig  # noqa: E402
from tltk.errors import TltkError  # noqa: E402
from tltk.log import silent
from tltk.optim.schedules import LinearWarmup, OneCycle, make_lr  # noqa: E402


def values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_constant_is_a_plain_float():
    assert make_lr(StageConfig("head", epochs=3, lr=0.01), steps_per_epoch=7) == 0.01


def test_lr_steps_on_a_constant_stage_become_a_step_schedule():
    stage = StageConfig("ft", epochs=30, lr=0.004, lr_steps=[[25, 0.001]])
    schedule = make_lr(stage, steps_per_epoch=10)
    assert isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay)
    np.testing.assert_allclose(values(schedule, [0, 249, 250, 299]),
                               [0.004, 0.004, 0.001, 0.001], rtol=1e-6)


def test_cosine_anneals_to_min_lr_over_the_stage():
    stage = StageConfig("ft", epochs=4, lr=0.1, schedule="cosine",
                        schedule_args={"min_lr": 0.01})
    steps = np.arange(0, 41)
    expected = 0.01 + (0.1 - 0.01) * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, 40) / 40))
    np.testing.assert_allclose(values(make_lr(stage, 10), steps), expected, rtol=1e-5)


def sgdr_reference(step, lr, period, t_mul, m_mul, min_lr):
    """SGDR by walking the restart cycles one by one."""
    start, length, cycle = 0.0, float(period), 0
    while step >= start + length:
        start, length, cycle = start + length, length * t_mul, cycle + 1
    peak = (lr - min_lr) * m_mul ** cycle
    return min_lr + peak * 0.5 * (1 + math.cos(math.pi * (step - start) / length))


@pytest.mark.parametrize("t_mul,m_mul", [(1.0, 1.0), (2.0, 0.5)])
def test_sgdr_matches_a_cycle_by_cycle_reference(t_mul, m_mul):
    args = {"period": 2, "t_mul": t_mul, "m_mul": m_mul, "min_lr": 0.001}
    stage = StageConfig("ft", epochs=14, lr=0.05, schedule="sgdr", schedule_args=args)
    steps = np.arange(0, 70)
    expected = [sgdr_reference(s, 0.05, 10, t_mul, m_mul, 0.001) for s in steps]
    np.testing.assert_allclose(values(make_lr(stage, 5), steps), expected, rtol=1e-4, atol=1e-7)


def test_warmup_ramps_linearly_then_starts_the_cosine():
    stage = StageConfig("ft", epochs=5, lr=0.1, schedule="cosine", warmup_epochs=1)
    schedule = make_lr(stage, steps_per_epoch=4)
    assert isinstance(schedule, LinearWarmup)
    np.testing.assert_allclose(values(schedule, [0, 1, 2, 3]), [0.025, 0.05, 0.075, 0.1],
                               rtol=1e-6)
    after = np.arange(4, 21)
    expected = 0.1 * 0.5 * (1 + np.cos(np.pi * (after - 4) / 16))
    np.testing.assert_allclose(values(schedule, after), expected, rtol=1e-5, atol=1e-8)


def one_cycle_reference(step, lr, total, pct, div, final_div):
    """fastai's combined_cos: cosine from lr/div to lr, then from lr to lr/final_div."""
    pos = min(step / total, 1.0)

    def cos(start, end, p):
        return start + (1 + np.cos(np.pi * (1 - p))) * (end - start) / 2

    if pos < pct:
        return cos(lr / div, lr, pos / pct)
    return cos(lr, lr / final_div, (pos - pct) / (1 - pct))


def test_onecycle_matches_fastais_two_cosines():
    stage = StageConfig("ft", epochs=4, lr=0.02, schedule="onecycle",
                        schedule_args={"pct_start": 0.3, "div_factor": 10.0,
                                       "final_div_factor": 100.0})
    schedule = make_lr(stage, steps_per_epoch=5)  # 20 steps, the peak at step 6
    assert isinstance(schedule, OneCycle)
    steps = [0, 1, 3, 6, 7, 12, 19, 20, 25]
    expected = [one_cycle_reference(s, 0.02, 20, 0.3, 10.0, 100.0) for s in steps]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-5)
    assert float(schedule(0)) == pytest.approx(0.002)
    assert float(schedule(6)) == pytest.approx(0.02)
    assert float(schedule(20)) == pytest.approx(0.0002)


def test_onecycle_defaults_are_fastais_and_it_saves_in_a_keras_file(tmp_path):
    stage = StageConfig("ft", epochs=2, lr=0.1, schedule="onecycle")
    schedule = make_lr(stage, steps_per_epoch=4)
    assert (schedule.pct_start, schedule.div_factor, schedule.final_div_factor) == \
        (0.25, 25.0, 1e5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.compile(keras.optimizers.SGD(schedule), loss="mse")
    model.fit(np.ones((6, 3), "float32"), np.zeros((6, 2), "float32"), batch_size=2,
              verbose=0)  # 3 steps
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer._learning_rate, OneCycle)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(
        one_cycle_reference(3, 0.1, 8, 0.25, 25.0, 1e5), rel=1e-5)


def test_warmup_keeps_step_boundaries_on_stage_epochs():
    stage = StageConfig("ft", epochs=6, lr=0.01, lr_steps=[[3, 0.001]], warmup_epochs=2)
    schedule = make_lr(stage, steps_per_epoch=2)
    np.testing.assert_allclose(values(schedule, [0, 3, 5, 6]), [0.0025, 0.01, 0.01, 0.001],
                               rtol=1e-6)


def test_warmup_in_front_of_a_constant_rate():
    stage = StageConfig("ft", epochs=3, lr=0.2, warmup_epochs=1)
    np.testing.assert_allclose(values(make_lr(stage, 2), [0, 1, 2, 5]), [0.1, 0.2, 0.2, 0.2],
                               rtol=1e-6)


@pytest.mark.parametrize("stage,message", [
    (StageConfig("ft", epochs=3, schedule="cosin"), "did you mean 'cosine'"),
    (StageConfig("ft", epochs=3, schedule="cosine", schedule_args={"period": 2}),
     "unknown key(s) ['period']"),
    (StageConfig("ft", epochs=3, schedule="step"), "needs [epoch, lr] pairs"),
    (StageConfig("ft", epochs=3, schedule="cosine", lr_steps=[[1, 0.1]]), "only the step"),
    (StageConfig("ft", epochs=3, schedule="sgdr", warmup_epochs=3), "warmup_epochs"),
    (StageConfig("ft", epochs=3, lr_steps=[[2, 0.1], [1, 0.01]]), "increasing"),
    (StageConfig("ft", epochs=3, schedule="onecycle", warmup_epochs=1), "warms up by itself"),
    (StageConfig("ft", epochs=3, schedule="onecycle", schedule_args={"pct_start": 1.0}),
     "0 < pct_start < 1"),
])
def test_bad_stage_settings_are_user_errors(stage, message):
    with pytest.raises(TltkError, match="stages.ft") as info:
        make_lr(stage, steps_per_epoch=4)
    assert message in str(info.value)


def test_schedule_position_survives_saving_through_the_optimizer(tmp_path):
    stage = StageConfig("ft", epochs=4, lr=0.1, schedule="cosine", warmup_epochs=1,
                        schedule_args={"min_lr": 0.001})
    schedule = make_lr(stage, steps_per_epoch=2)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.compile(keras.optimizers.SGD(schedule), loss="mse")
    x, y = np.ones((6, 3), "float32"), np.zeros((6, 2), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 3 optimizer steps
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == 3
    assert isinstance(loaded.optimizer._learning_rate, LinearWarmup)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(3)))


def test_new_stage_fields_round_trip_and_default_to_old_behaviour():
    assert make_lr(StageConfig("x", epochs=1), 1) == StageConfig("x", epochs=1).lr
    config = RunConfig(stages=[StageConfig("ft", epochs=2, schedule="sgdr", warmup_epochs=1,
                                           schedule_args={"period": 1, "t_mul": 1.0},
                                           block_lr_decay=0.5, head_lr_mult=10.0)])
    again = RunConfig.from_yaml(config.to_yaml())
    assert again == config
    assert again.stages[0].schedule_args == {"period": 1, "t_mul": 1.0}


@pytest.mark.slow
def test_engine_history_follows_the_stage_schedule(tmp_path):
    from tests.conftest import tiny_config
    from tltk.config import HeadConfig
    from tltk.engine.run import train

    stage = StageConfig("only", epochs=3, optimizer="sgd", lr=0.05, momentum=0.9,
                        unfreeze="all", schedule="cosine", warmup_epochs=1,
                        schedule_args={"min_lr": 0.005})
    # A small train split by fractions, not per_class: per_class filters the stream, and
    # Keras then counts one extra step per epoch.
    config = tiny_config(tmp_path / "run", [stage], backbone="scratch",
                         data={"val_fraction": 0.1, "test_fraction": 0.8},
                         head=HeadConfig(layers=0))
    history = train(config, say=silent).history
    steps = int(np.ceil(6 * 20 / 16))  # 6 demo classes x 20 training images per class
    schedule = make_lr(stage, steps)
    # The logged rate is the one each epoch's last step used: step (epoch + 1) * steps - 1.
    expected = [float(schedule((e + 1) * steps - 1)) for e in range(3)]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-5)
    assert history["lr"].iloc[0] == pytest.approx(0.05)  # warmup done, cosine just starting


@pytest.mark.slow
def test_a_step_schedule_model_loads_in_plain_keras(tmp_path):
    """Without warmup the schedules are Keras' own: no tltk import is needed to load."""
    stage = StageConfig("ft", epochs=30, optimizer="sgd", lr=0.004, lr_steps=[[25, 0.001]])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.compile(keras.optimizers.SGD(make_lr(stage, 10), momentum=0.9), loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)
    model.save(tmp_path / "m.keras")
    code = ("import keras, sys; m = keras.saving.load_model(sys.argv[1]); "
            "print(type(m.optimizer.learning_rate).__name__, float(m.optimizer.learning_rate))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(float(np.float32(0.004)))
