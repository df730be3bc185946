"""The "tltk" logger (tltk.log): plain lines on the current stdout, warnings on stderr."""

from __future__ import annotations

import logging

from tltk.log import log, logger


def test_log_prints_the_plain_message_to_stdout(capsys):
    log("stage bottleneck: 6 epochs")
    assert capsys.readouterr() == ("stage bottleneck: 6 epochs\n", "")


def test_child_loggers_share_the_console_and_warnings_go_to_stderr(capsys):
    assert logger.name == "tltk" and logger.level == logging.INFO
    logging.getLogger("tltk.data.folder").warning("class 'cat' has no usable image")
    logging.getLogger("tltk.data.folder").debug("not shown at INFO")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "class 'cat' has no usable image\n")

