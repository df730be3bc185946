"""`tltk --help`, `--version` and argument errors answer without loading TensorFlow, in
tltk's one-line `error:` style; every option explains itself and shows its default."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from tltk.cli import main

# Runs the command line in a fresh interpreter and reports which heavy modules it loaded.
PROBE = """
import sys
from tltk.cli import main
try:
    main(sys.argv[1:], prog_name="tltk")
except SystemExit as exc:
    code = exc.code
print("loaded:", sorted(m for m in ("tensorflow", "keras") if m in sys.modules), code)
"""


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"]])
def test_help_and_version_do_not_import_tensorflow(args):
    done = run_cli(*args)
    assert done.stdout.strip().splitlines()[-1] == "loaded: [] 0", done.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--epoch", "3"], "error: No such option '--epoch'"),
    (["train", "demo", "--resize", "x"], "error: Invalid value for '--resize'"),
    (["nocommand"], "error: No such command 'nocommand'"),
    (["--bogus"], "error: No such option '--bogus'"),
])
def test_usage_errors_are_one_line_without_tensorflow(args, message):
    done = run_cli(*args)
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert "see `tltk" in done.stderr
    assert done.stdout.strip() == "loaded: [] 2"


def _options(command, path="tltk"):
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            yield path, param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _options(sub, f"{path} {name}")


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for path, option in _options(main):
        if option.opts == ["--help"]:
            continue
        shown = option.default is not None and not option.is_flag
        if not option.help or not (shown or option.is_flag or "default" in option.help
                                   or option.required or option.multiple):
            missing.append(f"{path} {option.opts[0]}")
    assert missing == []
