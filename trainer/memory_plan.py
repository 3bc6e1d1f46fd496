"""The memory plan: per GPU and per phase, what the trainer will hold, computed from the config and the
models' ``config.json`` alone, checked against the device's memory before any worker starts.

    python -m trainer.memory_plan --config-name mopd release=gpu actor_rollout_ref.model.path=DIR \
        trainer.n_gpus_per_node=8 trainer.device_memory_gb=80

prints the table and exits 0 when every phase fits, 1 (one line naming the key to change) when one does
not. ``trainer/main.py`` runs the same plan first (``check_before_start``); a CPU-only run without
``trainer.device_memory_gb`` has no GPU to plan for and is not checked.

Phases follow one rank through a step (docs/architecture.md, "What lives where"): ``load`` (init_model),
``generation``, ``log_prob`` (old log-probs and the teacher pass: no-grad forwards), ``update``
(forward/backward and the optimizer step) and ``checkpoint`` (sharded save and HF export). Caches are
released at each boundary (``workers/model_utils.release_cached_memory``), so a phase's peak is what it
holds itself. Byte formulas per component are in ``trainer/memory_model.py``; the figures are bounds at the configured
maximum lengths (prompts of ``data.max_prompt_length``, responses of ``data.max_response_length``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from mopd.common.errors import ConfigError, UserError
from mopd.core.kl import uses_reference_kl
from mopd.core.loss_modes import DISTILLATION_MODES
from trainer.memory_model import DTYPE_BYTES, ModelShape, read_model_shape

GB = 1e9
# CUDA context, NCCL's buffers and cuBLAS workspaces: device memory outside torch's allocator.
RUNTIME_RESERVE_BYTES = 2.0 * GB
WARN_FRACTION = 0.9  # a phase above this share of the usable memory is reported as tight
# mopd/core/fused_head.py: one chunk x V float32 temporary is 256 MB on CUDA; forward/backward hold a few.
FUSED_HEAD_CHUNK_BYTES = 256 * 1024 * 1024
FUSED_HEAD_TEMPORARIES = 4
PHASES = ("load", "generation", "log_prob", "update", "checkpoint")
PHASE_TITLES = {
    "load": "load",
    "generation": "generation",
    "log_prob": "logprob/teacher",
    "update": "update",
    "checkpoint": "checkpoint",
}
GEN_BUDGET_KEY = "actor_rollout_ref.rollout.generate_max_token_len_per_gpu"
OFFLOAD = "actor_rollout_ref.actor.fsdp_config"


class MemoryPlanError(ConfigError):
    """A phase of the plan does not fit the device; the message names the key(s) to change."""


@dataclass
class Plan:
    phases: dict[str, dict[str, float]]  # phase -> component -> bytes on one device
    capacity: float
    header: str
    host_per_node: dict[str, float] = field(default_factory=dict)

    @property
    def usable(self) -> float:
        return self.capacity - RUNTIME_RESERVE_BYTES

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.total)

    @property
    def peak(self) -> float:
        return self.total(self.peak_phase)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable

    @property
    def tight(self) -> bool:
        return self.fits and self.peak > WARN_FRACTION * self.usable


# ----------------------------------------------------------------------------------------------
# The plan


def plan_memory(
    cfg: dict, capacity_bytes: float, *, student: ModelShape | None = None, teacher: ModelShape | None = None
) -> Plan:
    """Bytes per device and phase for the composed (plain-dict) trainer config ``cfg``; shapes are read from
    the models' ``config.json`` unless given."""
    s = _Settings(cfg)
    student = student or read_model_shape(s.model_path)
    if s.has_teacher and teacher is None:
        teacher = read_model_shape(s.ref_path, "actor_rollout_ref.ref.model.path") if s.ref_path else student
    b, w = s.dtype_bytes, s.world
    sharded = w > 1 or b != 4  # one float32 rank runs a plain module (workers/model_utils.fsdp2_wrap)

    actor = 4 * student.params / w
    grads = 4 * student.params / w
    adam = 8 * student.params / w
    adam_resident = 0.0 if s.optimizer_offload else adam  # optimizer_offload: on the host outside the update
    teacher_w = 4 * teacher.params / w if teacher else 0.0
    engine = b * student.params if s.rollout == "hf" else 0.0
    vllm_share = s.gpu_memory_utilization * capacity_bytes if s.rollout == "vllm" else 0.0
    vllm_idle = 0.0 if s.free_cache_engine else vllm_share

    def gathered(shape: ModelShape) -> float:  # FSDP2 unsharded units in a forward: the root + 2 layers
        return b * (shape.root_params + 2 * shape.layer_params) if sharded else 0.0

    largest_tensor = 4 * student.vocab * student.hidden

    phases: dict[str, dict[str, float]] = {p: {} for p in PHASES}
    phases["load"] = {
        "actor weights (fp32 shard)": actor,
        "teacher weights (fp32 shard)": teacher_w,
        "hf engine copy (compute dtype)": engine,
        "vLLM engine share": vllm_share,
        "loading: one tensor in flight": largest_tensor,
    }

    resident = {
        "actor weights (fp32 shard)": actor,
        "optimizer state (Adam)": adam_resident,
        "teacher weights (fp32 shard)": teacher_w,
        "hf engine copy (compute dtype)": engine,
    }

    # Generation: hf keeps a KV cache for rows x (prompt + response) tokens of one generate() call.
    gen = dict(resident)
    if s.rollout == "hf":
        rows = s.generate_rows
        prefill_tokens = (-(-rows // s.n) + 1) * s.prompt_len  # distinct prompts prefilled once (shared prefill)
        gen["KV cache (generation)"] = rows * (s.prompt_len + s.response_len) * student.kv_bytes_per_token(b)
        gen["forward workspace"] = (
            prefill_tokens * student.forward_workspace_bytes_per_token(b) + rows * student.vocab * 16
        )  # sampling: a few [rows, V] float32
    else:
        gen["vLLM engine share"] = vllm_share
    phases["generation"] = gen

    # No-grad forwards: old log-probs (several updates per step) and the teacher pass (distillation).
    logp = {**resident, "vLLM engine share": vllm_idle}
    forwards = []
    longest = s.prompt_len + s.response_len
    if s.off_policy or s.uses_kl:  # old log-probs (KL in reward reads them too)
        forwards.append((student, s.log_prob_tokens(longest), s.student_shares, longest))
    if s.uses_kl:  # the reference's log-probs
        forwards.append((teacher, s.log_prob_tokens(longest), s.student_shares, longest))
    if s.distillation:
        forwards.append((teacher, s.log_prob_tokens(s.teacher_len), s.teacher_shared_prefix, s.teacher_len))
    if forwards:
        shape, tokens, shares, longest = max(forwards, key=lambda f: f[1])
        logp["FSDP all-gather buffers"] = gathered(shape)
        logp["forward workspace"] = tokens * (shape.forward_workspace_bytes_per_token(b) + 2 * b * shape.hidden)
        if shares:  # the shared-prefix forward keeps every layer's K/V of the prompt prefixes it runs
            logp["shared-prefix KV cache"] = tokens * (1 - s.response_len / longest) * shape.kv_bytes_per_token(b)
        logp["fused head chunks"] = _fused_head_bytes(tokens, shape.vocab)
        if s.distillation:
            logp["teacher hidden states (mini-batch)"] = s.mini_rows * s.response_len * teacher.hidden * b
    phases["log_prob"] = logp if forwards else {}

    # Update: gradients, activations of one micro-batch, the optimizer step.
    tokens = s.micro_tokens
    per_layer = student.saved_activation_bytes_per_token_layer(b)
    if s.checkpointing:  # layer inputs kept, one layer's activations live while it is recomputed
        activations = tokens * (student.layers * student.hidden * b + per_layer)
    else:
        activations = tokens * student.layers * per_layer
    update = {
        "actor weights (fp32 shard)": actor,
        "gradients (fp32 shard)": grads,
        "optimizer state (Adam)": adam,
        "optimizer step scratch": 4 * student.params / w,
        "teacher weights (fp32 shard)": teacher_w,
        "hf engine copy (compute dtype)": engine,
        "vLLM engine share": vllm_idle,
        # unsharded units and their gradients (compute dtype) before the float32 reduce-scatter
        "FSDP all-gather buffers": gathered(student)
        + (4 * student.layer_params + b * student.root_params if sharded else 0.0),
        "activations (micro-batch)": activations + tokens * student.hidden * b * 2,
        "fused head chunks": _fused_head_bytes(tokens, student.vocab) + b * student.vocab * student.hidden,
    }
    if s.distillation:
        update["teacher hidden states (mini-batch)"] = s.mini_rows * s.response_len * teacher.hidden * b
    if s.loss_mode == "dpo":  # the reference's no-grad forward per micro-batch
        update["reference forward workspace"] = gathered(teacher) + tokens * teacher.forward_workspace_bytes_per_token(
            b
        )
    phases["update"] = update

    phases["checkpoint"] = {
        **resident,
        "vLLM engine share": vllm_idle,
        "export: one full tensor gathered": largest_tensor,
    }

    host = {}
    if s.optimizer_offload:
        host["offloaded optimizer state"] = 8 * student.params / w * s.per_node
    host["safetensors page cache (shared, reclaimable)"] = (
        student.params + (teacher.params if teacher and s.ref_path else 0)
    ) * 2
    header = (
        f"memory plan: student {student.params / 1e9:.2f} B parameters"
        + (f", teacher {teacher.params / 1e9:.2f} B" if teacher else "")
        + f"; {s.world} GPU(s) ({s.per_node} per node x {s.nodes}); compute {s.dtype}; rollout {s.rollout}; "
        f"loss {s.loss_mode}; device {capacity_bytes / GB:.1f} GB, usable "
        f"{(capacity_bytes - RUNTIME_RESERVE_BYTES) / GB:.1f} GB after a {RUNTIME_RESERVE_BYTES / GB:.0f} GB CUDA/NCCL reserve"
    )
    return Plan({p: {k: v for k, v in comps.items() if v} for p, comps in phases.items()}, capacity_bytes, header, host)


def _fused_head_bytes(tokens: int, vocab: int) -> float:
    """A few ``chunk x V`` float32 temporaries; a chunk is 256 MB or all the positions, if fewer."""
    return FUSED_HEAD_TEMPORARIES * min(FUSED_HEAD_CHUNK_BYTES, 4 * tokens * vocab)


class _Settings:
    """The config values the plan reads, with the workers' own rules for derived sizes."""

    def __init__(self, cfg: dict):
        data, arr, trainer = cfg["data"], cfg["actor_rollout_ref"], cfg["trainer"]
        actor, rollout, model = arr["actor"], arr["rollout"], arr["model"]
        self.model_path, self.ref_path = model["path"], arr["ref"]["model"]["path"]
        self.per_node, self.nodes = trainer["n_gpus_per_node"], trainer["nnodes"]
        self.world = self.per_node * self.nodes
        self.dtype = _compute_dtype(model["dtype"], trainer)
        self.dtype_bytes = DTYPE_BYTES[self.dtype]
        self.prompt_len, self.response_len = data["max_prompt_length"], data["max_response_length"]
        self.n, self.loss_mode = rollout["n"], actor["policy_loss"]["loss_mode"]
        self.distillation = self.loss_mode in DISTILLATION_MODES
        # a KL penalty's reference is the same frozen model as a teacher (counted under the teacher's rows)
        self.uses_kl = uses_reference_kl(cfg)
        self.has_teacher = self.distillation or self.loss_mode == "dpo" or self.uses_kl
        self.teacher_len = actor["self_distillation"]["max_reprompt_len"] + self.response_len
        self.rollout = rollout["name"]
        self.gpu_memory_utilization = rollout["gpu_memory_utilization"]
        self.free_cache_engine = rollout["free_cache_engine"]
        self.checkpointing = model["enable_gradient_checkpointing"]
        offload = actor.get("fsdp_config") or {}
        self.optimizer_offload = bool(offload.get("optimizer_offload"))
        self.dynamic = actor["use_dynamic_bsz"]
        self.teacher_shared_prefix = self.distillation and arr["ref"]["shared_prefix"]
        self.student_shares = actor["shared_prefix"] and self.world == 1 and not self.checkpointing
        updates = data["train_batch_size"] // actor["ppo_mini_batch_size"] * actor["ppo_epochs"]
        self.off_policy = updates > 1
        self.mini_rows = actor["ppo_mini_batch_size"] * self.n // self.world
        seq = self.prompt_len + self.response_len
        # fsdp_worker.update_actor keeps a prompt's n rollouts in one micro-batch (token budgets) or one
        # no-grad forward when pairs or shared prefixes need them together; a unit above the budget runs alone
        shared = (self.teacher_shared_prefix or self.student_shares) and self.mini_rows % self.n == 0
        self.group = self.n if shared or self.loss_mode in ("dpo", "simpo") else 1
        if self.dynamic:
            self.micro_tokens = max(actor["ppo_max_token_len_per_gpu"], self.group * seq)
        else:
            self.micro_tokens = actor["ppo_micro_batch_size_per_gpu"] * seq
        self._lp_rows = rollout["log_prob_micro_batch_size_per_gpu"]
        self._lp_budget = rollout["log_prob_max_token_len_per_gpu"]
        self._lp_rows = max(self._lp_rows // self.group, 1) * self.group  # fsdp_worker._log_prob_parts
        # hf generate(): rows per call under the token budget, and never more than a rank's share of a step
        budget_rows = max(1, rollout["generate_max_token_len_per_gpu"] // seq)
        train_rows = data["train_batch_size"] * self.n // self.world
        val_rows = (
            0
            if not data.get("val_files")
            else (
                (data["val_batch_size"] * rollout["val_kwargs"]["n"] + self.world - 1) // self.world
                if data.get("val_batch_size")
                else budget_rows
            )
        )
        self.generate_rows = min(rollout["micro_batch_size"], budget_rows, max(train_rows, val_rows))

    def log_prob_tokens(self, longest: int) -> int:
        return max(self._lp_budget, self.group * longest) if self.dynamic else self._lp_rows * longest


def _compute_dtype(setting: str, trainer: dict) -> str:
    """``auto``: bfloat16 when planning for a GPU (the plan's purpose), float32 for ``trainer.device=cpu``."""
    if setting != "auto":
        return setting
    return "float32" if trainer["device"] == "cpu" else "bfloat16"


def verdict_line(plan: Plan, cfg: dict, capacity_bytes: float, **shapes) -> str:
    phase = plan.peak_phase
    used = f"the {PHASE_TITLES[phase]} phase needs {plan.peak / GB:.1f} GB per GPU of {plan.usable / GB:.1f} GB usable"
    if plan.fits:
        left = (plan.usable - plan.peak) / GB
        return f"fits: {used} ({left:.1f} GB left){' - within 10%, tight' if plan.tight else ''}"
    from trainer.memory_advice import describe_overrides, suggest  # it plans candidates with plan_memory

    change = suggest(cfg, capacity_bytes, **shapes)
    device = (
        f"trainer.device_memory_gb={cfg['trainer'].get('device_memory_gb')}"
        if cfg["trainer"].get("device_memory_gb")
        else "the visible GPU"
    )
    biggest = max(plan.phases[phase].items(), key=lambda kv: kv[1])
    if change is None:
        return (
            f"does not fit: {used} ({device}); its largest part is {biggest[0]} ({biggest[1] / GB:.1f} GB) and no "
            "change of batch sizes, budgets, offload or GPU count fits it: use larger GPUs or a smaller "
            "actor_rollout_ref.model.path"
        )
    return f"does not fit: {used} ({device}); set {describe_overrides(change)}"


def format_plan(plan: Plan) -> str:
    comps: list[str] = []
    for phase in PHASES:
        comps += [c for c in plan.phases[phase] if c not in comps]
    width = max([len(c) for c in comps] + [24])
    head = f"{'GB per GPU':<{width}}" + "".join(f"{PHASE_TITLES[p]:>17}" for p in PHASES)
    lines = [plan.header, head]
    for comp in comps:
        cells = "".join(
            f"{plan.phases[p][comp] / GB:>17.2f}" if comp in plan.phases[p] else f"{'-':>17}" for p in PHASES
        )
        lines.append(f"{comp:<{width}}{cells}")
    lines.append(f"{'total':<{width}}" + "".join(f"{plan.total(p) / GB:>17.2f}" for p in PHASES))
    lines.append(
        f"{'left of usable':<{width}}" + "".join(f"{(plan.usable - plan.total(p)) / GB:>17.2f}" for p in PHASES)
    )
    for what, value in plan.host_per_node.items():
        lines.append(f"host memory per node: {what}: {value / GB:.1f} GB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry points


def device_capacity_bytes(cfg: dict) -> float | None:
    """``trainer.device_memory_gb``, else the visible GPU's memory, else ``None`` (no GPU to plan for)."""
    given = cfg["trainer"].get("device_memory_gb")
    if given:
        return float(given) * GB
    if cfg["trainer"]["device"] == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def check_before_start(cfg: dict) -> Plan | None:
    """The trainer's check: one summary line; ``MemoryPlanError`` (one line naming a key) when a phase cannot
    fit; a warning line when the peak is within 10% of the usable memory. ``None`` on a run without a GPU."""
    capacity = device_capacity_bytes(cfg)
    if capacity is None:
        return None
    plan = plan_memory(cfg, capacity)
    line = verdict_line(plan, cfg, capacity)
    if not plan.fits:
        raise MemoryPlanError(
            f"memory plan {line} (python -m trainer.memory_plan with the same overrides prints the table)"
        )
    prefix = "[mopd] warning: memory plan" if plan.tight else "[mopd] memory plan"
    print(f"{prefix} {line}", flush=True)
    return plan


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.memory_plan [--config-name NAME] key=value ...``: the trainer's config composition."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer.config_schema import validate_config
    from trainer.main import CONFIG_DIR

    args = list(sys.argv[1:] if argv is None else argv)
    name = "mopd"
    for i, arg in enumerate(list(args)):
        if arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
            args.remove(arg)
        elif arg in ("--config-name", "-cn") and i + 1 < len(args):
            name = args[i + 1]
            del args[i : i + 2]
            break
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose(config_name=name, overrides=args)
        validate_config(cfg, check_installed=False)  # plans for a machine other than this one
        tree = OmegaConf.to_container(cfg, resolve=True)
        capacity = device_capacity_bytes(tree)
        if capacity is None:
            raise ConfigError(
                "trainer.device_memory_gb is not set and no GPU is visible: give the GPU's memory, "
                "e.g. trainer.device_memory_gb=80"
            )
        plan = plan_memory(tree, capacity)
        print(format_plan(plan))
        line = verdict_line(plan, tree, capacity)
    except UserError as err:
        print(f"[mopd] error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # hydra's override errors: one line, they name the override
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            print(f"[mopd] error: {str(err).splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    print(f"verdict: {line}")
    if not plan.fits:
        print(f"[mopd] memory plan {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
