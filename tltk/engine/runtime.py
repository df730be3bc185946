"""Where and how a run computes: precision, determinism and the `tf.distribute` strategy.

`precision_policy` and `op_determinism` are context managers that restore what was
set before, so one run in a notebook does not change the ones after it.

Scaling out: `--strategy auto|mirrored|multiworker` picks a `tf.distribute` strategy.

`train` builds, compiles, fits and evaluates every model inside the strategy's scope.
`batch_size` is always the global batch: Keras splits each batch across the replicas,
scales the loss accordingly and reports metrics over the whole batch, so the same
config means the same optimisation on one device or eight.

- `auto`: several workers in `TF_CONFIG` -> multiworker; several GPUs -> mirrored;
  otherwise the default one-device strategy.
- `mirrored`: one machine, every GPU (or every logical CPU device when there is none).
- `multiworker`: `MultiWorkerMirroredStrategy` across the machines of `TF_CONFIG`. Every
  worker runs the same command; only the chief writes the run directory, the others
  write into a scratch folder that is removed when they finish. To resume, a worker
  starts from a copy of the chief's run directory, so `--out` must be on a filesystem
  every worker can read. Keras 3 (up to at least 3.15) cannot `fit` under this strategy
  (keras-team/keras#20585: it reduces a data batch and scalar logs across workers and
  fails), so it stops with a one-line error before any work until Keras fixes that.

Example::

    strategy = make_strategy("mirrored")
    strategy.num_replicas_in_sync  # 2 on a two-GPU machine
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from tltk.errors import TltkError
from tltk.registry import Registry

# Checked on Keras 3.15.1 / TF 2.21 with two workers on one host: fit fails in
# `_maybe_symbolic_build` and, past that, in `reduce_per_replica` (scalar logs, axis 0).
# Set to True to try a Keras release that fixes keras-team/keras#20585.
KERAS_FITS_MULTIWORKER = False


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU feature flags (Linux; empty elsewhere): `amx_bf16` marks the
    bfloat16 matrix units oneDNN uses for `mixed_bfloat16`.

    Example::

        "amx_bf16" in cpu_flags()  # True on a Sapphire Rapids Xeon
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in lines
                           if line.startswith("flags")), ()))


@contextlib.contextmanager
def precision_policy(name: str):
    """Set Keras's global dtype policy for a block and restore the previous one after.

    Example:
        >>> with precision_policy("mixed_bfloat16"):
        ...     keras.mixed_precision.global_policy().name
        'mixed_bfloat16'
        >>> keras.mixed_precision.global_policy().name
        'float32'
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """Turn on TensorFlow's deterministic kernels for a block (`--deterministic`).

    TensorFlow only exports `enable_op_determinism`; its internal query and disable
    (when present) switch it off again, so one deterministic run in a notebook or a
    test session does not slow down the ones after it.

    Example::

        with op_determinism(True):
            model.fit(...)  # bit-identical on a rerun with the same seed
    """
    from tensorflow.python.framework import config as tf_config

    is_enabled = getattr(tf_config, "is_op_determinism_enabled", lambda: True)
    was = not enabled or is_enabled()
    if not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was and hasattr(tf_config, "disable_op_determinism"):
            tf_config.disable_op_determinism()


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for `--strategy name` (see the module docstring)."""
    return STRATEGIES.get(name)()


def _auto() -> tf.distribute.Strategy:
    if len(_workers()) > 1:
        return _multiworker()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return _mirrored()
    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.Strategy:
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _workers() -> list:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError:
        raise TltkError("TF_CONFIG: not valid JSON; see the README's multi-worker "
                        "example") from None
    cluster = config.get("cluster", {})
    return [*cluster.get("chief", []), *cluster.get("worker", [])]


def _multiworker() -> tf.distribute.Strategy:
    if not _workers():
        raise TltkError("--strategy multiworker: TF_CONFIG names no workers; set it on every "
                        "worker (see the README's multi-worker example) or use mirrored")
    if not KERAS_FITS_MULTIWORKER:
        raise TltkError(f"--strategy multiworker: Keras {keras.__version__}'s model.fit fails "
                        "under MultiWorkerMirroredStrategy (keras-team/keras#20585); use "
                        "--strategy mirrored on one machine with several GPUs")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # collectives must be configured before TF starts
        raise TltkError(f"--strategy multiworker: {exc}; start a fresh process "
                        "(`tltk train ... --strategy multiworker`)") from None


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the run directory (always, without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    jobs = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


def run_path(out: str, strategy: tf.distribute.Strategy | None) -> Path:
    """The chief's run directory, or a scratch folder for another worker.

    Every worker runs every step (they train in lock-step), but only the chief's files
    are wanted. An unfinished run of the chief's is copied into the scratch folder, so
    the worker resumes from the same epoch as the chief.
    """
    if is_chief(strategy):
        return Path(out)
    resolver = strategy.cluster_resolver
    scratch = Path(tempfile.mkdtemp(prefix=f"tltk-{resolver.task_type}{resolver.task_id}-"))
    if (Path(out) / "config.yaml").is_file():
        shutil.copytree(out, scratch, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("predictions", "report*"))
    return scratch


def cleanup(run, strategy: tf.distribute.Strategy | None) -> None:
    """Remove a non-chief worker's scratch run directory."""
    if not is_chief(strategy):
        shutil.rmtree(run.path, ignore_errors=True)


STRATEGIES = Registry("--strategy", {"auto": _auto, "mirrored": _mirrored,
                                     "multiworker": _multiworker})
