"""One Registry for everything users pick by name (tltk.registry)."""

from __future__ import annotations

import pytest

from tltk.errors import TltkError
from tltk.registry import Registry


def test_register_get_names_in_registration_order():
    colours = Registry("--colour", {"red": 1})
    assert colours.register("green", 2) == 2
    colours["blue"] = 3
    assert colours.names() == list(colours) == ["red", "green", "blue"]
    assert colours.get("green") == colours["green"] == 2
    assert "blue" in colours and "pink" not in colours and len(colours) == 3
    assert dict(colours.items()) == {"red": 1, "green": 2, "blue": 3}


def test_register_as_a_decorator_returns_the_function():
    loaders = Registry("DATASET")

    @loaders.register("demo")
    def load_demo():
        return "shapes"

    assert loaders.get("demo") is load_demo and load_demo() == "shapes"


def test_unknown_name_is_one_line_naming_the_argument_and_close_names():
    backbones = Registry("--backbone", {"vgg16": 0, "vgg19": 0, "resnet50": 0})
    with pytest.raises(TltkError) as info:
        backbones.get("vgg91")
    assert str(info.value) == ("--backbone: unknown name 'vgg91'; did you mean 'vgg19'? "
                               "Choices: resnet50, vgg16, vgg19")
    with pytest.raises(TltkError, match=r"^stages\.ft\.optimizer: unknown name 'zzz'\. Choices"):
        backbones.get("zzz", argument="stages.ft.optimizer")


def test_unregister_removes_and_tolerates_missing_names():
    registry = Registry("--x", {"a": 1})
    registry.unregister("a")
    registry.unregister("never-there")
    assert registry.names() == []
