"""One logger for everything tltk tells the user: `logging.getLogger("tltk")`.

Messages go to the current `sys.stdout` as plain lines (the console format tltk has
always printed; warnings go to `sys.stderr`), so notebooks, pytest's capture and
redirected logs all see them. Modules log through children such as
"tltk.data.folder".
`log` is the shorthand the engine passes around as its `say` function.

Example:
    >>> log("stage bottleneck: 6 epochs")
    stage bottleneck: 6 epochs
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("tltk")


class _Console(logging.StreamHandler):
    """A handler bound to whatever `sys.stdout` (`sys.stderr` for warnings) is at the
    time of each message."""

    _warning = False

    def emit(self, record):
        self._warning = record.levelno >= logging.WARNING
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
