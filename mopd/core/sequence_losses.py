"""Sequence-level losses over the rollouts of one prompt: DPO, SimPO (within-prompt preference pairs)
and verified SFT (NLL of the successful rollouts). Inputs are per-sequence log-probabilities summed over
the response (or per-token ones for SFT), uids and rewards; formulas in ``docs/algorithm_core.md`` §4.

Each loss is a mean (over pairs, or over successful sequences); ``normalizer`` replaces the local count
with the mini-batch's global one (``preference_pair_count`` / ``verified_sft_count`` summed over
micro-batches and ranks), so that the micro-batch shares add up to the mini-batch mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mopd.core.losses import agg_loss


def preference_pairs(uids: Sequence, rewards: Sequence[float]) -> list[tuple[int, int]]:
    """Every (chosen, rejected) pair of rollouts with the same uid and a strictly higher reward."""
    pairs = []
    for i, (uid_i, r_i) in enumerate(zip(uids, rewards)):
        for j, (uid_j, r_j) in enumerate(zip(uids, rewards)):
            if i != j and uid_i == uid_j and float(r_i) > float(r_j):
                pairs.append((i, j))
    return pairs


def preference_pair_count(uids: Sequence, rewards: Sequence[float]) -> int:
    """How many pairs ``dpo_loss``/``simpo_loss`` average over (the global normaliser's share)."""
    return len(preference_pairs(uids, [float(r) for r in rewards]))


def verified_sft_count(response_mask: torch.Tensor, rewards, success_threshold: float) -> int:
    """How many sequences ``verified_sft_loss`` averages over: successes with at least one token."""
    rewards = torch.as_tensor([float(r) for r in rewards])
    return int(((rewards >= success_threshold) & (response_mask.sum(-1).cpu() > 0)).sum().item())


def _pairwise_logistic(
    scores: torch.Tensor,
    uids,
    rewards,
    beta: float,
    margin: float,
    label_smoothing: float,
    normalizer: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    pairs = preference_pairs(uids, [float(r) for r in rewards])
    if not pairs:
        return scores.sum() * 0.0, {"actor/pref_pairs": 0.0, "actor/pref_accuracy": 0.0}
    chosen = torch.tensor([c for c, _ in pairs], device=scores.device)
    rejected = torch.tensor([r for _, r in pairs], device=scores.device)
    z = beta * (scores[chosen] - scores[rejected]) - margin
    loss = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    # normalizer: the mini-batch's pair count (all micro-batches and ranks), so the sum over
    # micro-batches is the mini-batch mean whatever the micro-batching.
    return (loss.mean() if normalizer is None else loss.sum() / normalizer), {
        "actor/pref_pairs": float(len(pairs)),
        "actor/pref_accuracy": float((z.detach() > 0).float().mean().item()),
        "actor/pref_margin": float(z.detach().mean().item()),
    }


def dpo_loss(
    seq_log_probs: torch.Tensor,
    ref_seq_log_probs: torch.Tensor,
    uids,
    rewards,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO over all within-prompt pairs; h = sum log pi - sum log pi_ref. ``normalizer`` replaces the
    local pair count (see ``preference_pair_count``)."""
    return _pairwise_logistic(
        seq_log_probs - ref_seq_log_probs.detach(), uids, rewards, beta, 0.0, label_smoothing, normalizer
    )


def simpo_loss(
    seq_log_probs: torch.Tensor,
    lengths: torch.Tensor,
    uids,
    rewards,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO over all within-prompt pairs; h = sum log pi / |y|, target margin gamma."""
    lengths = lengths.to(seq_log_probs.dtype).clamp(min=1.0)
    return _pairwise_logistic(seq_log_probs / lengths, uids, rewards, beta, gamma, label_smoothing, normalizer)


def verified_sft_loss(
    token_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    rewards,
    *,
    success_threshold: float = 1.0,
    length_normalize: bool = True,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """NLL of the successful rollouts only (rejection-sampling fine-tuning), a mean over those
    sequences; ``normalizer`` replaces their local count (see ``verified_sft_count``)."""
    rewards = torch.as_tensor(rewards, dtype=token_log_probs.dtype, device=token_log_probs.device)
    success = (rewards >= success_threshold).to(token_log_probs.dtype)
    mask = response_mask.to(token_log_probs.dtype) * success.unsqueeze(-1)
    mode = "seq-mean-token-mean" if length_normalize else "seq-mean-token-sum"
    loss = agg_loss(-token_log_probs, mask, mode, normalizer=normalizer)
    return loss, {"actor/sft_success_count": float(success.sum().item())}
