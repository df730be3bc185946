"""One logger for everything tltk tells the user: `logging.getLogger("tltk")`.

Messages go to the current `sys.stdout` as plain lines (the console format tltk has
always printed; warnings go to `sys.stderr`), so notebooks, pytest's capture and
redirected logs all see them. Modules log through children such as
"tltk.data.folder".
`log` is the shorthand the engine passes around as its `say` function.

Keras and TensorFlow chatter (loader warnings, retracing notices, absl lines) is
routed to DEBUG records (`keras_chatter`, `set_verbose`): hidden by default, shown
on stderr by `tltk --verbose`.

Example:
    >>> log("stage bottleneck: 6 epochs")
    stage bottleneck: 6 epochs
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

logger = logging.getLogger("tltk")


class _Console(logging.StreamHandler):
    """A handler bound to whatever `sys.stdout` (`sys.stderr` for warnings) is at the
    time of each message."""

    _warning = False

    def emit(self, record):
        # Debug detail goes to stderr with warnings: stdout stays the results.
        self._warning = record.levelno >= logging.WARNING or record.levelno < logging.INFO
        super().emit(record)

    @property
    def stream(self):
        return sys.stderr if self._warning else sys.stdout

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns it; the property wins
        pass


if not any(isinstance(h, _Console) for h in logger.handlers):
    _handler = _Console()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)


def log(message: str) -> None:
    """Tell the user `message` (one INFO record on the "tltk" logger)."""
    logger.info(message)
    sys.stdout.flush()


# Third-party loggers whose INFO/WARNING lines are detail, not news, for tltk's users.
# urllib3 warns at every retry of a dead connection (tfds downloads retry for minutes).
CHATTY = ("tensorflow", "absl", "keras", "h5py", "urllib3")


def silent(message: str) -> None:
    """A `say` that prints nothing (quiet runs: tests, the tuner's trials, dry runs)."""


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False) debug detail and Keras/TensorFlow chatter.

    Example:
        >>> set_verbose(True)  # what `tltk --verbose` does
    """
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


@contextlib.contextmanager
def keras_chatter():
    """Turn Python warnings raised inside (Keras loader notices) into DEBUG records.

    Example::

        with keras_chatter():
            model.load_weights(path)  # its "Skipping ..." warnings only under --verbose
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                logger.debug("%s:%s: %s: %s", w.filename, w.lineno, w.category.__name__,
                             w.message)


@contextlib.contextmanager
def native_stderr_muted():
    """Mute file descriptor 2 inside: TensorFlow's C++ start-up notices (oneDNN, CUDA
    probing on CPU-only machines) bypass Python and TF_CPP_MIN_LOG_LEVEL.

    Example:
        >>> with native_stderr_muted():
        ...     import tensorflow
    """
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no real stderr (some embedded interpreters): nothing to mute
        yield
        return
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def duration(seconds: float) -> str:
    """A duration for people: seconds, minutes or hours.

    Example:
        >>> duration(42.4), duration(150), duration(9000)
        ('42 s', '2.5 min', '2.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
