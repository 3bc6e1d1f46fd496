"""Independent reference tests for the policy-gradient, GRPO-advantage, preference and SFT losses.

References are written from ``docs/algorithm_core.md`` §4 in float64 with plain loops; values and
gradients of the implementation are compared against them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mopd.core.advantages import grpo_advantages
from mopd.core.losses import ppo_policy_loss
from mopd.core.sequence_losses import dpo_loss, preference_pairs, simpo_loss, verified_sft_loss

AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grad(out, inp):
    (g,) = torch.autograd.grad(out, [inp])
    return g


def _assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=""):
    got = got.detach().double()
    expected = expected.detach().double()
    assert got.shape == expected.shape, f"{msg}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def ref_agg(values, mask, mode, normalizer=None, horizon=None):
    values = values.double()
    mask = mask.double()
    rows, length = values.shape
    total = values.new_zeros(())
    if mode == "token-mean":
        for i in range(rows):
            for t in range(length):
                total = total + values[i, t] * mask[i, t]
        return total / (max(1.0, float(mask.sum())) if normalizer is None else normalizer)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        n_seq = 0
        for i in range(rows):
            n_i = float(mask[i].sum())
            if n_i == 0:
                continue
            n_seq += 1
            row = values.new_zeros(())
            for t in range(length):
                row = row + values[i, t] * mask[i, t]
            total = total + (row / n_i if mode == "seq-mean-token-mean" else row)
        return total / (max(1, n_seq) if normalizer is None else normalizer)
    if mode == "seq-mean-token-sum-norm":
        for i in range(rows):
            for t in range(length):
                total = total + values[i, t] * mask[i, t]
        n_rows = rows if normalizer is None else normalizer
        return total / (n_rows * (length if horizon is None else horizon))
    raise AssertionError(mode)


def ref_ppo(log_probs, old, adv, mask, low, high, c, mode, rollout_w=None, normalizer=None, horizon=None):
    lp = log_probs.double()
    rows, length = lp.shape
    per_token = [[None] * length for _ in range(rows)]
    for i in range(rows):
        for t in range(length):
            a = float(adv[i, t])
            r = torch.exp(torch.clamp(lp[i, t] - float(old[i, t]), -20.0, 20.0))
            l1 = -a * r
            l2 = -a * torch.clamp(r, 1 - low, 1 + high)
            loss = torch.maximum(l1, l2)
            if a < 0 and c is not None:
                loss = torch.minimum(loss, torch.tensor(-a * c, dtype=torch.float64))
            if rollout_w is not None:
                loss = loss * float(rollout_w[i, t])
            per_token[i][t] = loss
    values = torch.stack([torch.stack(row) for row in per_token])
    return ref_agg(values, mask, mode, normalizer, horizon)


def ref_pairs(uids, rewards):
    out = set()
    for i in range(len(uids)):
        for j in range(len(uids)):
            if uids[i] == uids[j] and float(rewards[i]) > float(rewards[j]):
                out.add((i, j))
    return out


def ref_pref_loss(h, pairs, beta, gamma, eps):
    terms = []
    for c, r in sorted(pairs):
        z = beta * (h[c] - h[r]) - gamma
        terms.append(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------------------------------
# ppo_policy_loss
# ------------------------------------------------------------------------------------------------
def _ppo_batch(seed, rows=4, length=6):
    old = -torch.rand(rows, length, generator=_gen(seed), dtype=torch.float64) * 3
    delta = torch.randn(rows, length, generator=_gen(seed + 1), dtype=torch.float64) * 0.6
    delta[0, 0] = 1.5  # ratio 4.5: beyond the dual clip bound for negative advantages
    delta[0, 1] = -1.5
    delta[1, 0] = 25.0  # beyond the +/-20 clamp
    delta[1, 1] = -25.0
    log_probs = old + delta
    adv = torch.randn(rows, length, generator=_gen(seed + 2), dtype=torch.float64)
    adv[0, 0] = -1.3
    adv[1, 0] = -0.7
    adv[1, 1] = 0.9
    mask = (torch.rand(rows, length, generator=_gen(seed + 3)) > 0.3).double()
    mask[0, :3] = 1.0
    mask[1, :3] = 1.0
    mask[2] = 0.0
    rollout_w = torch.rand(rows, length, generator=_gen(seed + 4), dtype=torch.float64) + 0.5
    return log_probs, old, adv, mask, rollout_w


@pytest.mark.parametrize("use_rollout", [False, True])
@pytest.mark.parametrize("clip_c", [3.0, None, 1.5])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_ppo_policy_loss_matches_reference(mode, clip_c, use_rollout):
    lp0, old, adv, mask, rw = _ppo_batch(1)
    kw = dict(
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=clip_c,
        loss_agg_mode=mode,
        rollout_is_weights=rw if use_rollout else None,
    )
    lp = lp0.clone().requires_grad_(True)
    loss, metrics = ppo_policy_loss(lp, old, adv, mask, **kw)
    assert loss.dim() == 0
    lp_ref = lp0.clone().requires_grad_(True)
    ref = ref_ppo(lp_ref, old, adv, mask, 0.2, 0.28, clip_c, mode, rw if use_rollout else None)
    _assert_close(loss, ref, msg="loss")
    _assert_close(_grad(loss, lp), _grad(ref, lp_ref), msg="grad")
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):
        assert key in metrics, key
        value = metrics[key]
        value = value.item() if isinstance(value, torch.Tensor) else value
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"):
        assert 0.0 <= float(metrics[key]) <= 1.0


@pytest.mark.parametrize("normalizer,horizon", [(10.0, None), (3.0, 12), (None, 12)])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_ppo_policy_loss_normalizer_and_horizon(mode, normalizer, horizon):
    lp0, old, adv, mask, rw = _ppo_batch(2)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = ppo_policy_loss(
        lp,
        old,
        adv,
        mask,
        clip_ratio_low=0.1,
        clip_ratio_high=0.3,
        clip_ratio_c=2.5,
        loss_agg_mode=mode,
        rollout_is_weights=rw,
        normalizer=normalizer,
        horizon=horizon,
    )
    lp_ref = lp0.clone().requires_grad_(True)
    ref = ref_ppo(lp_ref, old, adv, mask, 0.1, 0.3, 2.5, mode, rw, normalizer, horizon)
    _assert_close(loss, ref, msg="loss")
    _assert_close(_grad(loss, lp), _grad(ref, lp_ref), msg="grad")


def test_ppo_dual_clip_negative_advantage_big_ratio():
    old = torch.zeros(1, 3, dtype=torch.float64)
    lp = torch.tensor([[math.log(10.0), math.log(2.0), math.log(1.1)]], dtype=torch.float64, requires_grad=True)
    adv = torch.full((1, 3), -1.0, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    loss, _ = ppo_policy_loss(lp, old, adv, mask, clip_ratio_c=3.0, loss_agg_mode="seq-mean-token-sum")
    # token 0: max(10, 1.28) = 10 -> dual clip min(10, 3) = 3 (no gradient)
    # token 1: max(2, 1.28) = 2 (< 3) -> 2, gradient -A*r = 2
    # token 2: r = 1.1 inside the clip range -> 1.1, gradient 1.1
    assert loss.item() == pytest.approx(3.0 + 2.0 + 1.1, rel=1e-12)
    _assert_close(_grad(loss, lp), torch.tensor([[0.0, 2.0, 1.1]], dtype=torch.float64))
    # dual clip disabled
    loss2, _ = ppo_policy_loss(lp, old, adv, mask, clip_ratio_c=None, loss_agg_mode="seq-mean-token-sum")
    assert loss2.item() == pytest.approx(10.0 + 2.0 + 1.1, rel=1e-12)
    _assert_close(_grad(loss2, lp), torch.tensor([[10.0, 2.0, 1.1]], dtype=torch.float64))
    # positive advantage with a big ratio: clipped at 1+high, no gradient; small ratio: unclipped side
    lp3 = torch.tensor([[math.log(10.0), math.log(0.5), math.log(0.9)]], dtype=torch.float64, requires_grad=True)
    loss3, _ = ppo_policy_loss(lp3, old, -adv, mask, loss_agg_mode="seq-mean-token-sum")
    assert loss3.item() == pytest.approx(-1.28 - 0.5 - 0.9, rel=1e-12)
    _assert_close(_grad(loss3, lp3), torch.tensor([[0.0, -0.5, -0.9]], dtype=torch.float64))
    # negative advantage with a small ratio: max(-A r, -A clip) = -A (1-low) = 0.8, no gradient
    lp4 = torch.tensor([[math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    loss4, _ = ppo_policy_loss(lp4, old[:, :1], adv[:, :1], mask[:, :1], loss_agg_mode="token-mean")
    assert loss4.item() == pytest.approx(0.8, rel=1e-12)
    _assert_close(_grad(loss4, lp4), torch.zeros(1, 1, dtype=torch.float64))


def test_ppo_ratio_is_clamped_at_20():
    old = torch.zeros(1, 1, dtype=torch.float64)
    lp = torch.full((1, 1), 30.0, dtype=torch.float64, requires_grad=True)
    adv = torch.full((1, 1), -2.0, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    loss, _ = ppo_policy_loss(lp, old, adv, mask, clip_ratio_c=None, loss_agg_mode="token-mean")
    assert loss.item() == pytest.approx(2.0 * math.exp(20.0), rel=1e-12)
    assert torch.isfinite(loss)


def test_ppo_on_policy_metrics_and_all_masked():
    lp0, _, adv, mask, _ = _ppo_batch(3)
    lp = lp0.clone().requires_grad_(True)
    loss, metrics = ppo_policy_loss(lp, lp0.clone(), adv, mask, loss_agg_mode="token-mean")
    # ratio 1 everywhere: loss = -mean(A), nothing clipped, no KL
    assert loss.item() == pytest.approx(-float((adv * mask).sum() / mask.sum()), rel=1e-12)
    assert float(metrics["actor/pg_clipfrac"]) == 0.0
    assert float(metrics["actor/pg_clipfrac_lower"]) == 0.0
    assert abs(float(metrics["actor/ppo_kl"])) < 1e-12
    for mode in AGG_MODES:
        lp = lp0.clone().requires_grad_(True)
        loss, metrics = ppo_policy_loss(lp, lp0 - 0.3, adv, torch.zeros_like(mask), loss_agg_mode=mode)
        assert loss.item() == 0.0 and not torch.isnan(loss)
        loss.backward()
        assert lp.grad is not None and torch.equal(lp.grad, torch.zeros_like(lp))


def test_ppo_float32():
    lp0, old, adv, mask, rw = _ppo_batch(4)
    lp = lp0.float().requires_grad_(True)
    loss, _ = ppo_policy_loss(
        lp, old.float(), adv.float(), mask.float(), loss_agg_mode="token-mean", rollout_is_weights=rw.float()
    )
    lp_ref = lp0.float().double().requires_grad_(True)
    ref = ref_ppo(lp_ref, old.float(), adv.float(), mask, 0.2, 0.28, 3.0, "token-mean", rw.float())
    _assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    _assert_close(_grad(loss, lp), _grad(ref, lp_ref), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# grpo_advantages
# ------------------------------------------------------------------------------------------------
def ref_grpo(scores, uids, mask, norm_by_std=True, eps=1e-6):
    scores = [float(x) for x in scores]
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, u in enumerate(uids):
        group = [scores[j] for j in range(len(uids)) if uids[j] == u]
        if len(group) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(group) / len(group)
            std = math.sqrt(sum((x - mean) ** 2 for x in group) / (len(group) - 1))
        a = scores[i] - mean
        if norm_by_std:
            a = a / (std + eps)
        out[i] = a * mask[i].double()
    return out


GRPO_UIDS = ["a", "b", "a", "c", "b", "a", "d", "d"]


@pytest.mark.parametrize("eps", [1e-6, 0.5])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_advantages(norm_by_std, eps):
    scores = torch.tensor([1.0, 0.0, 0.0, 0.7, 1.0, 0.5, 0.3, 0.3], dtype=torch.float64)
    mask = (torch.rand(8, 5, generator=_gen(10)) > 0.3).double()
    mask[:, 0] = 1.0
    out = grpo_advantages(scores, GRPO_UIDS, mask, norm_by_std=norm_by_std, epsilon=eps)
    assert out.shape == (8, 5)
    _assert_close(out, ref_grpo(scores, GRPO_UIDS, mask, norm_by_std, eps), rtol=1e-6, atol=1e-7)
    # group "d" has equal scores -> 0; group of one ("c") -> s (/ (1 + eps))
    assert torch.equal(out[6:].double(), torch.zeros(2, 5, dtype=torch.float64))
    expected_c = 0.7 / (1 + eps) if norm_by_std else 0.7
    assert float(out[3, 0]) == pytest.approx(expected_c, rel=1e-6)
    assert torch.equal(out.double()[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=torch.float64))


def test_grpo_advantages_float32_scores_and_default_args():
    scores = torch.rand(8, generator=_gen(11))
    mask = torch.ones(8, 4)
    out = grpo_advantages(scores, GRPO_UIDS, mask)
    _assert_close(out, ref_grpo(scores, GRPO_UIDS, mask), rtol=1e-5, atol=1e-5)
    # normalised groups of size >= 2 have unbiased std ~1
    a_group = out[[0, 2, 5], 0].double()
    assert float(a_group.sum()) == pytest.approx(0.0, abs=1e-5)
    assert float(a_group.std()) == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------------------------
# preference pairs / DPO / SimPO / verified SFT
# ------------------------------------------------------------------------------------------------
PREF_UIDS = ["p", "q", "p", "p", "q", "r", "q", "s", "s"]
PREF_REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.2, 0.2], dtype=torch.float64)


def test_preference_pairs():
    pairs = preference_pairs(PREF_UIDS, PREF_REWARDS)
    as_tuples = [tuple(int(x) for x in p) for p in pairs]
    assert len(as_tuples) == len(set(as_tuples)), "duplicate pairs"
    assert set(as_tuples) == ref_pairs(PREF_UIDS, PREF_REWARDS)
    assert set(as_tuples) == {(0, 2), (0, 3), (3, 2), (4, 1), (4, 6)}
    assert list(preference_pairs(["x", "y"], torch.tensor([1.0, 0.0]))) == []
    assert list(preference_pairs(["x", "x"], torch.tensor([1.0, 1.0]))) == []


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.1), (2.0, 0.3)])
def test_dpo_loss(beta, eps):
    n = len(PREF_UIDS)
    lp0 = -torch.rand(n, generator=_gen(20), dtype=torch.float64) * 20
    ref = -torch.rand(n, generator=_gen(21), dtype=torch.float64) * 20
    lp = lp0.clone().requires_grad_(True)
    loss, metrics = dpo_loss(lp, ref, PREF_UIDS, PREF_REWARDS, beta=beta, label_smoothing=eps)
    assert isinstance(metrics, dict) and loss.dim() == 0
    lp_ref = lp0.clone().requires_grad_(True)
    expected = ref_pref_loss(lp_ref - ref, ref_pairs(PREF_UIDS, PREF_REWARDS), beta, 0.0, eps)
    _assert_close(loss, expected, msg="dpo loss")
    _assert_close(_grad(loss, lp), _grad(expected, lp_ref), msg="dpo grad")


def test_dpo_defaults_and_no_pairs():
    lp0 = torch.tensor([-3.0, -5.0, -4.0], dtype=torch.float64)
    ref = torch.tensor([-4.0, -4.0, -4.0], dtype=torch.float64)
    uids = ["a", "a", "b"]
    rewards = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = dpo_loss(lp, ref, uids, rewards)
    # beta = 0.1, z = 0.1 * ((1) - (-1)) = 0.2
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))), rel=1e-12)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = dpo_loss(lp, ref, ["a", "b", "c"], rewards)
    assert loss.item() == 0.0
    loss.backward()
    assert lp.grad is None or torch.equal(lp.grad, torch.zeros_like(lp))


@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 1.0, 0.0), (1.0, 0.0, 0.2), (3.0, 0.5, 0.1)])
def test_simpo_loss(beta, gamma, eps):
    n = len(PREF_UIDS)
    lp0 = -torch.rand(n, generator=_gen(22), dtype=torch.float64) * 20
    lengths = torch.randint(1, 30, (n,), generator=_gen(23))
    lp = lp0.clone().requires_grad_(True)
    loss, metrics = simpo_loss(lp, lengths, PREF_UIDS, PREF_REWARDS, beta=beta, gamma=gamma, label_smoothing=eps)
    assert isinstance(metrics, dict) and loss.dim() == 0
    lp_ref = lp0.clone().requires_grad_(True)
    expected = ref_pref_loss(lp_ref / lengths.double(), ref_pairs(PREF_UIDS, PREF_REWARDS), beta, gamma, eps)
    _assert_close(loss, expected, msg="simpo loss")
    _assert_close(_grad(loss, lp), _grad(expected, lp_ref), msg="simpo grad")


def test_simpo_defaults_and_no_pairs():
    lp0 = torch.tensor([-2.0, -6.0], dtype=torch.float64)
    lengths = torch.tensor([2, 3])
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = simpo_loss(lp, lengths, ["a", "a"], rewards)
    # beta 2, gamma 1: z = 2 * (-1 - (-2)) - 1 = 1
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), rel=1e-12)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = simpo_loss(lp, lengths, ["a", "b"], rewards)
    assert loss.item() == 0.0
    loss.backward()
    assert lp.grad is None or torch.equal(lp.grad, torch.zeros_like(lp))


@pytest.mark.parametrize("threshold", [1.0, 0.5])
@pytest.mark.parametrize("length_normalize", [True, False])
def test_verified_sft_loss(length_normalize, threshold):
    rows, length = 5, 6
    tlp0 = -torch.rand(rows, length, generator=_gen(24), dtype=torch.float64) * 4
    mask = torch.zeros(rows, length, dtype=torch.float64)
    for i, n in enumerate([6, 3, 1, 4, 5]):
        mask[i, :n] = 1.0
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.99], dtype=torch.float64)
    tlp = tlp0.clone().requires_grad_(True)
    loss, metrics = verified_sft_loss(
        tlp, mask, rewards, success_threshold=threshold, length_normalize=length_normalize
    )
    assert isinstance(metrics, dict) and loss.dim() == 0
    tlp_ref = tlp0.clone().requires_grad_(True)
    succ = [i for i in range(rows) if float(rewards[i]) >= threshold]
    per_seq = []
    for i in succ:
        nll = -sum(tlp_ref[i, t] * mask[i, t] for t in range(length))
        per_seq.append(nll / mask[i].sum() if length_normalize else nll)
    expected = sum(per_seq) / len(per_seq)
    _assert_close(loss, expected, msg="sft loss")
    _assert_close(_grad(loss, tlp), _grad(expected, tlp_ref), msg="sft grad")


def test_verified_sft_defaults_and_no_success():
    tlp0 = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    tlp = tlp0.clone().requires_grad_(True)
    loss, _ = verified_sft_loss(tlp, mask, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert loss.item() == pytest.approx((1.5 + 5.0) / 2, rel=1e-12)  # threshold 1.0, length-normalised
    tlp = tlp0.clone().requires_grad_(True)
    loss, _ = verified_sft_loss(tlp, mask, torch.tensor([0.9, 0.0], dtype=torch.float64))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert tlp.grad is None or torch.equal(tlp.grad, torch.zeros_like(tlp))
