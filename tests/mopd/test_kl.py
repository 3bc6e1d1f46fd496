"""KL estimators against direct float64 computations, and the in-reward penalty's controllers."""

import math

import pytest
import torch

from mopd.core.kl import (
    KL_TYPES,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_in_reward,
    kl_penalty,
    make_kl_controller,
)

LOGP = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]], dtype=torch.float64)
REF = torch.tensor([[-0.7, -1.0, -1.0], [-0.2, -0.5, -30.0]], dtype=torch.float64)


def direct(kind, lp, ref):
    d = lp - ref
    if kind in ("kl", "k1"):
        return d
    if kind == "abs":
        return abs(d)
    if kind in ("mse", "k2"):
        return 0.5 * d * d
    r = ref - lp  # k3: ratio - log ratio - 1 with ratio = p_ref / p
    r = min(max(r, -20.0), 20.0)
    return min(max(math.exp(r) - r - 1.0, -10.0), 10.0)


@pytest.mark.parametrize("kind", KL_TYPES)
def test_each_estimator_equals_the_direct_formula(kind):
    out = kl_penalty(LOGP, REF, kind)
    expected = torch.tensor(
        [[direct(kind, a, b) for a, b in zip(ra, rb)] for ra, rb in zip(LOGP.tolist(), REF.tolist())],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected)


def test_k3_is_clamped_and_nonnegative_and_its_gradient_flows_through_the_policy():
    lp = LOGP.clone().requires_grad_(True)
    out = kl_penalty(lp, REF, "low_var_kl")
    assert (out >= 0).all() and out.max() <= 10.0
    out.sum().backward()
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp), where not clamped
    grad = 1 - torch.exp(REF - LOGP)
    free = kl_penalty(LOGP, REF, "low_var_kl") < 10.0
    torch.testing.assert_close(lp.grad[free], grad[free])


def test_aliases_agree_and_unknown_types_raise():
    for a, b in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        torch.testing.assert_close(kl_penalty(LOGP, REF, a), kl_penalty(LOGP, REF, b))
    with pytest.raises(ValueError, match="KL type"):
        kl_penalty(LOGP, REF, "k4")


def test_kl_in_reward_subtracts_beta_times_kl_per_token_and_reports_the_batch_kl():
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ctrl = FixedKLController(0.5)
    rewards, metrics = apply_kl_in_reward(scores, LOGP, REF, mask, ctrl, "kl")
    kl = (LOGP - REF).float() * mask
    torch.testing.assert_close(rewards, scores - 0.5 * kl)
    expected_kl = ((kl[0].sum() / 3 + kl[1].sum() / 2) / 2).item()
    assert metrics["critic/kl"] == pytest.approx(expected_kl) and metrics["critic/kl_coef"] == 0.5
    assert ctrl.value == 0.5


def test_adaptive_controller_moves_beta_toward_the_target_by_at_most_20_percent_of_the_error():
    ctrl = AdaptiveKLController(0.1, target_kl=0.1, horizon=100)
    ctrl.update(current_kl=1.0, n_steps=10)  # error clipped at +0.2
    assert ctrl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctrl.update(current_kl=0.05, n_steps=10)  # error -0.5 -> clipped at -0.2
    assert ctrl.value == pytest.approx(0.1 * 1.02 * (1 - 0.02))
    ctrl.update(current_kl=0.11, n_steps=50)  # error +0.1 within the clip
    assert ctrl.value == pytest.approx(0.1 * 1.02 * 0.98 * (1 + 0.1 * 0.5))
    restored = make_kl_controller({"type": "adaptive", "kl_coef": 9.0, "target_kl": 0.1, "horizon": 100})
    restored.load_state_dict(ctrl.state_dict())
    assert restored.value == ctrl.value
