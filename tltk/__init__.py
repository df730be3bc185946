"""tltk: transfer learning for image classification on Keras 3.

Example::

    import tltk
    from tltk.recipes import demo
    result = tltk.train(demo.config())
    result.metrics  # pandas DataFrame: weights, split, top1, topk, k
"""

from tltk.config import AugmentConfig, DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError

__version__ = "0.1.0"


def train(config: RunConfig, **kwargs):
    """Run every stage of `config` and evaluate; see `tltk.engine.run.train`."""
    from tltk.engine.run import train as _train

    return _train(config, **kwargs)


__all__ = ["AugmentConfig", "DataConfig", "HeadConfig", "RunConfig", "StageConfig",
           "TltkError", "train"]
