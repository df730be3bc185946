"""User-facing errors.

A `TltkError` is something the user can fix: the CLI prints its message as one
line and exits with status 2, without a traceback (unless `--debug`).

Example:
    >>> raise TltkError("--backbone: unknown name 'vgg91'; did you mean 'vgg19'?")
    Traceback (most recent call last):
    tltk.errors.TltkError: --backbone: unknown name 'vgg91'; did you mean 'vgg19'?
"""

from __future__ import annotations

import difflib


class TltkError(Exception):
    """An error with a one-line message that names the argument and the fix."""


def unknown_name(argument: str, name: str, choices) -> TltkError:
    """Build the error for an unknown registry name, suggesting close matches.

    Example:
        >>> str(unknown_name("--backbone", "vgg91", ["vgg16", "vgg19"]))
        "--backbone: unknown name 'vgg91'; did you mean 'vgg19'? Choices: vgg16, vgg19"
    """
    choices = sorted(choices)
    hint = did_you_mean(name, choices) or "."
    return TltkError(f"{argument}: unknown name '{name}'{hint} Choices: {', '.join(choices)}")


def did_you_mean(name: str, choices) -> str:
    """"; did you mean 'X'?" for the closest of `choices`, or "" when none is close.

    Example:
        >>> did_you_mean("lrr", ["lr", "momentum"])
        "; did you mean 'lr'?"
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
