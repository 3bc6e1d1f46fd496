"""Outcome advantages for GRPO (used by ``loss_mode=grpo``; logged for the distillation modes)."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import torch


def grpo_advantages(
    scores: torch.Tensor,
    uids: Sequence[Hashable],
    response_mask: torch.Tensor,
    *,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """A_i = s_i - mean of its uid group (divided by std + eps when ``norm_by_std``), per token.

    The std is the unbiased one; a group of one rollout has mean 0 and std 1 (its advantage is its
    score), as in verl, so a lone rollout still carries its reward.
    """
    scores = scores.detach().to(torch.float32).reshape(-1)
    if len(uids) != scores.numel():
        raise ValueError(f"got {scores.numel()} scores but {len(uids)} uids")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, uid in enumerate(uids):
        groups[uid].append(i)
    advantages = torch.empty_like(scores)
    for members in groups.values():
        index = torch.tensor(members, device=scores.device)
        group = scores[index]
        if len(members) == 1:
            mean, std = torch.zeros(()), torch.ones(())
        else:
            mean, std = group.mean(), group.std()
        centred = group - mean
        advantages[index] = centred / (std + epsilon) if norm_by_std else centred
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)
