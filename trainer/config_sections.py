"""The typed trainer config: the driver's sections (data, algorithm, reward, trainer) and the root,
``MOPDConfig``, whose ``validate`` holds the rules that relate keys of different sections (verl's batch
arithmetic, the loss modes' needs, placement). The rank's sections are in ``workers/config.py``.

Each key is declared once, with its default, type, allowed values and one-line doc. Hydra composes the
YAML presets (``trainer/config/{mopd,sdpo,grpo}.yaml``, ``release/gpu.yaml``) and command-line overrides over
``defaults_tree(MOPDConfig)``, registered under the name ``mopd_defaults`` (``register``); ``load`` turns the
composed config into the typed tree, raising ``ConfigError`` with one line on the first mistake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mopd.common.errors import ConfigError
from mopd.common.typed_config import Section, defaults_tree, is_number, option, section
from mopd.core.advantages import ADV_ESTIMATORS, REFUSED_ESTIMATORS
from mopd.core.config import CONFIG_PREFIX
from mopd.core.kl import KL_CONTROLLERS, KL_TYPES
from mopd.core.loss_modes import DISTILLATION_MODES, GROUP_MODES, PPO_MODES, PREFERENCE_MODES
from trainer.checkpoint import RESUME_MODES
from trainer.tracking import ALLOWED_LOGGERS as LOGGERS
from workers.config import ActorRolloutRefConfig

BACKENDS = ("auto", "ray", "local")
DEVICES = ("auto", "cpu", "cuda")
ROLLOUT_IS_LEVELS = (None, "token", "sequence")
SCHEMA_NAME = "mopd_defaults"  # the ConfigStore node ppo_trainer.yaml starts from

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"


# ----------------------------------------------------------------------------------------------
# data


def _files_rule(nullable: bool):
    def check(key: str, value: Any) -> None:
        if value is None and nullable:
            return
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            null = ", or null to disable validation" if nullable else ""
            raise ConfigError(f"{key} must be a parquet path, a list of them or 'embedded'{null}, got {value!r}")

    return check


def _check_template_kwargs(key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, e.g. {{enable_thinking: false}}, got {value!r}")


@dataclass
class DataConfig(Section):
    PREFIX: ClassVar[str] = "data"

    train_files: str | list[str] = option(
        "embedded", 'parquet file(s); "embedded" = the shipped tiny task (datasets/embedded)', check=_files_rule(False)
    )
    val_files: str | list[str] | None = option(
        "embedded", "held-out parquet file(s); null disables validation", check=_files_rule(True)
    )
    train_batch_size: int = option(16, "PROMPTS per training step", positive=True)
    val_batch_size: int | None = option(
        None, "prompts per validation generation batch; null = all at once", positive=True
    )
    max_prompt_length: int = option(
        256, "prompts longer than this (tokens, chat-templated) are filtered or rejected", positive=True
    )
    max_response_length: int = option(16, "max generated tokens per rollout", positive=True)
    filter_overlong_prompts: bool = option(True, "drop prompts over max_prompt_length (false: refuse them)")
    shuffle: bool = option(True, "shuffle the training prompts each epoch")
    seed: int = option(1, "data order (the permutation of epoch e is a function of seed and e)")
    max_samples: int | None = option(None, "use only the first N training rows", positive=True)
    apply_chat_template_kwargs: dict[str, Any] = option(
        {},
        "e.g. {enable_thinking: false} for Qwen3; add a key with ++data.apply_chat_template_kwargs.enable_thinking=false",
        check=_check_template_kwargs,
    )


# ----------------------------------------------------------------------------------------------
# algorithm


def _refuse_estimator(key: str, value: Any) -> None:
    if isinstance(value, str) and value in REFUSED_ESTIMATORS:
        raise ConfigError(f"{key}={value} is not offered: {REFUSED_ESTIMATORS[value]}")


@dataclass
class KLControlConfig(Section):
    PREFIX: ClassVar[str] = "algorithm.kl_ctrl"

    type: str = option("fixed", "fixed, or adaptive (beta follows target_kl)", choices=KL_CONTROLLERS)
    kl_coef: float = option(0.001, "beta (adaptive: its initial value)", low=0.0)
    target_kl: float = option(0.1, "adaptive: the KL the controller steers to", low=0.0, low_open=True)
    horizon: int = option(10000, "adaptive: samples over which beta moves by at most 20% of the error", positive=True)


@dataclass
class RolloutCorrectionConfig(Section):
    PREFIX: ClassVar[str] = "algorithm.rollout_correction"

    rollout_is: str | None = option(
        None,
        "truncated IS weights pi_old/pi_rollout per token or sequence (needs rollout.calculate_log_probs)",
        choices=ROLLOUT_IS_LEVELS,
    )
    rollout_is_threshold: float = option(2.0, "the IS weights' cap", low=0.0, low_open=True)


@dataclass
class AlgorithmConfig(Section):
    PREFIX: ClassVar[str] = "algorithm"

    adv_estimator: str = option(
        "grpo",
        "the advantage estimator (used by grpo/vanilla; logged otherwise; mopd/core/advantages.py)",
        choices=ADV_ESTIMATORS,
        check=_refuse_estimator,
    )
    norm_adv_by_std_in_grpo: bool = option(
        False, "grpo: divide by the group's std (false = Dr. GRPO, the release's baseline)"
    )
    gamma: float = option(1.0, "reinforce_plus_plus: discount of the return to go", low=0.0, high=1.0)
    use_kl_in_reward: bool = option(
        False,
        "token rewards = score - beta * KL(pi_old || reference); grpo/vanilla only (in MOPD/SDPO the reference is "
        "the teacher)",
    )
    kl_penalty: str = option("kl", "use_kl_in_reward's estimator (mopd/core/kl.py)", choices=KL_TYPES)
    kl_ctrl: KLControlConfig = section(KLControlConfig, "the KL coefficient's controller")
    rollout_correction: RolloutCorrectionConfig = section(
        RolloutCorrectionConfig, "importance weights for the rollout engine's drift from the trained policy"
    )


# ----------------------------------------------------------------------------------------------
# rewards


def _check_reward_file(key: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{key}={path} is not a readable file")


def _check_reward_workers(key: str, workers: int) -> None:
    if workers < 0:
        raise ConfigError(f"{key} must be >= 0 (0 = score in the driver), got {workers}")


@dataclass
class CustomRewardFunctionConfig(Section):
    PREFIX: ClassVar[str] = "custom_reward_function"

    path: str | None = option(
        None,
        "a Python file with compute_score(data_source, solution_str, ground_truth, extra_info)",
        check=_check_reward_file,
    )
    name: str = option("compute_score", "the function's name in that file")


@dataclass
class RewardConfig(Section):
    PREFIX: ClassVar[str] = "reward"

    num_workers: int = option(0, "processes scoring rollouts (0 = in the driver)", check=_check_reward_workers)
    success_threshold: float = option(
        1.0,
        "a rollout with reward >= this is a success: pass@k, uid success metrics, MOPD/SDPO peers "
        "(self_distillation.success_reward_threshold, the release's name, sets it too)",
    )


# ----------------------------------------------------------------------------------------------
# trainer


def _check_loggers(key: str, loggers: Any) -> None:
    if not isinstance(loggers, (list, tuple)):
        raise ConfigError(f"{key} must be a list, e.g. {key}=[console,jsonl], got {loggers!r}")
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"{key} entries must be drawn from {list(LOGGERS)}, got {name!r}")


def _check_placement_timeout(key: str, timeout: Any) -> None:
    if not is_number(timeout) or timeout <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds, got {timeout!r}")


def _check_runtime_env(key: str, env: Any) -> None:
    if env is not None and not isinstance(env, Mapping):
        raise ConfigError(
            f"{key} must be null or a mapping (Ray's runtime_env, e.g. {{env_vars: {{NCCL_DEBUG: INFO}}}}), got {env!r}"
        )


@dataclass
class TrainerConfig(Section):
    PREFIX: ClassVar[str] = "trainer"

    backend: str = option(
        "auto",
        "auto: ray if installed, else local; local: one process, one worker (n_gpus_per_node=nnodes=1)",
        choices=BACKENDS,
    )
    project_name: str = option("mopd", "the run's project (output directory, trackers)")
    experiment_name: str = option("${actor_rollout_ref.actor.policy_loss.loss_mode}", "the run's name")
    logger: list[str] = option(
        ["console", "jsonl"],
        f"any of {', '.join(LOGGERS)} (wandb: offline unless WANDB_API_KEY is set)",
        check=_check_loggers,
    )
    total_epochs: int = option(1, "passes over the training prompts", positive=True)
    total_training_steps: int | None = option(
        100,
        "stops after this many steps if set (null: total_epochs); 100 = the embedded default's run",
        positive=True,
    )
    test_freq: int = option(25, "validate every N steps (and at the end); <=0 disables")
    val_before_train: bool = option(True, "validate before the first step")
    save_freq: int = option(-1, "checkpoint every N steps (and at the end); <=0 disables")
    max_actor_ckpt_to_keep: int | None = option(2, "checkpoints kept (the last verified one always)", positive=True)
    default_local_dir: str = option(
        "outputs/${trainer.project_name}/${trainer.experiment_name}", "checkpoints, metrics and dumps"
    )
    resume_mode: str = option(
        "auto", "auto: the last verified checkpoint if any; resume_path: trainer.resume_from_path", choices=RESUME_MODES
    )
    resume_from_path: str | None = option(None, "resume_mode=resume_path: the checkpoint directory")
    preemption_grace_s: float | None = option(
        100,
        "after SIGTERM/SIGUSR1: finish the step and checkpoint within this, else stop at once (null: no limit)",
        low=0,
        low_open=True,
    )
    max_consecutive_skipped_updates: int | None = option(
        5,
        "stop when this many optimizer updates in a row were skipped (non-finite loss/grad); null: never",
        positive=True,
    )
    rollout_data_dir: str | None = option(
        "${trainer.default_local_dir}/rollouts", "<step>.jsonl per training step (the analysis/ input); null disables"
    )
    validation_data_dir: str | None = option(
        "${trainer.default_local_dir}/validation", "<step>.jsonl per validation (the diversity/ input); null disables"
    )
    balance_batch: bool = option(
        True,
        "reorder each mini-batch's rows so data-parallel ranks get near-equal tokens (trainer/balance.py; no effect "
        "on one rank)",
    )
    n_gpus_per_node: int = option(
        1,
        "workers per node: devices, or CPU slots on a CPU-only machine; world = n_gpus_per_node * nnodes",
        positive=True,
    )
    nnodes: int = option(1, "nodes", positive=True)
    device: str = option("auto", "auto: cuda when torch sees one, else cpu", choices=DEVICES)
    seed: int = option(1, "model init, sampling and peer selection")
    num_threads: int | None = option(None, "torch threads per worker on CPU (null = cores / workers)", positive=True)
    placement_timeout_s: float = option(
        300,
        "Ray: seconds to wait for the cluster to grant every rank's bundle before refusing",
        check=_check_placement_timeout,
    )
    runtime_env: dict[str, Any] | None = option(
        None, "Ray runtime environment for the workers, e.g. {env_vars: {NCCL_DEBUG: INFO}}", check=_check_runtime_env
    )
    device_memory_gb: float | None = option(
        None,
        "GB per GPU for the memory plan checked before start (trainer/memory_plan.py); null = the visible GPU's "
        "(CPU-only runs: not checked)",
        low=0.0,
        low_open=True,
    )

    @property
    def world_size(self) -> int:
        return self.n_gpus_per_node * self.nnodes

    def validate(self) -> None:
        if self.resume_mode == "resume_path" and not self.resume_from_path:
            raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path (a checkpoint directory)")
        self.check_backend(self.backend)

    def check_backend(self, backend: str) -> None:
        """The local backend runs one worker in this process (``backend``: as given, or what auto became)."""
        if backend == "local" and self.world_size != 1:
            became = " (auto: ray is not installed)" if self.backend == "auto" else ""
            raise ConfigError(
                f"trainer.backend=local{became} runs a single worker: set trainer.n_gpus_per_node=1 and "
                f"trainer.nnodes=1 (got {self.n_gpus_per_node} and {self.nnodes}), or use trainer.backend=ray"
            )


# ----------------------------------------------------------------------------------------------
# the root


@dataclass
class MOPDConfig(Section):
    """The whole trainer config (``python -m trainer.main --config-name mopd key=value ...``)."""

    data: DataConfig = section(DataConfig, "the prompts")
    actor_rollout_ref: ActorRolloutRefConfig = section(ActorRolloutRefConfig, "the models, generation and training")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "advantages, KL penalties, rollout correction")
    custom_reward_function: CustomRewardFunctionConfig = section(CustomRewardFunctionConfig, "a verifier of your own")
    reward: RewardConfig = section(RewardConfig, "scoring")
    trainer: TrainerConfig = section(TrainerConfig, "the run")

    def validate(self) -> None:
        self._check_placement()
        self._check_batch_arithmetic()
        self._check_loss_mode_rules()
        arr = self.actor_rollout_ref
        level = self.algorithm.rollout_correction.rollout_is
        if level is not None and not arr.rollout.calculate_log_probs:
            raise ConfigError(
                f"algorithm.rollout_correction.rollout_is={level} needs {ROLLOUT}.calculate_log_probs=true "
                "(the IS weights compare pi_old with the rollout's own log-probs): set it, or rollout_is=null"
            )
        sd, prompt_len = arr.actor.self_distillation, self.data.max_prompt_length
        if arr.actor.policy_loss.loss_mode in DISTILLATION_MODES and sd.max_reprompt_len < prompt_len:
            raise ConfigError(
                f"{CONFIG_PREFIX}.max_reprompt_len ({sd.max_reprompt_len}) must be >= data.max_prompt_length "
                f"({prompt_len}): the teacher prompt holds the prompt plus the peer context"
            )

    def _check_placement(self) -> None:
        rollout, trainer = self.actor_rollout_ref.rollout, self.trainer
        tp, per_node = rollout.tensor_model_parallel_size, trainer.n_gpus_per_node
        if rollout.name == "vllm" and trainer.nnodes > 1 and per_node % tp:
            raise ConfigError(
                f"{ROLLOUT}.tensor_model_parallel_size ({tp}) must divide trainer.n_gpus_per_node "
                f"({per_node}) on a multi-node run: a vLLM engine's ranks stay on one node"
            )

    def _check_batch_arithmetic(self) -> None:
        actor, rollout = self.actor_rollout_ref.actor, self.actor_rollout_ref.rollout
        tbs, mini, micro, n = (
            self.data.train_batch_size,
            actor.ppo_mini_batch_size,
            actor.ppo_micro_batch_size_per_gpu,
            rollout.n,
        )
        per_node, nodes, world = self.trainer.n_gpus_per_node, self.trainer.nnodes, self.trainer.world_size
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
        tp = rollout.tensor_model_parallel_size
        if rollout.name == "vllm" and world % tp:
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

    def _check_loss_mode_rules(self) -> None:
        actor, n = self.actor_rollout_ref.actor, self.actor_rollout_ref.rollout.n
        mode = actor.policy_loss.loss_mode
        if mode in GROUP_MODES and n < 2:
            raise ConfigError(
                f"{ACTOR}.policy_loss.loss_mode={mode} compares samples of the same prompt: "
                f"{ROLLOUT}.n must be >= 2, got {n}"
            )
        if mode in PREFERENCE_MODES and actor.ppo_micro_batch_size_per_gpu % n:  # pairs within one micro-batch
            raise ConfigError(
                f"{ACTOR}.policy_loss.loss_mode={mode} forms preference pairs within a micro-batch: "
                f"{ACTOR}.ppo_micro_batch_size_per_gpu ({actor.ppo_micro_batch_size_per_gpu}) must be a multiple "
                f"of {ROLLOUT}.n ({n})"
            )
        kl = [
            k
            for k, on in (
                (f"{ACTOR}.use_kl_loss", actor.use_kl_loss),
                ("algorithm.use_kl_in_reward", self.algorithm.use_kl_in_reward),
            )
            if on
        ]
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


def register() -> None:
    """Store the defaults for Hydra under ``SCHEMA_NAME`` (ppo_trainer.yaml's first default). Idempotent; runs
    when this module is imported, so whatever validates a config can also compose one."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=defaults_tree(MOPDConfig))


register()


def load(cfg: Any) -> MOPDConfig:
    """The typed config of a composed one (a DictConfig, a plain mapping or already an ``MOPDConfig``)."""
    if isinstance(cfg, MOPDConfig):
        return cfg
    return MOPDConfig.from_dict(plain_tree(cfg))


def plain_tree(cfg: Any) -> dict:
    """A resolved plain nested dict from a DictConfig or a mapping (typed sections included)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

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


__all__ = ["MOPDConfig", "SCHEMA_NAME", "load", "plain_tree", "register"]
