"""The actor's loss on one micro-batch, for every ``policy_loss.loss_mode``.

Inputs are the rank's micro-batch (student sequences ``[prompt | response]``, teacher sequences
``[teacher prompt | response]``, masks, advantages, ...) and the student/teacher modules; the output is
the scalar to backpropagate and its metrics. The maths lives in ``mopd.core.losses`` and ``mopd.core.fused_head``
(the LM head fused with the per-token quantities: no ``[B, T, V]`` logits, ``workers.forward``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch

from mopd.core import losses, sequence_losses
from mopd.core.config import SelfDistillationConfig
from mopd.core.fused_head import fused_head
from mopd.core.kl import kl_penalty
from mopd.core.loss_modes import DISTILLATION_MODES, PPO_MODES, PREFERENCE_MODES
from workers import forward, model_utils, prefix_plan, shared_prefix
from workers.batch import to_device
from workers.config import ActorConfig
from workers.rollout_batch import RolloutBatch


class TeacherForward:
    """The teacher's head inputs on its own (peer-context) sequences, per ``teacher_regularization``:
    final hidden states at the valid response positions ``[M, H]`` and the head weight ``[V, H]``, so
    that its logits are ``hidden @ weight.T`` (``mopd.core.fused_head`` never materialises them).

    ``trust-region``: logits (1 - r)·z_ref + r·z_student are one linear map of the concatenated hidden
    states ``[(1 - r)·h_ref, r·h_student]`` and heads ``[W_ref, W_student]``.
    """

    def __init__(
        self,
        teacher_module,
        mode: str,
        rate: float,
        student_module=None,
        remove_padding: bool = False,
        shared_prefix: bool = False,
    ):
        self.teacher = teacher_module
        self.mode = mode
        self.rate = rate
        self.student = student_module
        self.remove_padding = remove_padding
        self.shared_prefix = shared_prefix

    def plan(self, batch: RolloutBatch) -> prefix_plan.Plan | None:
        """How the shared-prefix forward would run this batch (``None``: the plain forward)."""
        if not self.shared_prefix:
            return None
        return prefix_plan.plan(
            self.teacher, batch.teacher_input_ids, batch.teacher_attention_mask, batch.response_mask
        )

    def _hidden(self, module, batch: RolloutBatch, batch_plan: prefix_plan.Plan | None) -> torch.Tensor:
        args = (
            batch.teacher_input_ids,
            batch.teacher_attention_mask,
            batch.teacher_position_ids,
            batch.response_mask,
        )
        if batch_plan is not None:
            return shared_prefix.shared_prefix_hidden(module, *args, batch_plan)
        return forward.response_hidden(module, *args, self.remove_padding)

    @torch.no_grad()
    def mini_batch_hidden(
        self,
        chunks: list[RolloutBatch],
        rows: list[list[int]],
        size: int,
        device: torch.device,
        most_over_ranks=lambda calls: calls,
    ) -> torch.Tensor:
        """The head inputs ``[size, R, H]`` (``2H`` for trust-region) of a mini-batch cut into ``chunks``
        (``chunks[i]`` holds the mini-batch rows ``rows[i]``), zeros at padding; and the tokens it ran.

        Under FSDP2 every forward all-gathers, so every rank must make as many, and in the same order per
        module; the shared-prefix path makes a data-dependent number. ``most_over_ranks`` (a MAX
        all-reduce) agrees on the most before any forward; a rank with fewer makes one-token forwards at
        the end of each module's pass, so nothing else runs between the all-gathers. The teacher's pass
        and the student's (trust-region) are separate for the same reason."""
        plans = [self.plan(chunk) for chunk in chunks]
        calls = most_over_ranks(sum(p.forwards if p is not None else 1 for p in plans))
        out = self._module_pass(self.teacher, chunks, plans, rows, size, device, calls)
        if self.mixes_student:
            out = self._mix(out, self._module_pass(self.student, chunks, plans, rows, size, device, calls))
        return out, self.tokens_run(chunks, plans)

    def tokens_run(self, chunks: list[RolloutBatch], plans: list[prefix_plan.Plan | None]) -> int:
        """Tokens the pass over ``chunks`` runs, padding excluded (both modules' for trust-region)."""
        tokens = sum(prefix_plan.tokens_run(p, c.teacher_attention_mask) for c, p in zip(chunks, plans))
        return tokens * (2 if self.mixes_student else 1)

    def _mix(self, teacher_hidden: torch.Tensor, student_hidden: torch.Tensor) -> torch.Tensor:
        """Trust-region head inputs ``[(1 - r)·h_ref, r·h_student]``; the student's pass is over, reshard it."""
        model_utils.reshard(self.student)
        return torch.cat(
            [(1.0 - self.rate) * teacher_hidden, self.rate * student_hidden.to(teacher_hidden.dtype)], dim=-1
        )

    def _module_pass(self, module, chunks, plans, rows, size, device, calls: int) -> torch.Tensor:
        made = [0]
        handle = module.register_forward_pre_hook(lambda *_: made.__setitem__(0, made[0] + 1))
        try:
            out = None
            for chunk, batch_plan, index in zip(chunks, plans, rows):
                mb = to_device(chunk, device)
                valid = mb.response_mask.bool()
                hidden = self._hidden(module, mb, batch_plan)
                if out is None:
                    out = torch.zeros((size, *valid.shape[1:], hidden.shape[-1]), dtype=hidden.dtype, device=device)
                rows, cols = valid.nonzero(as_tuple=True)  # row-major, as ``hidden`` is
                out[torch.as_tensor(index, device=device)[rows], cols] = hidden
            token = torch.zeros((1, 1), dtype=torch.long, device=device)
            while made[0] < calls:
                module(input_ids=token, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        return out

    @property
    def mixes_student(self) -> bool:
        return self.mode == "trust-region" and self.rate > 0

    @torch.no_grad()
    def hidden(self, batch: RolloutBatch) -> torch.Tensor:
        """The head inputs ``[M, H]`` (``[M, 2H]`` for trust-region) at the batch's valid response positions
        (one rank's view: ``mini_batch_hidden`` is the FSDP2-safe pass over a mini-batch)."""
        batch_plan = self.plan(batch)
        hidden = self._hidden(self.teacher, batch, batch_plan)
        if self.mixes_student:
            hidden = self._mix(hidden, self._hidden(self.student, batch, batch_plan))
        return hidden

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(head inputs, head weight); the head inputs come from ``batch.teacher_hidden`` (``[B, R, H]``,
        the worker's teacher pass over the mini-batch) when present."""
        if batch.teacher_hidden is not None:
            hidden = batch.teacher_hidden[batch.response_mask.bool()]
        else:
            hidden = self.hidden(batch)
        weight = forward.full_head_weight(self.teacher)
        if self.mixes_student:
            s_weight = forward.full_head_weight(self.student)
            weight = torch.cat([weight, s_weight.to(weight.dtype)], dim=-1)  # a copy: the student may reshard
            model_utils.reshard(self.student)
        return hidden, weight

    def release(self) -> None:
        """Reshard the teacher's head weight (kept unsharded until the micro-batch's backward is done)."""
        model_utils.reshard(self.teacher)


def micro_batch_loss(
    batch: RolloutBatch,
    student_module,
    *,
    loss_mode: str,
    actor_cfg: ActorConfig,
    sd_cfg: SelfDistillationConfig | None,
    teacher: TeacherForward | None,
    ref_module,
    temperature: float,
    normalizer: float | None,
    horizon: int,
    entropy_coeff: float = 0.0,
    entropy_normalizer: float | None = None,
    remove_padding: bool = False,
    student_shared_prefix: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the mini-batch loss.

    With ``normalizer`` (and ``entropy_normalizer`` for the entropy bonus) the global counts from
    ``loss_normalizer_counts`` (summed over micro-batches and ranks, divided by the world size), the
    shares add up to the mini-batch loss whatever the micro-batching; without, each share is the
    micro-batch's own mean (the caller divides by the number of micro-batches).
    """
    responses = batch.responses
    response_mask = batch.response_mask.float()
    labels = responses[response_mask.bool()]
    agg_mode = actor_cfg.loss_agg_mode
    metrics: dict[str, float] = {}

    head_kwargs: dict = {"temperature": temperature}
    teacher_logp = None
    if loss_mode in DISTILLATION_MODES:
        teacher_hidden, teacher_weight = teacher(batch)
        if sd_cfg.full_logit_distillation:
            head_kwargs.update(
                teacher_hidden=teacher_hidden,
                teacher_weight=teacher_weight,
                alpha=sd_cfg.alpha,
                topk=sd_cfg.distillation_topk,
                add_tail=sd_cfg.distillation_add_tail,
            )
        else:
            with torch.no_grad():
                teacher_logp = forward.scatter_tokens(
                    fused_head(teacher_hidden, teacher_weight, labels, temperature=temperature)[0], response_mask
                )

    # Outputs the loss does not differentiate are detached, so backward skips their vocabulary work.
    keep_grad = (not (loss_mode in DISTILLATION_MODES and sd_cfg.full_logit_distillation), bool(entropy_coeff), True)

    def fn(hidden, weight, where=None):  # ``where``: which of the M positions ``hidden`` holds (default all)
        pick = (lambda t: t) if where is None else (lambda t: t[where])
        outs = fused_head(
            hidden, weight, pick(labels), **{k: pick(v) if k == "teacher_hidden" else v for k, v in head_kwargs.items()}
        )
        return torch.stack([o if keep else o.detach() for o, keep in zip(outs, keep_grad) if o is not None], dim=-1)

    tokens_run: list[int] = []
    values = shared_prefix.response_head(
        student_module,
        batch.input_ids,
        batch.attention_mask,
        batch.position_ids,
        response_mask,
        fn,
        remove_padding,
        share=student_shared_prefix,
        tokens_run=tokens_run,
    )
    metrics["perf/student_tokens_run"] = float(tokens_run[0])
    log_probs, entropy = (forward.scatter_tokens(values[:, i], response_mask) for i in (0, 1))
    metrics["actor/entropy"] = _masked_mean(entropy.detach(), response_mask)

    if loss_mode in DISTILLATION_MODES:
        divergence = forward.scatter_tokens(values[:, 2], response_mask) if sd_cfg.full_logit_distillation else None
        loss, sd_metrics = losses.self_distillation_loss_from_tokens(
            log_probs if teacher_logp is not None else log_probs.detach(),
            divergence,
            teacher_logp,
            response_mask,
            batch.distillation_mask,
            sd_cfg,
            old_log_probs=batch.old_log_probs,
            rollout_is_weights=batch.rollout_is_weights,
            step_ids=batch.step_ids,
            loss_agg_mode=agg_mode,
            normalizer=normalizer,
            horizon=horizon,
        )
        metrics.update(sd_metrics)
    elif loss_mode in PPO_MODES:
        old = batch.old_log_probs
        loss, ppo_metrics = losses.ppo_policy_loss(
            log_probs,
            old if old is not None else log_probs.detach(),
            batch.advantages,
            response_mask,
            clip_ratio_low=actor_cfg.clip_ratio_low,
            clip_ratio_high=actor_cfg.clip_ratio_high,
            clip_ratio_c=actor_cfg.clip_ratio_c,
            loss_agg_mode=agg_mode,
            rollout_is_weights=batch.rollout_is_weights,
            normalizer=normalizer,
            horizon=horizon,
        )
        metrics.update(ppo_metrics)
        if actor_cfg.use_kl_loss:  # KL to the frozen initial model, aggregated like the policy loss
            kl = kl_penalty(log_probs, batch.ref_log_probs, actor_cfg.kl_loss_type)
            kl_loss = losses.agg_loss(kl, response_mask, agg_mode, normalizer=normalizer, horizon=horizon)
            loss = loss + actor_cfg.kl_loss_coef * kl_loss
            metrics["actor/kl_loss"] = _masked_mean(kl.detach(), response_mask)
            metrics["actor/kl_coef"] = float(actor_cfg.kl_loss_coef)
    elif loss_mode in PREFERENCE_MODES or loss_mode == "verified_sft":
        loss, pref_metrics = _sequence_level_loss(
            batch,
            log_probs,
            response_mask,
            loss_mode,
            actor_cfg,
            ref_module,
            temperature,
            normalizer,
            remove_padding,
            student_shared_prefix,
        )
        metrics.update(pref_metrics)
    else:
        raise ValueError(f"unknown actor_rollout_ref.actor.policy_loss.loss_mode {loss_mode!r}")

    if entropy_coeff:
        # Entropy bonus (differentiable): mean entropy over valid tokens.
        loss = loss - entropy_coeff * losses.agg_loss(
            entropy, response_mask, "token-mean", normalizer=entropy_normalizer
        )
    return loss, metrics


def _sequence_level_loss(
    batch,
    token_lp,
    response_mask,
    loss_mode,
    actor_cfg,
    ref_module,
    temperature,
    normalizer,
    remove_padding,
    share: bool,
):
    policy = actor_cfg.policy_loss
    rewards = batch.scores.tolist()
    if loss_mode == "verified_sft":
        return sequence_losses.verified_sft_loss(
            token_lp,
            response_mask,
            rewards,
            success_threshold=policy.sft_success_threshold,
            length_normalize=policy.sft_length_normalize,
            normalizer=normalizer,
        )
    seq_lp = (token_lp * response_mask).sum(-1)
    uids = batch.uid
    if loss_mode == "dpo":
        ref_lp = forward.response_log_probs(
            ref_module,
            batch.input_ids,
            batch.attention_mask,
            batch.position_ids,
            batch.responses,
            response_mask,
            temperature,
            remove_padding,
            partial(shared_prefix.response_head, share=share),
        )
        return sequence_losses.dpo_loss(
            seq_lp,
            ref_lp.sum(-1),
            uids,
            rewards,
            beta=policy.dpo_beta,
            label_smoothing=policy.pref_label_smoothing,
            normalizer=normalizer,
        )
    return sequence_losses.simpo_loss(
        seq_lp,
        response_mask.sum(-1),
        uids,
        rewards,
        beta=policy.simpo_beta,
        gamma=policy.simpo_gamma,
        label_smoothing=policy.pref_label_smoothing,
        normalizer=normalizer,
    )


def loss_normalizer_counts(batch: RolloutBatch, loss_mode: str, actor_cfg: ActorConfig) -> tuple[float, float]:
    """This rank's share of the mini-batch normalisers (the caller sums them over ranks):
    (what the loss averages over, response tokens for the entropy bonus's token mean)."""
    mask = batch.response_mask.float()
    tokens = float(mask.sum().item())
    policy = actor_cfg.policy_loss
    if loss_mode in PREFERENCE_MODES:
        return float(sequence_losses.preference_pair_count(batch.uid, batch.scores.tolist())), tokens
    if loss_mode == "verified_sft":
        return float(
            sequence_losses.verified_sft_count(mask, batch.scores.tolist(), policy.sft_success_threshold)
        ), tokens
    if loss_mode in DISTILLATION_MODES:
        mask = mask * batch.distillation_mask.float().unsqueeze(-1)
    agg_mode = actor_cfg.loss_agg_mode
    if agg_mode == "token-mean":
        return float(mask.sum().item()), tokens
    if agg_mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return float((mask.sum(-1) > 0).sum().item()), tokens
    return float(mask.shape[0]), tokens


@dataclass
class Normalizers:
    """Global mini-batch counts (summed over ranks, divided by the world size: FSDP2 averages
    gradients over ranks) that every micro-batch's loss divides by."""

    loss: float
    entropy: float


def backward_mini_batch(
    micro_batches: Iterable[RolloutBatch],
    student_module,
    normalizers: Normalizers | None,
    device: torch.device,
    **loss_kwargs,
) -> tuple[float, dict[str, list[float]]]:
    """Forward/backward every micro-batch of one mini-batch, accumulating gradients in the module.

    Returns this rank's mini-batch loss (the sum of the scaled micro-batch losses) and the
    micro-batches' metrics. Without ``normalizers`` each micro-batch mean is divided by their number.
    """
    micro_batches = list(micro_batches)
    if loss_kwargs["loss_mode"] in PREFERENCE_MODES:
        _check_groups_intact(micro_batches)
    total, metrics = 0.0, {}
    for mb in micro_batches:
        loss, mb_metrics = micro_batch_loss(
            to_device(mb, device),
            student_module,
            normalizer=normalizers.loss if normalizers else None,
            entropy_normalizer=normalizers.entropy if normalizers else None,
            **loss_kwargs,
        )
        if normalizers is None:
            loss = loss / len(micro_batches)
        loss.backward()
        if loss_kwargs.get("teacher") is not None:
            loss_kwargs["teacher"].release()
        total += float(loss.detach().item())
        for k, v in mb_metrics.items():
            metrics.setdefault(k, []).append(v)
    return total, metrics


def _check_groups_intact(micro_batches: list[RolloutBatch]) -> None:
    seen: dict = {}
    for i, mb in enumerate(micro_batches):
        for uid in dict.fromkeys(mb.uid):
            if seen.setdefault(uid, i) != i:
                raise ValueError(
                    f"DPO/SimPO pair the rollouts of one prompt within a micro-batch, but prompt uid={uid!r} is split "
                    f"over micro-batches {seen[uid]} and {i}: keep each prompt's rollouts.n samples together"
                )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    total = mask.sum()
    return float((values * mask).sum().item() / total.item()) if total.item() > 0 else 0.0
