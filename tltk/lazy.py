"""TensorFlow loads on first use, quietly; tltk's Keras objects register when Keras loads.

`import tltk` must stay light: `tltk --help`, `--version` and argument errors answer in
well under a second because nothing imports TensorFlow (about 4 s on two cores). Two
import hooks keep what the eager import used to give:
- TensorFlow's first import, and its first device probe, run with the native stderr
  muted (oneDNN notices, CUDA probing on CPU-only machines bypass TF_CPP_MIN_LOG_LEVEL);
- right after Keras is first imported, `tltk.saving` registers tltk's layers, schedules
  and optimizers, so `keras.models.load_model` reads tltk's files after `import tltk`,
  whichever of the two a script imports first.

Python has no post-import hook, so a meta-path finder wraps the real loader's
`exec_module` for those two modules (and leaves `sys.meta_path` once both have loaded).

Example:
    >>> install()  # what `import tltk` does; idempotent
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_muted = {"on": True}


def set_muted(muted: bool) -> None:
    """Whether TensorFlow's native start-up lines are hidden (`tltk --debug` shows them)."""
    _muted["on"] = muted


def _after_tensorflow(module) -> None:
    """Probe devices now, muted: the CUDA probe otherwise prints at the first op."""
    module.config.list_physical_devices()


def _after_keras(module) -> None:
    import tltk.saving  # noqa: F401  (registers tltk's serialisable objects)


AFTER = {"tensorflow": _after_tensorflow, "keras": _after_keras}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds a hooked module through the other finders and wraps its loader, once."""

    def find_spec(self, name, path=None, target=None):
        if name not in PENDING:
            return None
        PENDING.discard(name)
        sys.meta_path.remove(self)  # the other finders locate it; no recursion
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if PENDING:
                sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = _wrapped(spec.loader.exec_module, AFTER[name])
        return spec


PENDING: set[str] = set()
_FINDER = _Finder()


def _wrapped(exec_module, after):
    def exec_then(module):
        from tltk.log import native_stderr_muted

        if not _muted["on"]:
            exec_module(module)
            after(module)
            return
        with native_stderr_muted():
            exec_module(module)
            after(module)

    return exec_then


def install() -> None:
    """Hook the first imports of TensorFlow and Keras (those already imported: now)."""
    if _FINDER in sys.meta_path:
        return
    PENDING.update(name for name in AFTER if name not in sys.modules)
    if "keras" in sys.modules:
        _after_keras(sys.modules["keras"])
    if PENDING:
        sys.meta_path.insert(0, _FINDER)
