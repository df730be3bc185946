"""tltk: transfer learning for image classification on Keras 3.

Importing tltk is light (TensorFlow loads on first use; see `tltk.lazy`), and from then
on tltk's serialisable layers are registered whenever Keras is loaded, so
`keras.models.load_model("runs/x/best.keras")` works in safe mode after `import tltk`.

Example::

    import tltk
    from tltk.recipes import demo
    result = tltk.train(demo.config())
    result.metrics  # pandas DataFrame: weights, split, top1, topk, k
    model, class_names = tltk.load_model(result.run_dir)
"""

import os

# TensorFlow's native (C++) warnings bury tltk's lines; set TF_CPP_MIN_LOG_LEVEL=0 to
# see them. It must be set before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tltk import lazy as _lazy
from tltk.config import AugmentConfig, DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError

_lazy.install()

__version__ = "0.1.0"


def train(config: RunConfig, **kwargs):
    """Run every stage of `config` and evaluate; see `tltk.engine.run.train`."""
    from tltk.engine.run import train as _train

    return _train(config, **kwargs)


def __getattr__(name: str):
    """`tltk.load_model` and `tltk.LoadedModel` import Keras on first use (PEP 562)."""
    if name in ("LoadedModel", "load_model"):
        from tltk import saving

        return getattr(saving, name)
    raise AttributeError(f"module 'tltk' has no attribute {name!r}")


__all__ = ["AugmentConfig", "DataConfig", "HeadConfig", "LoadedModel", "RunConfig",
           "StageConfig", "TltkError", "load_model", "train"]
