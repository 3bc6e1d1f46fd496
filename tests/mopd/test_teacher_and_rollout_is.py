"""EMA update, trust-region logit mix and rollout importance weights against plain formulas."""

import math

import pytest
import torch

from mopd.core.losses import rollout_is_weights
from mopd.core.teacher import ema_update_, trust_region_logits


@pytest.mark.parametrize("rate", [0.0, 0.05, 1.0])
def test_ema_update_matches_formula(rate):
    torch.manual_seed(0)
    teacher = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    student = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    expected = [(1 - rate) * t + rate * s for t, s in zip(teacher, student)]
    ema_update_(teacher, student, rate)
    for got, want in zip(teacher, expected):
        assert torch.allclose(got, want, atol=1e-14)


def test_ema_update_on_module_parameters_and_errors():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    ema_update_(a.parameters(), b.parameters(), 0.5)
    for p, q, old in zip(a.parameters(), b.parameters(), before):
        assert torch.allclose(p, 0.5 * old + 0.5 * q)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update_(a.parameters(), b.parameters(), 1.5)
    with pytest.raises(ValueError, match="shapes differ"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.1)


def test_trust_region_is_a_geometric_mixture():
    torch.manual_seed(0)
    ref, stu = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    mixed = trust_region_logits(ref, stu, 0.3)
    assert not mixed.requires_grad
    # softmax of mixed logits == normalised p_ref^(0.7) * p_stu^(0.3)
    p = ref.softmax(-1) ** 0.7 * stu.detach().softmax(-1) ** 0.3
    assert torch.allclose(mixed.softmax(-1), p / p.sum(-1, keepdim=True), atol=1e-12)
    assert torch.equal(trust_region_logits(ref, stu, 0.0), ref)


def test_rollout_is_weights_token_and_sequence():
    old = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]], dtype=torch.float64)
    rollout = torch.tensor([[-1.0, -1.0, -0.1], [-0.4, -0.5, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token = rollout_is_weights(old, rollout, mask, level="token", threshold=2.0)
    expected = [[min(math.exp(1.0), 2.0), 1.0, math.exp(-1.9)], [math.exp(-0.1), 1.0, 0.0]]
    assert torch.allclose(token, torch.tensor(expected, dtype=torch.float64))
    seq = rollout_is_weights(old, rollout, mask, level="sequence", threshold=2.0)
    assert torch.allclose(seq[0], torch.full((3,), math.exp(1.0 - 1.9), dtype=torch.float64))
    assert torch.allclose(seq[1], torch.tensor([math.exp(-0.1), math.exp(-0.1), 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="rollout_is"):
        rollout_is_weights(old, rollout, mask, level="geo")
