"""docs/config.md is current and lists exactly the composed config's keys, each once."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_config_keys_read import _leaves

from mopd.common.typed_config import describe
from trainer import config_reference
from trainer.config_sections import MOPDConfig
from trainer.main import CONFIG_DIR


def test_docs_config_md_is_current():
    assert config_reference.main(["--check"]) == 0, "run: python -m trainer.config_reference"


def test_the_reference_lists_every_key_of_the_base_config_once():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer")
    composed = list(_leaves(OmegaConf.to_container(cfg, resolve=False)))
    listed = [key for key, *_ in describe(MOPDConfig)]
    assert sorted(listed) == sorted(composed)
    assert len(set(listed)) == len(listed)


def test_a_hash_inside_quotes_is_part_of_the_value():
    assert config_reference._split_comment(' "a # b"  # why') == ('"a # b"', "why")
    assert config_reference._split_comment(" 3  # n") == ("3", "n")


def test_defaults_are_shown_as_they_are_written_on_the_command_line():
    assert config_reference.yaml_value(None) == "null" and config_reference.yaml_value(True) == "true"
    assert config_reference.yaml_value(["console", "jsonl"]) == "[console, jsonl]"
    assert config_reference.yaml_value("\n\nx") == '"\\n\\nx"'


@pytest.mark.parametrize("preset", config_reference.PRESETS)
def test_presets_hold_only_what_they_change(preset):
    """A preset restating a default would write that default twice: each of its keys must change one."""
    name, overrides = (preset[:-5], []) if "/" not in preset else ("ppo_trainer", [f"release={preset[8:-5]}"])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        base = compose(config_name="ppo_trainer")
        chosen = compose(config_name=name, overrides=overrides)
    same = [
        key
        for key, _, _ in config_reference.yaml_keys(config_reference.CONFIG_DIR / preset)
        if OmegaConf.select(base, key) == OmegaConf.select(chosen, key)
    ]
    assert not same, f"{preset} restates the defaults of {same}: drop them"
