"""The typed config: YAML round trip, overrides and clear errors."""

from __future__ import annotations

import pytest

from tltk.config import RunConfig, StageConfig
from tltk.errors import TltkError
from tltk.recipes import RECIPES, get_recipe, run_config


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_config_round_trips_through_yaml(name):
    config = get_recipe(name)()
    assert RunConfig.from_yaml(config.to_yaml()) == config


def test_overrides_address_nested_keys_and_stages():
    config = get_recipe("folder")().override(
        {"data.image_size": 96, "stages.finetune.lr": 0.01, "backbone": "vgg19"})
    assert config.data.image_size == 96 and config.backbone == "vgg19"
    assert config.stage("finetune").lr == 0.01
    assert isinstance(config.stages[0], StageConfig)


def test_recipe_run_overrides_accept_nested_dicts_and_epochs():
    config = run_config(get_recipe("dogs")(),
                        {"data": {"path": "/data"}, "epochs_head": 3, "epochs_finetune": 2})
    assert config.data.path == "/data"
    assert [s.epochs for s in config.stages] == [3, 2]


@pytest.mark.parametrize("text,message", [
    ("backbone: [oops", "malformed YAML"),
    ("bakbone: vgg19", "unknown key(s) ['bakbone']"),
    ("batch_size: many", "config.batch_size: expected int"),
    ("data: {image_size: big}", "config.data.image_size: expected int"),
    ("- just\n- a list", "expected a mapping"),
])
def test_bad_yaml_is_a_one_line_error(text, message):
    with pytest.raises(TltkError) as info:
        RunConfig.from_yaml(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_override_key_is_named():
    with pytest.raises(TltkError, match="data.imgsize: unknown config key 'imgsize'"):
        RunConfig().override({"data.imgsize": 3})
