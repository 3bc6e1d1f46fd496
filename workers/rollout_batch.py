"""The batch that moves between the driver and the workers: one dataclass, one home for its schema.

A ``RolloutBatch`` is made by the driver from a prompt batch (stage ``prompts``: the request to
``generate``), returned by the workers' ``generate`` with the joined sequences, and then grows, stage by
stage of the fit loop (``trainer/ppo_trainer.py``), by the fields each stage adds. Fields are grouped
below by the stage that adds them; a field is ``None`` until then (or for good when its stage does not run
in this configuration: the conditional ones say when). ``check(stage)`` at a stage boundary names, in one
line, the field that is missing or whose shape disagrees.

Shapes: B prompts, n samples each, N = B·n rows, P prompt tokens (left-padded), R response tokens
(right-padded), T teacher-sequence tokens, H the model's hidden size. ``meta`` is set once by the driver
and carried unchanged (frozen); every other field is per-sample (rows on dim 0, or a list of N), so the
helpers of ``workers/batch.py`` cut, permute, pad and concatenate it, and it crosses Ray as itself
(a dataclass pickles like a dict).

The prompts as the driver loads them are ``trainer.prompt_dataset.PromptBatch`` (``collate_prompts``:
the tensors [B, P] and B messages, data sources, ground truths, ...): the workers never see it, only the
request made from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from mopd.core.reprompt import position_ids_of


@dataclass(frozen=True)
class SamplingParams:
    """How one generation samples (``rollout.*``, or ``rollout.val_kwargs.*`` for validation)."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    do_sample: bool = True  # False: greedy
    max_new_tokens: int = 16  # R


@dataclass(frozen=True)
class StepMeta:
    """What every rank and row of one generation shares, set by the driver once and never rewritten."""

    step: int  # the global step (seeds of sampling and of the update's shuffle derive from it)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tag: str = "gen"  # "gen" (training) or "val" (validation): their samples draw from different seeds

    @property
    def temperature(self) -> float:
        """The temperature the log-prob passes and the loss divide logits by: 1.0 for greedy rollouts."""
        return self.sampling.temperature if self.sampling.do_sample else 1.0


@dataclass
class RolloutBatch:
    # ---- prompts: the driver's request to ``generate``
    meta: StepMeta | None = None  # not per-sample: every shard gets it unchanged
    input_ids: torch.Tensor | None = None  # long; request [B, P] left-padded; from generate [N, P+R] prompt+response
    attention_mask: torch.Tensor | None = None  # long 0/1, as input_ids
    uid: list | None = None  # prompt ids: B in the request, N (each repeated n times) from generate
    # ---- generate (the workers; engines ``workers/hf_rollout.py``, ``workers/vllm_rollout.py``)
    position_ids: torch.Tensor | None = None  # long [N, P+R]: cumsum(attention_mask) - 1, clamped at 0
    responses: torch.Tensor | None = None  # long [N, R], right-padded with the pad id
    response_mask: torch.Tensor | None = None  # long [N, R]: 1 up to and including the first EOS
    rollout_log_probs: torch.Tensor | None = None  # float32 [N, R], the sampler's; if rollout.calculate_log_probs
    # ---- reward (the driver's verifier)
    response_text: list | None = None  # N decoded responses (special tokens skipped)
    scores: torch.Tensor | None = None  # float32 [N], the verifier's score
    reward_extra: list | None = None  # N result dicts (feedback, acc, pred, verifier errors ...)
    # ---- old_log_prob (workers' compute_log_prob; when off-policy, rollout_is or use_kl_in_reward)
    old_log_probs: torch.Tensor | None = None  # float32 [N, R], π_old; dropped after adv when on-policy
    rollout_is_weights: torch.Tensor | None = None  # float [N, R]; if algorithm.rollout_correction.rollout_is
    # ---- ref (workers' compute_ref_log_prob; when a KL penalty to the reference is on)
    ref_log_probs: torch.Tensor | None = None  # float32 [N, R], the frozen reference's
    # ---- peers (the driver; distillation loss modes only)
    teacher_input_ids: torch.Tensor | None = None  # long [N, T]: teacher prompt (peers' context) + response
    teacher_attention_mask: torch.Tensor | None = None  # long [N, T]
    teacher_position_ids: torch.Tensor | None = None  # long [N, T]
    distillation_mask: torch.Tensor | None = None  # bool [N]: 1 where the teacher was shown a context
    teacher_messages: list | None = None  # N teacher chats (the rollout dump's teacher_input)
    step_ids: torch.Tensor | None = None  # long [N, R], reasoning-step index; if self_distillation.step_level_kl
    # ---- adv (the driver, trainer/advantage_stage.py)
    token_level_rewards: torch.Tensor | None = None  # float [N, R]: the score on the last token (- β·KL)
    advantages: torch.Tensor | None = None  # float [N, R]
    # ---- update_actor (inside a worker, per mini-batch; never sent)
    teacher_hidden: torch.Tensor | None = None  # [rows, R, H] (2H for trust-region), the teacher's head inputs

    def present(self) -> dict:
        """The fields set (not ``None``), in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def rows(self) -> int:
        for name, value in self.present().items():
            if name != "meta":
                return value.shape[0] if isinstance(value, torch.Tensor) else len(value)
        raise ValueError("batch has no per-sample field")

    def require(self, *names: str, stage: str) -> None:
        """One-line ``BatchError`` naming the first of ``names`` not set."""
        for name in names:
            if getattr(self, name) is None:
                raise BatchError(f"batch after '{stage}' lacks {name}")

    def check(self, stage: str) -> None:
        """The fields ``stage`` always adds are set, and every field set agrees with the others in shape."""
        if stage not in STAGES:
            raise ValueError(f"unknown batch stage {stage!r}; one of {', '.join(STAGES)}")
        self.require(*STAGES[stage], stage=stage)
        rows = self.rows()
        for name, value in self.present().items():
            if name == "meta":
                continue
            size = value.shape[0] if isinstance(value, torch.Tensor) else len(value)
            if size != rows:
                raise BatchError(f"batch after '{stage}': {name} has {size} rows, the batch {rows}")
        for reference, dims, names in _SAME_SHAPE:
            ref = getattr(self, reference)
            if ref is None:
                continue
            for name in names:
                value = getattr(self, name)
                if value is not None and tuple(value.shape[:dims]) != tuple(ref.shape[:dims]):
                    raise BatchError(
                        f"batch after '{stage}': {name} is {list(value.shape)}, {reference} {list(ref.shape)}"
                    )
        for name in ("scores", "distillation_mask"):
            value = getattr(self, name)
            if value is not None and value.dim() != 1:
                raise BatchError(f"batch after '{stage}': {name} is {list(value.shape)}, not [{rows}]")
        if self.responses is not None and self.input_ids.shape[1] < self.responses.shape[1]:
            raise BatchError(
                f"batch after '{stage}': input_ids is {list(self.input_ids.shape)}, shorter than responses "
                f"{list(self.responses.shape)} (generate returns prompt + response)"
            )


class BatchError(ValueError):
    """A batch that does not hold what a stage boundary needs (a bug in a stage, never a user's mistake)."""


# The fields each stage always adds (``check``); the conditional ones, documented above, are in OPTIONAL.
STAGES: dict[str, tuple[str, ...]] = {
    "prompts": ("meta", "input_ids", "attention_mask", "uid"),
    "generate": ("position_ids", "responses", "response_mask"),
    "reward": ("response_text", "scores", "reward_extra"),
    "old_log_prob": ("old_log_probs",),
    "ref": ("ref_log_probs",),
    "peers": (
        "teacher_input_ids",
        "teacher_attention_mask",
        "teacher_position_ids",
        "distillation_mask",
        "teacher_messages",
    ),
    "adv": ("token_level_rewards", "advantages"),
    "update_actor": (),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "generate": ("rollout_log_probs",),
    "old_log_prob": ("rollout_is_weights",),
    "peers": ("step_ids",),
    "update_actor": ("teacher_hidden",),
}

# (reference field, leading dims compared, fields that must match it there)
_SAME_SHAPE = (
    ("input_ids", 2, ("attention_mask", "position_ids")),
    (
        "responses",
        2,
        (
            "response_mask",
            "rollout_log_probs",
            "old_log_probs",
            "rollout_is_weights",
            "ref_log_probs",
            "step_ids",
            "token_level_rewards",
            "advantages",
            "teacher_hidden",
        ),
    ),
    ("teacher_input_ids", 2, ("teacher_attention_mask", "teacher_position_ids")),
)


def joined(request: RolloutBatch, out: dict) -> RolloutBatch:
    """The batch after ``generate``: each prompt repeated for its n samples and joined with its response.

    ``out`` is an engine's result (``responses``, ``response_mask``, optional ``rollout_log_probs``,
    n samples per prompt, interleaved)."""
    n = request.meta.sampling.n
    attention_mask = torch.cat([request.attention_mask.repeat_interleave(n, dim=0), out["response_mask"]], dim=1)
    return RolloutBatch(
        meta=request.meta,
        input_ids=torch.cat([request.input_ids.repeat_interleave(n, dim=0), out["responses"]], dim=1),
        attention_mask=attention_mask,
        uid=[u for u in request.uid for _ in range(n)],
        position_ids=position_ids_of(attention_mask),
        responses=out["responses"],
        response_mask=out["response_mask"],
        rollout_log_probs=out.get("rollout_log_probs"),
    )
