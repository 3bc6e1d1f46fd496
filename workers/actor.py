"""The actor's loss on one micro-batch, for every ``policy_loss.loss_mode``.

Inputs are the rank's micro-batch (student sequences ``[prompt | response]``, teacher sequences
``[teacher prompt | response]``, masks, advantages, ...) and the student/teacher modules; the output is
the scalar to backpropagate and its metrics. The maths lives in ``mopd.losses``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from mopd import losses
from mopd.config import SelfDistillationConfig

DISTILLATION_MODES = ("mopd", "sdpo")
PPO_MODES = ("grpo", "vanilla")
PREFERENCE_MODES = ("dpo", "simpo")


def response_logits(module, input_ids, attention_mask, position_ids, response_length: int, temperature: float):
    """Logits scoring the last ``response_length`` tokens ``[B, R, V]`` (float32 upcast left to the loss)."""
    out = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 logits_to_keep=response_length + 1, use_cache=False)
    logits = out.logits[:, :-1]
    return logits / temperature if temperature != 1.0 else logits


class TeacherForward:
    """The teacher's logits on its own (peer-context) inputs, per ``teacher_regularization``."""

    def __init__(self, teacher_module, mode: str, rate: float, student_module=None):
        self.teacher = teacher_module
        self.mode = mode
        self.rate = rate
        self.student = student_module

    @torch.no_grad()
    def __call__(self, batch: dict, response_length: int, temperature: float) -> torch.Tensor:
        args = (batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_position_ids"],
                response_length, temperature)
        logits = response_logits(self.teacher, *args)
        if self.mode == "trust-region" and self.rate > 0:
            from mopd.teacher import trust_region_logits

            logits = trust_region_logits(logits, response_logits(self.student, *args), self.rate)
        return logits


def micro_batch_loss(
    batch: dict,
    student_module,
    *,
    loss_mode: str,
    actor_cfg: dict,
    sd_cfg: SelfDistillationConfig | None,
    teacher: TeacherForward | None,
    ref_module,
    temperature: float,
    normalizer: float | None,
    horizon: int,
    entropy_coeff: float = 0.0,
    entropy_normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the mini-batch loss.

    With ``normalizer`` (and ``entropy_normalizer`` for the entropy bonus) the global counts from
    ``loss_normalizer_counts`` (summed over micro-batches and ranks, divided by the world size), the
    shares add up to the mini-batch loss whatever the micro-batching; without, each share is the
    micro-batch's own mean (the caller divides by the number of micro-batches).
    """
    responses = batch["responses"]
    response_mask = batch["response_mask"].float()
    length = responses.shape[1]
    logits = response_logits(student_module, batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                             length, temperature)
    agg_mode = actor_cfg["loss_agg_mode"]
    metrics: dict[str, float] = {}
    with torch.no_grad():
        entropy = losses.entropy_from_logits(logits.detach())
    metrics["actor/entropy"] = _masked_mean(entropy, response_mask)

    if loss_mode in DISTILLATION_MODES:
        teacher_logits = teacher(batch, length, temperature)
        loss, sd_metrics = losses.self_distillation_loss(
            logits, teacher_logits, responses, response_mask, batch["distillation_mask"], sd_cfg,
            old_log_probs=batch.get("old_log_probs"), rollout_is_weights=batch.get("rollout_is_weights"),
            step_ids=batch.get("step_ids"), loss_agg_mode=agg_mode, normalizer=normalizer, horizon=horizon,
        )
        metrics.update(sd_metrics)
    elif loss_mode in PPO_MODES:
        log_probs = losses.token_log_probs(logits, responses)
        old = batch.get("old_log_probs")
        loss, ppo_metrics = losses.ppo_policy_loss(
            log_probs, old if old is not None else log_probs.detach(), batch["advantages"], response_mask,
            clip_ratio_low=actor_cfg["clip_ratio_low"], clip_ratio_high=actor_cfg["clip_ratio_high"],
            clip_ratio_c=actor_cfg["clip_ratio_c"], loss_agg_mode=agg_mode,
            rollout_is_weights=batch.get("rollout_is_weights"), normalizer=normalizer, horizon=horizon,
        )
        metrics.update(ppo_metrics)
    elif loss_mode in PREFERENCE_MODES or loss_mode == "verified_sft":
        loss, pref_metrics = _sequence_level_loss(batch, logits, responses, response_mask, loss_mode, actor_cfg,
                                                  ref_module, temperature, normalizer)
        metrics.update(pref_metrics)
    else:
        raise ValueError(f"unknown actor_rollout_ref.actor.policy_loss.loss_mode {loss_mode!r}")

    if entropy_coeff:
        # Entropy bonus (differentiable): mean entropy over valid tokens.
        log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        ent = -(log_p.exp() * log_p).sum(-1)
        loss = loss - entropy_coeff * losses.agg_loss(ent, response_mask, "token-mean", normalizer=entropy_normalizer)
    return loss, metrics


def _sequence_level_loss(batch, logits, responses, response_mask, loss_mode, actor_cfg, ref_module, temperature,
                         normalizer):
    policy = actor_cfg["policy_loss"]
    token_lp = losses.token_log_probs(logits, responses)
    rewards = batch["scores"].tolist()
    if loss_mode == "verified_sft":
        return losses.verified_sft_loss(token_lp, response_mask, rewards, success_threshold=policy["sft_success_threshold"],
                                        length_normalize=policy["sft_length_normalize"], normalizer=normalizer)
    seq_lp = (token_lp * response_mask).sum(-1)
    uids = batch["uid"]
    if loss_mode == "dpo":
        with torch.no_grad():
            ref_logits = response_logits(ref_module, batch["input_ids"], batch["attention_mask"],
                                         batch["position_ids"], responses.shape[1], temperature)
            ref_lp = (losses.token_log_probs(ref_logits, responses) * response_mask).sum(-1)
        return losses.dpo_loss(seq_lp, ref_lp, uids, rewards, beta=policy["dpo_beta"],
                               label_smoothing=policy["pref_label_smoothing"], normalizer=normalizer)
    return losses.simpo_loss(seq_lp, response_mask.sum(-1), uids, rewards, beta=policy["simpo_beta"],
                             gamma=policy["simpo_gamma"], label_smoothing=policy["pref_label_smoothing"],
                             normalizer=normalizer)


def loss_normalizer_counts(batch: dict, loss_mode: str, actor_cfg: dict) -> tuple[float, float]:
    """This rank's share of the mini-batch normalisers (the caller sums them over ranks):
    (what the loss averages over, response tokens for the entropy bonus's token mean)."""
    mask = batch["response_mask"].float()
    tokens = float(mask.sum().item())
    policy = actor_cfg["policy_loss"]
    if loss_mode in PREFERENCE_MODES:
        return float(losses.preference_pair_count(batch["uid"], batch["scores"].tolist())), tokens
    if loss_mode == "verified_sft":
        return float(losses.verified_sft_count(mask, batch["scores"].tolist(), policy["sft_success_threshold"])), tokens
    if loss_mode in DISTILLATION_MODES:
        mask = mask * batch["distillation_mask"].float().unsqueeze(-1)
    agg_mode = actor_cfg["loss_agg_mode"]
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


def backward_mini_batch(micro_batches: Iterable[dict], student_module, normalizers: Normalizers | None,
                        device: torch.device, **loss_kwargs) -> tuple[float, dict[str, list[float]]]:
    """Forward/backward every micro-batch of one mini-batch, accumulating gradients in the module.

    Returns this rank's mini-batch loss (the sum of the scaled micro-batch losses) and the
    micro-batches' metrics. Without ``normalizers`` each micro-batch mean is divided by their number.
    """
    from workers.batch import to_device

    micro_batches = list(micro_batches)
    if loss_kwargs["loss_mode"] in PREFERENCE_MODES:
        _check_groups_intact(micro_batches)
    total, metrics = 0.0, {}
    for mb in micro_batches:
        loss, mb_metrics = micro_batch_loss(
            to_device(mb, device), student_module,
            normalizer=normalizers.loss if normalizers else None,
            entropy_normalizer=normalizers.entropy if normalizers else None, **loss_kwargs,
        )
        if normalizers is None:
            loss = loss / len(micro_batches)
        loss.backward()
        total += float(loss.detach().item())
        for k, v in mb_metrics.items():
            metrics.setdefault(k, []).append(v)
    return total, metrics


def _check_groups_intact(micro_batches: list[dict]) -> None:
    seen: dict = {}
    for i, mb in enumerate(micro_batches):
        for uid in dict.fromkeys(mb["uid"]):
            if seen.setdefault(uid, i) != i:
                raise ValueError(
                    f"DPO/SimPO pair the rollouts of one prompt within a micro-batch, but prompt uid={uid!r} is split "
                    f"over micro-batches {seen[uid]} and {i}: keep each prompt's rollouts.n samples together"
                )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    total = mask.sum()
    return float((values * mask).sum().item() / total.item()) if total.item() > 0 else 0.0
