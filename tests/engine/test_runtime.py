"""--strategy: mirrored on two logical CPU devices trains like one device (batch_size is
the global batch), and strategy names and a missing TF_CONFIG are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT
from tltk.engine import runtime as distribute
from tltk.errors import TltkError

# Devices must be split before TensorFlow initialises them, hence a fresh process.
SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.conftest import SMALL_SPLITS, TINY, tiny_config
    from tltk.engine import runtime as distribute
    from tltk.models import backbones
    from tltk.config import HeadConfig, StageConfig
    from tltk.engine.run import train
    from tltk.log import silent

    # The top block trains on cached activations of the one below; the head's BatchNorm
    # is frozen while blocks are tuned, so no per-replica batch statistics blur the
    # comparison.
    backbones.BACKBONES["tiny"] = TINY
    for strategy in ("auto", "mirrored"):
        config = tiny_config(
            f"{sys.argv[1]}/{strategy}",
            [StageConfig("tune", epochs=2, optimizer="sgd", lr=0.01, momentum=0.9, unfreeze=1,
                         cache_features=True, augment=False)],
            data=SMALL_SPLITS, head=HeadConfig(layers=0), deterministic=True, strategy=strategy)
        train(config, say=silent)
        replicas = distribute.make_strategy(strategy).num_replicas_in_sync
        print(json.dumps({"strategy": strategy, "replicas": replicas}))
""")


@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device(tmp_path):
    root = str(ROOT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = {r["strategy"]: r["replicas"] for r in map(json.loads, proc.stdout.splitlines())}
    assert replicas == {"auto": 1, "mirrored": 2}
    one, two = (pd.read_csv(tmp_path / s / "history.csv") for s in ("auto", "mirrored"))
    columns = ["loss", "top1", "val_loss", "val_top1", "val_topk"]
    np.testing.assert_allclose(two[columns], one[columns], rtol=1e-4, atol=1e-5)
    one, two = (pd.read_csv(tmp_path / s / "metrics.csv") for s in ("auto", "mirrored"))
    pd.testing.assert_frame_equal(one, two)


def test_strategy_errors_are_one_line(monkeypatch):
    with pytest.raises(TltkError, match="--strategy: unknown name 'mirorred'; did you mean"):
        distribute.make_strategy("mirorred")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TltkError, match="TF_CONFIG names no workers"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TltkError, match="TF_CONFIG: not valid JSON"):
        distribute.make_strategy("auto")
    cluster = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
               "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(TltkError, match=r"model.fit fails .*keras-team/keras#20585"):
        distribute.make_strategy("auto")  # several workers: multiworker, stopped up front


def test_only_the_chief_writes_the_run_directory(monkeypatch, tmp_path):
    class Resolver:
        task_type, task_id = "worker", 1

        def cluster_spec(self):
            import tensorflow as tf

            return tf.train.ClusterSpec({"worker": ["a:1", "b:2"]})

    class Strategy:
        cluster_resolver = Resolver()

    assert distribute.run_path(str(tmp_path / "run"), None) == tmp_path / "run"
    scratch = distribute.run_path(str(tmp_path / "run"), Strategy())
    assert scratch != tmp_path / "run" and scratch.is_dir() and not distribute.is_chief(Strategy())
    scratch.rmdir()
    Resolver.task_id = 0
    assert distribute.is_chief(Strategy())
