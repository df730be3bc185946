"""The tltk CLI in a real child process that has not paid for its own TensorFlow import.

The kill tests need processes that die by SIGKILL mid-run, a dozen of them. A fresh
interpreter spends about 6.5 CPU seconds importing TensorFlow and Keras before its
first step, so `subprocess.run` made that import most of their cost. Here the
standard library's forkserver imports tltk once, with no TensorFlow runtime started
(that is what makes forking safe), and every child forks from it: a separate process
with its own pid, exit status, file descriptors and clean module state, exactly as
the fresh interpreter had, minus the import.

Example::

    done = tltk_cli(["train", "demo", "--out", "runs/x"], {"TLTK_FAULT": "train:2:mid-epoch"})
    done.returncode  # -9: killed by its own fault point
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
# tests.tiny imports tltk.models (TensorFlow, Keras) and registers nothing by itself.
_CONTEXT.set_forkserver_preload(["tests.tiny", "tltk.cli"])


def _child(args: list[str], env: dict, out: str, err: str, tiny: bool) -> None:
    """The child: the caller's environment and output files, then `tltk ARGS`."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        with open(path, "w") as f:
            os.dup2(f.fileno(), fd)
    from tltk.cli import main

    if tiny:
        from tests.tiny import TINY
        from tltk.models import backbones

        backbones.BACKBONES.register("tiny", TINY)
    main(args, prog_name="tltk")  # click ends it with SystemExit(code)


def tltk_cli(args: list[str], env: dict | None = None, tiny: bool = False,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `tltk ARGS` (with the tests' tiny backbone registered if `tiny`) in a forked
    child with `os.environ` updated by `env`; returns what `subprocess.run` would."""
    with tempfile.TemporaryDirectory(prefix="tltk-forked-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        child = _CONTEXT.Process(target=_child, args=(
            args, {**os.environ, **(env or {})}, str(out), str(err), tiny))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["tltk", *args], timeout)
        return subprocess.CompletedProcess(["tltk", *args], child.exitcode,
                                           out.read_text(), err.read_text())
