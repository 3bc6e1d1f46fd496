"""Outcome advantages (``algorithm.adv_estimator``), verl's estimators and names.

Every estimator takes the step's token-level rewards ``[B, R]`` (the verifier score on the last valid
response token, minus the KL penalty per token when ``algorithm.use_kl_in_reward``) and returns the
advantage of every response token (0 on padding). Groups are the rollouts of one prompt (same uid).

| estimator | advantage of rollout i (s_i = sum of its token rewards) |
|---|---|
| ``grpo`` | s_i - mean(group), divided by (std(group) + eps) when ``norm_adv_by_std_in_grpo`` (Dr. GRPO: off) |
| ``rloo`` | s_i - mean of the *other* rollouts of its group (leave-one-out); a lone rollout keeps s_i |
| ``reinforce_plus_plus`` | the discounted return to go of each token (``algorithm.gamma``), whitened over the batch |
| ``reinforce_plus_plus_baseline`` | s_i - mean(group) on every token, whitened over the batch |

``remax`` needs a second, greedy generation per prompt for its baseline and is not offered.
Formulas and the reference they were checked against: ``docs/algorithm_core.md`` §5.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch

ADV_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline")
REFUSED_ESTIMATORS = {
    "remax": "ReMax's baseline is the reward of an extra greedy rollout per prompt (a second generation pass), "
    "which this trainer does not run; use rloo or grpo",
    "gae": "GAE needs a critic (value model), which this trainer does not have; use grpo, rloo or reinforce_plus_plus",
}


def _groups(uids: Sequence[Hashable], size: int) -> list[torch.Tensor]:
    if len(uids) != size:
        raise ValueError(f"got {size} scores but {len(uids)} uids")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, uid in enumerate(uids):
        members[uid].append(i)
    return [torch.tensor(m) for m in members.values()]


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
    advantages = torch.empty_like(scores)
    for index in _groups(uids, scores.numel()):
        group = scores[index]
        if len(index) == 1:
            mean, std = torch.zeros(()), torch.ones(())
        else:
            mean, std = group.mean(), group.std()
        centred = group - mean
        advantages[index] = centred / (std + epsilon) if norm_by_std else centred
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)


def rloo_advantages(scores: torch.Tensor, uids: Sequence[Hashable], response_mask: torch.Tensor) -> torch.Tensor:
    """A_i = s_i - (sum of the group - s_i) / (n - 1): the mean of the other rollouts is the baseline."""
    scores = scores.detach().to(torch.float32).reshape(-1)
    advantages = scores.clone()  # a group of one: no other rollout, no baseline
    for index in _groups(uids, scores.numel()):
        n = len(index)
        if n > 1:
            group = scores[index]
            advantages[index] = group - (group.sum() - group) / (n - 1)
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (unbiased variance), as verl whitens."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    if count.item() < 2:
        return torch.zeros_like(values)  # no spread to normalise by: no signal
    mean = (values * mask).sum() / count
    var = (((values - mean) ** 2) * mask).sum() / (count - 1)
    return (values - mean) * torch.rsqrt(var + epsilon)


def discounted_returns(token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} within each response (nothing flows back across padding)."""
    mask = response_mask.to(token_rewards.dtype)
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype, device=token_rewards.device)
    for t in reversed(range(token_rewards.shape[1])):
        running = (token_rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def reinforce_plus_plus_advantages(
    token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++: the return to go of each token, whitened over the batch's valid tokens."""
    mask = response_mask.to(torch.float32)
    returns = discounted_returns(token_rewards.detach().to(torch.float32), mask, gamma)
    return masked_whiten(returns, mask) * mask


def reinforce_plus_plus_baseline_advantages(
    scores: torch.Tensor, uids: Sequence[Hashable], response_mask: torch.Tensor
) -> torch.Tensor:
    """REINFORCE++ with the group mean as baseline: (s_i - mean(group)) on each token, whitened over the batch."""
    mask = response_mask.to(torch.float32)
    centred = grpo_advantages(scores, uids, mask, norm_by_std=False)
    return masked_whiten(centred, mask) * mask


def compute_advantages(
    estimator: str,
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    uids: Sequence[Hashable],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The advantages ``[B, R]`` of ``estimator`` (one of ``ADV_ESTIMATORS``) from token-level rewards."""
    if estimator in REFUSED_ESTIMATORS:
        raise ValueError(f"algorithm.adv_estimator={estimator}: {REFUSED_ESTIMATORS[estimator]}")
    scores = (token_rewards.detach().to(torch.float32) * response_mask.to(torch.float32)).sum(-1)
    if estimator == "grpo":
        return grpo_advantages(scores, uids, response_mask, norm_by_std=norm_adv_by_std_in_grpo)
    if estimator == "rloo":
        return rloo_advantages(scores, uids, response_mask)
    if estimator == "reinforce_plus_plus":
        return reinforce_plus_plus_advantages(token_rewards, response_mask, gamma)
    if estimator == "reinforce_plus_plus_baseline":
        return reinforce_plus_plus_baseline_advantages(scores, uids, response_mask)
    raise ValueError(f"algorithm.adv_estimator must be one of {list(ADV_ESTIMATORS)}, got {estimator!r}")


def token_level_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's score on its last valid response token, 0 elsewhere (an empty response: nowhere)."""
    mask = response_mask.to(torch.float32)
    out = torch.zeros_like(mask)
    lengths = mask.sum(-1).long()
    rows = torch.nonzero(lengths > 0).flatten()
    # the last valid column of each row (responses are right-padded, but do not rely on it)
    last = (mask * torch.arange(1, mask.shape[1] + 1, dtype=mask.dtype)).argmax(-1)
    out[rows, last[rows]] = scores.detach().to(torch.float32).reshape(-1)[rows]
    return out
