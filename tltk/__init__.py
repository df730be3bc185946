"""tltk: transfer learning for image classification on Keras 3.

Importing tltk registers its serialisable layers (see `tltk.saving`), so
`keras.models.load_model("runs/x/best.keras")` works in safe mode after `import tltk`.

Example::

    import tltk
    from tltk.recipes import demo
    result = tltk.train(demo.config())
    result.metrics  # pandas DataFrame: weights, split, top1, topk, k
    model, class_names = tltk.load_model(result.run_dir)
"""

import os
import sys
from contextlib import nullcontext as _nullcontext

# TensorFlow's native (C++) warnings bury tltk's lines; set TF_CPP_MIN_LOG_LEVEL=0 to
# see them. It must be set before TensorFlow is first imported, which happens below.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tltk.config import AugmentConfig, DataConfig, HeadConfig, RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.log import native_stderr_muted

# The registrations import TensorFlow; its first import prints native start-up notices.
with native_stderr_muted() if "tensorflow" not in sys.modules else _nullcontext():
    from tltk.saving import LoadedModel, load_model

__version__ = "0.1.0"


def train(config: RunConfig, **kwargs):
    """Run every stage of `config` and evaluate; see `tltk.engine.run.train`."""
    from tltk.engine.run import train as _train

    return _train(config, **kwargs)


__all__ = ["AugmentConfig", "DataConfig", "HeadConfig", "LoadedModel", "RunConfig",
           "StageConfig", "TltkError", "load_model", "train"]
