"""docs/config.md is current, and its parser of the YAML files finds exactly the composed config's keys."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_config_keys_read import _leaves

from trainer import config_reference
from trainer.main import CONFIG_DIR


def test_docs_config_md_is_current():
    assert config_reference.main(["--check"]) == 0, "run: python -m trainer.config_reference"


def test_the_reference_lists_every_key_of_the_base_config_once():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer")
    composed = list(_leaves(OmegaConf.to_container(cfg, resolve=False)))
    listed = [
        key
        for name, prefix in config_reference.BASE_FILES
        for key, _, _ in config_reference.yaml_keys(config_reference.CONFIG_DIR / name, prefix)
    ]
    assert sorted(listed) == sorted(composed)
    assert len(set(listed)) == len(listed)


def test_a_hash_inside_quotes_is_part_of_the_value():
    assert config_reference._split_comment(' "a # b"  # why') == ('"a # b"', "why")
    assert config_reference._split_comment(" 3  # n") == ("3", "n")
