"""The actor's loss on one micro-batch, for every ``policy_loss.loss_mode``.

Inputs are the rank's micro-batch (student sequences ``[prompt | response]``, teacher sequences
``[teacher prompt | response]``, masks, advantages, ...) and the student/teacher modules; the output is
the scalar to backpropagate and its metrics. The maths lives in ``mopd.losses``.
"""

from __future__ import annotations

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
) -> tuple[torch.Tensor, dict[str, float]]:
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
                                                  ref_module, temperature)
        metrics.update(pref_metrics)
    else:
        raise ValueError(f"unknown actor_rollout_ref.actor.policy_loss.loss_mode {loss_mode!r}")

    if entropy_coeff:
        # Entropy bonus (differentiable): mean entropy over valid tokens.
        log_p = torch.log_softmax(logits.float(), dim=-1)
        ent = -(log_p.exp() * log_p).sum(-1)
        loss = loss - entropy_coeff * losses.agg_loss(ent, response_mask, "token-mean")
    return loss, metrics


def _sequence_level_loss(batch, logits, responses, response_mask, loss_mode, actor_cfg, ref_module, temperature):
    policy = actor_cfg["policy_loss"]
    token_lp = losses.token_log_probs(logits, responses)
    rewards = batch["scores"].tolist()
    if loss_mode == "verified_sft":
        return losses.verified_sft_loss(token_lp, response_mask, rewards, success_threshold=policy["sft_success_threshold"],
                                        length_normalize=policy["sft_length_normalize"])
    seq_lp = (token_lp * response_mask).sum(-1)
    uids = batch["uid"]
    if loss_mode == "dpo":
        with torch.no_grad():
            ref_logits = response_logits(ref_module, batch["input_ids"], batch["attention_mask"],
                                         batch["position_ids"], responses.shape[1], temperature)
            ref_lp = (losses.token_log_probs(ref_logits, responses) * response_mask).sum(-1)
        return losses.dpo_loss(seq_lp, ref_lp, uids, rewards, beta=policy["dpo_beta"],
                               label_smoothing=policy["pref_label_smoothing"])
    return losses.simpo_loss(seq_lp, response_mask.sum(-1), uids, rewards, beta=policy["simpo_beta"],
                             gamma=policy["simpo_gamma"], label_smoothing=policy["pref_label_smoothing"])


def loss_normalizer_count(batch: dict, loss_mode: str, agg_mode: str) -> float:
    """This rank's share of the mini-batch normaliser (summed over ranks by the caller)."""
    mask = batch["response_mask"].float()
    if loss_mode in DISTILLATION_MODES:
        mask = mask * batch["distillation_mask"].float().unsqueeze(-1)
    if agg_mode == "token-mean":
        return float(mask.sum().item())
    if agg_mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return float((mask.sum(-1) > 0).sum().item())
    return float(mask.shape[0])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    total = mask.sum()
    return float((values * mask).sum().item() / total.item()) if total.item() > 0 else 0.0
