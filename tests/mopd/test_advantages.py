"""Every advantage estimator against a hand computation on a small batch of two groups."""

import math

import pytest
import torch

from mopd.core.advantages import (
    ADV_ESTIMATORS,
    compute_advantages,
    discounted_returns,
    masked_whiten,
    token_level_scores,
)

# two prompts: A has three rollouts (scores 1, 0, 0.5), B two (0, 0); response lengths 3, 2, 1, 3, 2
UIDS = ["A", "A", "A", "B", "B"]
SCORES = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])


def rewards():
    return token_level_scores(SCORES, MASK)


def test_token_level_scores_put_the_score_on_the_last_valid_token():
    expected = torch.tensor([[0, 0, 1.0], [0, 0.0, 0], [0.5, 0, 0], [0, 0, 0.0], [0, 0.0, 0]])
    torch.testing.assert_close(rewards(), expected)
    empty = token_level_scores(torch.tensor([2.0]), torch.zeros(1, 3))
    assert empty.abs().sum() == 0


@pytest.mark.parametrize("norm", [True, False])
def test_grpo(norm):
    out = compute_advantages("grpo", rewards(), MASK, UIDS, norm_adv_by_std_in_grpo=norm)
    mean_a = 0.5
    std_a = math.sqrt(((1 - 0.5) ** 2 + (0 - 0.5) ** 2 + 0) / 2)  # unbiased: n - 1 = 2
    a = [(1 - mean_a), (0 - mean_a), (0.5 - mean_a)]
    if norm:
        a = [x / (std_a + 1e-6) for x in a]
    per_row = a + [0.0, 0.0]  # B: both 0, std 0 -> 0 / eps = 0
    torch.testing.assert_close(out, torch.tensor(per_row).unsqueeze(-1) * MASK.float())


def test_rloo_is_the_score_minus_the_mean_of_the_others():
    out = compute_advantages("rloo", rewards(), MASK, UIDS)
    per_row = [1 - (0 + 0.5) / 2, 0 - (1 + 0.5) / 2, 0.5 - (1 + 0) / 2, 0 - 0, 0 - 0]
    torch.testing.assert_close(out, torch.tensor(per_row).unsqueeze(-1) * MASK.float())
    lone = compute_advantages(
        "rloo", token_level_scores(torch.tensor([0.7]), torch.ones(1, 2)), torch.ones(1, 2), ["x"]
    )
    torch.testing.assert_close(lone, torch.full((1, 2), 0.7))


def _whiten_by_hand(values, mask):
    xs = [v for v, m in zip(values.flatten().tolist(), mask.flatten().tolist()) if m]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return (values - mean) / math.sqrt(var + 1e-8) * mask


def test_reinforce_plus_plus_whitens_the_return_to_go():
    out = compute_advantages("reinforce_plus_plus", rewards(), MASK, UIDS)
    returns = torch.tensor([[1.0, 1, 1], [0, 0, 0], [0.5, 0, 0], [0, 0, 0], [0, 0, 0]])  # gamma 1
    torch.testing.assert_close(out, _whiten_by_hand(returns, MASK.float()))


def test_reinforce_plus_plus_discounts_with_gamma_and_stops_at_padding():
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])  # the 5 is padding: never flows back
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    expected = torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]])
    torch.testing.assert_close(discounted_returns(token_rewards, mask, 0.5), expected)
    out = compute_advantages("reinforce_plus_plus", token_rewards, mask, ["a", "b"], gamma=0.5)
    torch.testing.assert_close(out, _whiten_by_hand(expected, mask.float()))


def test_reinforce_plus_plus_baseline_subtracts_the_group_mean_then_whitens():
    out = compute_advantages("reinforce_plus_plus_baseline", rewards(), MASK, UIDS)
    centred = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0]).unsqueeze(-1) * MASK.float()
    torch.testing.assert_close(out, _whiten_by_hand(centred, MASK.float()))


def test_token_rewards_with_a_kl_penalty_are_summed_for_the_outcome_estimators():
    token_rewards = rewards() - 0.1 * MASK.float()  # a per-token penalty
    sums = (SCORES - 0.1 * MASK.sum(-1)).tolist()
    out = compute_advantages("rloo", token_rewards, MASK, UIDS)
    expected = [
        sums[0] - (sums[1] + sums[2]) / 2,
        sums[1] - (sums[0] + sums[2]) / 2,
        sums[2] - (sums[0] + sums[1]) / 2,
        sums[3] - sums[4],
        sums[4] - sums[3],
    ]
    torch.testing.assert_close(out, torch.tensor(expected).unsqueeze(-1) * MASK.float())


def test_masked_whiten_ignores_padding_and_handles_no_spread():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    out = masked_whiten(values, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(out[0, :2], torch.tensor([-1.0, 1.0]) / math.sqrt(2.0))  # mean 2, unbiased var 2
    assert masked_whiten(torch.ones(1, 3), torch.tensor([[1, 0, 0]])).abs().sum() == 0


@pytest.mark.parametrize("estimator", ["remax", "gae", "nonsense"])
def test_unknown_or_refused_estimators_raise(estimator):
    with pytest.raises(ValueError, match="adv_estimator"):
        compute_advantages(estimator, rewards(), MASK, UIDS)


def test_every_estimator_is_zero_on_padding():
    for estimator in ADV_ESTIMATORS:
        out = compute_advantages(estimator, rewards(), MASK, UIDS)
        assert out[MASK == 0].abs().sum() == 0, estimator
