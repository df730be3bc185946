"""One registry style for everything users pick by name.

Backbones, data sources, recipes, tuners, strategies and optimizers each live in a
`Registry`: `register` (a call or a decorator), `get` with a one-line error that
suggests close names, and `names`.

Example:
    >>> colours = Registry("--colour")
    >>> colours.register("red", 0xFF0000)
    16711680
    >>> @colours.register("green")
    ... def green():
    ...     return 0x00FF00
    >>> colours.names()
    ['red', 'green']
    >>> colours.get("rde")
    Traceback (most recent call last):
    ...
    tltk.errors.TltkError: --colour: unknown name 'rde'; did you mean 'red'? Choices: green, red
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tltk.errors import unknown_name

_DECORATE = object()


class Registry:
    """Names -> objects for one kind of thing; `argument` names it in errors."""

    def __init__(self, argument: str, items: dict[str, Any] | None = None):
        self.argument = argument
        self._items: dict[str, Any] = dict(items or {})

    def register(self, name: str, obj: Any = _DECORATE):
        """Register `obj` under `name` and return it; without `obj`, a decorator."""
        if obj is _DECORATE:
            return lambda fn: self.register(name, fn)
        self._items[name] = obj
        return obj

    def get(self, name: str, argument: str | None = None) -> Any:
        """The object registered as `name`; a `TltkError` suggesting close names if none.

        `argument` names the option or key in the error when it is not the usual one.
        """
        if name not in self._items:
            raise unknown_name(argument or self.argument, name, self._items)
        return self._items[name]

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's temporary entry, say); a missing name is no error."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        self.register(name, obj)
