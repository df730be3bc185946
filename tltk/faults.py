"""Fault injection for the tests: signal this process at a named point of a run.

It sits outside `tltk.engine` so that every layer (the engine, the feature cache, the
evaluation) can mark its points without importing the engine.

Points are `<stage>:<epoch>:mid-epoch`, `<stage>:<epoch>:checkpoint-write` (the new
weights are written but not yet renamed into place), `<stage>:end` (the stage is
recorded, the next one not begun), `features:<split>:mid-extraction`, `evaluate:start`
(final.keras saved, nothing evaluated) and `evaluate:<weights>-<split>` (that split's
predictions written); epochs count from 1.

Example:
    $ TLTK_FAULT=train:2:mid-epoch tltk train demo --out runs/x   # dies in epoch 2
"""

from __future__ import annotations

import os
import signal

VARIABLE = "TLTK_FAULT"


def armed() -> bool:
    """Whether a fault is set for this process (a test is injecting one).

    Example:
        >>> armed()  # TLTK_FAULT unset
        False
    """
    return bool(os.environ.get(VARIABLE))


def fault_point(name: str) -> None:
    """Signal this process (SIGKILL, or the signal `TLTK_FAULT_SIGNAL` names, e.g. INT
    for a Ctrl-C) when `TLTK_FAULT` is `name`; otherwise do nothing.

    Example:
        >>> fault_point("train:1:mid-epoch")  # TLTK_FAULT unset: nothing happens
    """
    if os.environ.get(VARIABLE) == name:
        which = os.environ.get("TLTK_FAULT_SIGNAL", "KILL")
        os.kill(os.getpid(), getattr(signal, f"SIG{which}"))
