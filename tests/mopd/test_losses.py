"""Independent reference tests for ``mopd.core.losses`` (divergences, log-probs, aggregation, self-distillation).

Every reference below is written from ``docs/algorithm_core.md`` §4 in float64 by brute force: dense
formulas over the whole vocabulary, plain loops over rows / steps, ordinary autograd (no chunking, no
custom autograd function).  The implementation is compared for values *and* gradients.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from mopd.core.config import SelfDistillationConfig
from mopd.core.losses import (
    agg_loss,
    entropy_from_logits,
    self_distillation_loss,
    token_log_probs,
    topk_divergence,
)

B, T, V = 3, 5, 23
AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
TAIL_CLAMP = -1e-7  # the top-k log-mass is clamped at <= -1e-7 (tail mass >= ~1e-7)


# ------------------------------------------------------------------------------------------------
# float64 references
# ------------------------------------------------------------------------------------------------
def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p||q) over the last dim from log-probabilities; 0*log0 terms are 0."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)


def ref_divergence(student, teacher, alpha, topk, add_tail=True):
    """Reference D per position, float64, gradient to the student only (teacher detached)."""
    s = student.double()
    t = teacher.detach().double()
    vocab = s.shape[-1]
    logp_s_full = torch.log_softmax(s, dim=-1)
    logp_t_full = torch.log_softmax(t, dim=-1)
    if topk is None or topk >= vocab:
        lps, lpt = logp_s_full, logp_t_full
    else:
        idx = torch.topk(s.detach(), topk, dim=-1).indices  # the STUDENT's top-k support
        lps_k = torch.gather(logp_s_full, -1, idx)
        lpt_k = torch.gather(logp_t_full, -1, idx)
        if add_tail:
            mass_s = torch.clamp(torch.logsumexp(lps_k, -1, keepdim=True), max=TAIL_CLAMP)
            mass_t = torch.clamp(torch.logsumexp(lpt_k, -1, keepdim=True), max=TAIL_CLAMP)
            tail_s = torch.log(-torch.expm1(mass_s))
            tail_t = torch.log(-torch.expm1(mass_t))
            lps = torch.cat([lps_k, tail_s], dim=-1)
            lpt = torch.cat([lpt_k, tail_t], dim=-1)
        else:
            lps = lps_k - torch.logsumexp(lps_k, -1, keepdim=True)
            lpt = lpt_k - torch.logsumexp(lpt_k, -1, keepdim=True)
    if alpha == 0:
        return _kl(lpt, lps)
    if alpha == 1:
        return _kl(lps, lpt)
    log_m = torch.logsumexp(torch.stack([lps + math.log(1 - alpha), lpt + math.log(alpha)], dim=0), dim=0)
    return alpha * _kl(lpt, log_m) + (1 - alpha) * _kl(lps, log_m)


def ref_token_log_probs(logits, labels):
    return torch.gather(torch.log_softmax(logits.double(), -1), -1, labels.unsqueeze(-1)).squeeze(-1)


def ref_entropy(logits):
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)


def ref_agg(values, mask, mode, normalizer=None, horizon=None):
    values = values.double()
    mask = mask.double()
    rows, length = values.shape
    if mode == "token-mean":
        n_tok = max(1.0, float(mask.sum())) if normalizer is None else normalizer
        total = values.new_zeros(())
        for i in range(rows):
            for t in range(length):
                total = total + values[i, t] * mask[i, t]
        return total / n_tok
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        n_seq = sum(1 for i in range(rows) if float(mask[i].sum()) > 0)
        n_seq = max(1, n_seq) if normalizer is None else normalizer
        total = values.new_zeros(())
        for i in range(rows):
            n_i = float(mask[i].sum())
            if n_i == 0:
                continue
            row = values.new_zeros(())
            for t in range(length):
                row = row + values[i, t] * mask[i, t]
            total = total + (row / n_i if mode == "seq-mean-token-mean" else row)
        return total / n_seq
    if mode == "seq-mean-token-sum-norm":
        n_rows = rows if normalizer is None else normalizer
        h = length if horizon is None else horizon
        total = values.new_zeros(())
        for i in range(rows):
            for t in range(length):
                total = total + values[i, t] * mask[i, t]
        return total / (n_rows * h)
    raise AssertionError(mode)


def ref_step_mean(values, mask, step_ids):
    """Every step of a row counts equally: token value = step mean * T_row / (S_row * n_step)."""
    out = values.clone()
    rows, length = values.shape
    for i in range(rows):
        groups: dict[int, list[int]] = {}
        for t in range(length):
            if float(mask[i, t]) > 0 and int(step_ids[i, t]) >= 0:
                groups.setdefault(int(step_ids[i, t]), []).append(t)
        total = sum(len(p) for p in groups.values())
        for positions in groups.values():
            mean = sum(values[i, t] for t in positions) / len(positions)
            for t in positions:
                out[i, t] = mean * total / (len(groups) * len(positions))
    return out


def ref_self_distillation(
    student,
    teacher,
    responses,
    response_mask,
    distillation_mask,
    cfg,
    old_log_probs=None,
    rollout_is_weights=None,
    step_ids=None,
    loss_agg_mode="token-mean",
    normalizer=None,
    horizon=None,
):
    s = student.double()
    s_y = ref_token_log_probs(s, responses)
    if cfg.full_logit_distillation:
        per_token = ref_divergence(s, teacher, cfg.alpha, cfg.distillation_topk, cfg.distillation_add_tail)
    else:
        t_y = ref_token_log_probs(teacher.detach(), responses)
        per_token = (s_y - t_y).detach() * s_y
    if old_log_probs is not None and cfg.is_clip is not None:
        w = torch.exp(torch.clamp(s_y.detach() - old_log_probs.double(), -20, 20))
        w = torch.clamp(w, max=cfg.is_clip)
        per_token = per_token * w
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights.double()
    mask = response_mask.double() * distillation_mask.double()[:, None]
    if cfg.step_level_kl:
        per_token = ref_step_mean(per_token, mask, step_ids)
    return ref_agg(per_token, mask, loss_agg_mode, normalizer=normalizer, horizon=horizon)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(seed, shape=(B, T, V), scale=2.0, dtype=torch.float64):
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


def _grad(out, inp):
    (g,) = torch.autograd.grad(out, [inp])
    return g


def _assert_close(got, expected, rtol=1e-7, atol=1e-9, msg=""):
    got = got.detach().double()
    expected = expected.detach().double()
    assert got.shape == expected.shape, f"{msg} shape {tuple(got.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


def _no_grad_or_zero(t):
    return t.grad is None or bool((t.grad == 0).all())


ALPHAS = [0.0, 0.3, 0.5, 1.0]
TOPKS = [1, 5, V - 1, V, None]


# ------------------------------------------------------------------------------------------------
# topk_divergence
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("topk", TOPKS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_value_and_grad_match_reference(alpha, topk, add_tail):
    s = _logits(1).requires_grad_(True)
    t = _logits(2)
    upstream = torch.rand(B, T, generator=_gen(3), dtype=torch.float64) + 0.1
    out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=add_tail)
    assert out.shape == (B, T)
    assert out.dtype == torch.float64
    s_ref = s.detach().clone().requires_grad_(True)
    ref = ref_divergence(s_ref, t, alpha, topk, add_tail)
    _assert_close(out, ref, msg="value")
    g = _grad((out * upstream).sum(), s)
    g_ref = _grad((ref * upstream).sum(), s_ref)
    _assert_close(g, g_ref, rtol=1e-6, atol=1e-9, msg="student grad")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_topk_larger_than_vocab_is_full_vocab(alpha):
    s = _logits(4)
    t = _logits(5)
    ref = ref_divergence(s, t, alpha, None)
    for topk in (V, V + 7, None):
        for add_tail in (True, False):
            out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=add_tail)
            _assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=f"topk={topk} add_tail={add_tail}")


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_teacher_gets_no_gradient(alpha, add_tail):
    s = _logits(6).requires_grad_(True)
    t = _logits(7).requires_grad_(True)
    out = topk_divergence(s, t, alpha=alpha, topk=5, add_tail=add_tail)
    out.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert float(s.grad.abs().sum()) > 0
    assert _no_grad_or_zero(t), "teacher logits received a non-zero gradient"


@pytest.mark.parametrize("topk", [1, 5, V - 1, None])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_chunk_size_invariance(alpha, topk):
    s0 = _logits(8, shape=(4, 7, V))
    t = _logits(9, shape=(4, 7, V))
    upstream = torch.randn(4, 7, generator=_gen(10), dtype=torch.float64)
    ref = ref_divergence(s0, t, alpha, topk)
    results = []
    for chunk in (1, 3, 5, 28, 100, None):
        s = s0.clone().requires_grad_(True)
        out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=True, chunk_size=chunk)
        g = _grad((out * upstream).sum(), s)
        _assert_close(out, ref, msg=f"chunk={chunk}")
        results.append((chunk, out.detach(), g))
    base_out, base_g = results[-1][1], results[-1][2]
    for chunk, out, g in results[:-1]:
        _assert_close(out, base_out, rtol=1e-12, atol=1e-13, msg=f"chunk {chunk} value")
        _assert_close(g, base_g, rtol=1e-10, atol=1e-13, msg=f"chunk {chunk} grad")


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("topk", TOPKS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_nonnegative_and_zero_when_equal(alpha, topk, add_tail):
    s = _logits(11)
    t = _logits(12)
    out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=add_tail)
    assert (out > -1e-9).all(), out
    if not (topk == 1 and not add_tail):  # renormalised over one token: always exactly 0
        assert (out > 1e-6).any(), "divergence between different distributions should be > 0"
    else:
        _assert_close(out, torch.zeros(B, T, dtype=torch.float64), atol=1e-12, msg="k=1 renormalised")
    same = topk_divergence(s, s.clone(), alpha=alpha, topk=topk, add_tail=add_tail)
    _assert_close(same, torch.zeros(B, T, dtype=torch.float64), atol=1e-10, msg="D(s, s)")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_swap_symmetry_full_vocab(alpha):
    """Full vocabulary: D_a(S, T) == D_{1-a}(T, S); in particular the JSD (a=0.5) is symmetric and
    KL(T||S) computed with alpha=0 equals KL(S||T) computed with alpha=1 on swapped arguments."""
    s = _logits(13)
    t = _logits(14)
    d = topk_divergence(s, t, alpha=alpha, topk=None)
    d_swapped = topk_divergence(t, s, alpha=1.0 - alpha, topk=None)
    _assert_close(d, d_swapped, rtol=1e-9, atol=1e-12)
    if alpha == 0.5:
        _assert_close(topk_divergence(t, s, alpha=0.5, topk=None), d, rtol=1e-9, atol=1e-12)
    if alpha not in (0.0, 1.0):  # the generalized JSD is bounded by the entropy-style bound
        assert (d <= -(alpha * math.log(alpha) + (1 - alpha) * math.log(1 - alpha)) + 1e-9).all()


def test_topk_divergence_support_is_the_students_topk():
    """Teacher mass outside the student's top-1 goes to the tail (add_tail) or is ignored (renorm)."""
    s = torch.tensor([[[5.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    t = torch.tensor([[[0.0, 5.0, 0.0, 0.0]]], dtype=torch.float64)
    # without tail: both distributions are a point mass on token 0 -> 0
    out = topk_divergence(s, t, alpha=0.0, topk=1, add_tail=False)
    assert abs(out.item()) < 1e-12
    # with tail: P_S = (p_s0, 1-p_s0), P_T = (p_t0, 1-p_t0)
    ps = torch.softmax(s[0, 0], -1)[0]
    pt = torch.softmax(t[0, 0], -1)[0]
    expected = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    out = topk_divergence(s, t, alpha=0.0, topk=1, add_tail=True)
    assert abs(out.item() - float(expected)) < 1e-9


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("topk", [1, 5, None])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_float32_matches_float64_reference(alpha, topk, add_tail):
    s = _logits(15, dtype=torch.float32).requires_grad_(True)
    t = _logits(16, dtype=torch.float32)
    out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=add_tail)
    assert out.dtype == torch.float32
    s_ref = s.detach().double().requires_grad_(True)
    ref = ref_divergence(s_ref, t.double(), alpha, topk, add_tail)
    _assert_close(out, ref, rtol=1e-4, atol=2e-5, msg="float32 value")
    g = _grad(out.sum(), s)
    assert g.dtype == torch.float32
    _assert_close(g, _grad(ref.sum(), s_ref), rtol=1e-4, atol=2e-5, msg="float32 grad")


@pytest.mark.parametrize("topk", [5, None])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_bf16_does_not_crash(alpha, topk):
    s = _logits(17, dtype=torch.bfloat16).requires_grad_(True)
    t = _logits(18, dtype=torch.bfloat16)
    out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=True, chunk_size=4)
    assert out.shape == (B, T)
    assert out.dtype == torch.float32  # doc: [B, T] float32 (float64 only for float64 inputs)
    assert torch.isfinite(out).all()
    ref = ref_divergence(s.detach().double(), t.double(), alpha, topk, True)
    assert float((out.detach().double() - ref).abs().max()) < 5e-2
    out.sum().backward()
    assert s.grad is not None and s.grad.shape == s.shape and torch.isfinite(s.grad.float()).all()


def _extreme_logits(seed, hot_shift):
    x = _logits(seed, scale=1e3)
    # a few +/-1e4 entries (distinct values to avoid ties at the top-k boundary)
    x[0, 0, :] = -1e4 + torch.arange(V, dtype=torch.float64)
    x[0, 0, (3 + hot_shift) % V] = 1e4
    x[1, 2, (7 + hot_shift) % V] = 1e4
    x[1, 2, (8 + hot_shift) % V] = -1e4
    x[2, 4, :] = 1e4 - 10.0 * torch.arange(V, dtype=torch.float64).flip(0)
    return x


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("topk", [1, 5, V - 1, None])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_extreme_logits(alpha, topk, add_tail):
    s = _extreme_logits(19, 0).requires_grad_(True)
    t = _extreme_logits(20, 5)
    out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=add_tail, chunk_size=2)
    assert torch.isfinite(out).all(), out
    s_ref = s.detach().clone().requires_grad_(True)
    ref = ref_divergence(s_ref, t, alpha, topk, add_tail)
    finite = torch.isfinite(ref)
    assert finite.all()  # the log-space reference is finite everywhere here
    _assert_close(out[finite], ref[finite], rtol=1e-6, atol=1e-6, msg="extreme value")
    g = _grad(out.sum(), s)
    assert torch.isfinite(g).all()
    _assert_close(g, _grad(ref.sum(), s_ref), rtol=1e-5, atol=1e-6, msg="extreme grad")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_extreme_logits_float32(alpha):
    s = _extreme_logits(21, 0).float().requires_grad_(True)
    t = _extreme_logits(22, 3).float()
    for topk in (1, 5, None):
        out = topk_divergence(s, t, alpha=alpha, topk=topk, add_tail=True)
        assert torch.isfinite(out).all(), (topk, out)
        ref = ref_divergence(s.detach().double(), t.double(), alpha, topk, True)
        _assert_close(out, ref, rtol=1e-4, atol=1e-3, msg=f"float32 extreme topk={topk}")
        (g,) = torch.autograd.grad(out.sum(), [s])
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_divergence_finite_difference_gradient(alpha):
    """Central finite differences of the implementation itself (one backward per graph)."""
    s0 = _logits(23, shape=(1, 3, 7))
    t = _logits(24, shape=(1, 3, 7))
    w = torch.rand(1, 3, generator=_gen(27), dtype=torch.float64) + 0.5
    for topk, add_tail in ((3, True), (3, False), (None, True)):

        def f(x):
            return (topk_divergence(x, t, alpha=alpha, topk=topk, add_tail=add_tail, chunk_size=2) * w).sum()

        s = s0.clone().requires_grad_(True)
        g = _grad(f(s), s)
        fd = torch.zeros_like(s0)
        h = 1e-6
        with torch.no_grad():
            for idx in range(s0.numel()):
                e = torch.zeros(s0.numel(), dtype=torch.float64)
                e[idx] = h
                e = e.view_as(s0)
                fd.view(-1)[idx] = (f(s0 + e) - f(s0 - e)) / (2 * h)
        _assert_close(g, fd, rtol=1e-5, atol=1e-7, msg=f"finite differences topk={topk} add_tail={add_tail}")


@pytest.mark.parametrize("topk", [3, None])
def test_topk_divergence_second_backward_is_never_silently_wrong(topk):
    """The doc leaves differentiating a retained graph twice open (the gradient buffer may be reused in
    place to save memory); it must then either give the same gradient again or raise -- never a wrong
    gradient."""
    s = _logits(25, shape=(1, 3, 7)).requires_grad_(True)
    t = _logits(26, shape=(1, 3, 7))
    out = topk_divergence(s, t, alpha=0.5, topk=topk, add_tail=True)
    (g1,) = torch.autograd.grad(out.sum(), [s], retain_graph=True)
    s_ref = s.detach().clone().requires_grad_(True)
    _assert_close(g1, _grad(ref_divergence(s_ref, t, 0.5, topk).sum(), s_ref), rtol=1e-7, atol=1e-10)
    try:
        (g2,) = torch.autograd.grad((2.0 * out).sum(), [s])
    except RuntimeError:
        return
    _assert_close(g2, 2.0 * g1, rtol=1e-12, atol=1e-15, msg="second backward")


# ------------------------------------------------------------------------------------------------
# token_log_probs / entropy_from_logits
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_token_log_probs_value_and_grad(chunk, scale):
    x = _logits(30, scale=scale).requires_grad_(True)
    labels = torch.randint(0, V, (B, T), generator=_gen(31))
    out = token_log_probs(x, labels, chunk_size=chunk)
    assert out.shape == (B, T)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = ref_token_log_probs(x_ref, labels)
    _assert_close(out, ref, rtol=1e-9, atol=1e-9)
    w = torch.randn(B, T, generator=_gen(32), dtype=torch.float64)
    _assert_close(_grad((out * w).sum(), x), _grad((ref * w).sum(), x_ref), rtol=1e-8, atol=1e-10)


def test_token_log_probs_extreme_and_float32():
    x = _extreme_logits(33, 0)
    labels = torch.randint(0, V, (B, T), generator=_gen(34))
    labels[0, 0] = 3
    out = token_log_probs(x, labels)
    assert torch.isfinite(out).all()
    _assert_close(out, ref_token_log_probs(x, labels), rtol=1e-9, atol=1e-6)
    xf = _logits(35, dtype=torch.float32).requires_grad_(True)
    outf = token_log_probs(xf, labels, chunk_size=2)
    _assert_close(outf, ref_token_log_probs(xf.detach(), labels), rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(outf.sum(), [xf])
    assert torch.isfinite(g).all()
    xb = _logits(36, dtype=torch.bfloat16)
    outb = token_log_probs(xb, labels)
    assert outb.shape == (B, T) and torch.isfinite(outb.float()).all()


@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_entropy_from_logits(chunk, scale):
    x = _logits(40, scale=scale)
    x[0, 0, :] = -1e4
    x[0, 0, 2] = 1e4
    out = entropy_from_logits(x, chunk_size=chunk)
    assert out.shape == (B, T)
    assert torch.isfinite(out).all()
    _assert_close(out, ref_entropy(x), rtol=1e-9, atol=1e-9)
    uniform = entropy_from_logits(torch.zeros(1, 2, V, dtype=torch.float64), chunk_size=chunk)
    _assert_close(uniform, torch.full((1, 2), math.log(V), dtype=torch.float64), atol=1e-12)


def test_entropy_from_logits_float32():
    x = _logits(41, dtype=torch.float32)
    out = entropy_from_logits(x, chunk_size=2)
    _assert_close(out, ref_entropy(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# agg_loss
# ------------------------------------------------------------------------------------------------
def _values_and_mask(seed, rows=4, length=6):
    v = torch.randn(rows, length, generator=_gen(seed), dtype=torch.float64)
    m = (torch.rand(rows, length, generator=_gen(seed + 1)) > 0.35).double()
    m[1] = 0.0  # a fully masked row
    m[2, 0] = 1.0
    m[0] = 1.0  # a full row
    return v, m


@pytest.mark.parametrize("normalizer", [None, 7.0])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_matches_reference(mode, normalizer):
    v0, m = _values_and_mask(50)
    v = v0.clone().requires_grad_(True)
    out = agg_loss(v, m, mode, normalizer=normalizer)
    assert out.dim() == 0
    v_ref = v0.clone().requires_grad_(True)
    ref = ref_agg(v_ref, m, mode, normalizer=normalizer)
    _assert_close(out, ref, rtol=1e-12, atol=1e-12)
    _assert_close(_grad(out, v), _grad(ref, v_ref), rtol=1e-12, atol=1e-12)


def test_agg_loss_explicit_numbers():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert float(agg_loss(v, m, "token-mean")) == pytest.approx((1 + 2 + 7 + 8 + 9) / 5)
    # N_seq counts only rows with a valid token (2, not 3)
    assert float(agg_loss(v, m, "seq-mean-token-mean")) == pytest.approx((1.5 + 8.0) / 2)
    assert float(agg_loss(v, m, "seq-mean-token-sum")) == pytest.approx((3 + 24) / 2)
    # Dr. GRPO: N_rows (all 3 rows) * horizon (T=3 by default)
    assert float(agg_loss(v, m, "seq-mean-token-sum-norm")) == pytest.approx(27 / 9)
    assert float(agg_loss(v, m, "seq-mean-token-sum-norm", horizon=10)) == pytest.approx(27 / 30)
    assert float(agg_loss(v, m, "seq-mean-token-sum-norm", normalizer=4, horizon=10)) == pytest.approx(27 / 40)
    assert float(agg_loss(v, m, "token-mean", normalizer=10)) == pytest.approx(27 / 10)
    assert float(agg_loss(v, m, "seq-mean-token-sum", normalizer=6)) == pytest.approx(27 / 6)
    assert float(agg_loss(v, m, "seq-mean-token-mean", normalizer=4)) == pytest.approx(9.5 / 4)


@pytest.mark.parametrize("horizon", [None, 11])
def test_agg_loss_norm_mode_horizon(horizon):
    v0, m = _values_and_mask(52)
    v = v0.clone().requires_grad_(True)
    out = agg_loss(v, m, "seq-mean-token-sum-norm", horizon=horizon)
    v_ref = v0.clone().requires_grad_(True)
    ref = ref_agg(v_ref, m, "seq-mean-token-sum-norm", horizon=horizon)
    _assert_close(out, ref, rtol=1e-12, atol=1e-12)
    _assert_close(_grad(out, v), _grad(ref, v_ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalizer", [None, 3.0])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_all_masked(mode, normalizer):
    v = torch.randn(3, 4, generator=_gen(53), dtype=torch.float64).requires_grad_(True)
    m = torch.zeros(3, 4, dtype=torch.float64)
    out = agg_loss(v, m, mode, normalizer=normalizer)
    assert out.item() == 0.0
    assert not torch.isnan(out)
    out.backward()
    assert v.grad is not None
    assert torch.equal(v.grad, torch.zeros_like(v))


def test_agg_loss_float32():
    v0, m = _values_and_mask(54)
    for mode in AGG_MODES:
        out = agg_loss(v0.float(), m.float(), mode)
        _assert_close(out, ref_agg(v0.float().double(), m, mode), rtol=1e-5, atol=1e-6, msg=mode)


def test_agg_loss_unknown_mode():
    v, m = _values_and_mask(55)
    with pytest.raises(ValueError, match=re.escape("token-median")):
        agg_loss(v, m, "token-median")


# ------------------------------------------------------------------------------------------------
# self_distillation_loss
# ------------------------------------------------------------------------------------------------
def _sd_batch(seed, rows=4, length=7, vocab=V):
    student = _logits(seed, shape=(rows, length, vocab))
    teacher = _logits(seed + 1, shape=(rows, length, vocab))
    responses = torch.randint(0, vocab, (rows, length), generator=_gen(seed + 2))
    lengths = [length, 4, 1, 5][:rows]
    response_mask = torch.zeros(rows, length, dtype=torch.float64)
    for i, n in enumerate(lengths):
        response_mask[i, : min(n, length)] = 1.0
    if length > 4:
        response_mask[0, 3] = 0.0  # a masked token inside a step: excluded from its step mean
    distillation_mask = torch.tensor([1.0, 1.0, 1.0, 0.0][:rows], dtype=torch.float64)
    s_y = ref_token_log_probs(student, responses)
    old = s_y + torch.randn(rows, length, generator=_gen(seed + 3), dtype=torch.float64)
    old[0, 1] = s_y[0, 1] - 30.0  # ratio beyond the +/-20 clamp
    old[0, 2] = s_y[0, 2] + 30.0
    rollout_w = torch.rand(rows, length, generator=_gen(seed + 4), dtype=torch.float64) + 0.5
    step_ids = torch.full((rows, length), -1, dtype=torch.long)
    for i, n in enumerate(lengths):
        n = min(n, length)
        bounds = torch.randint(0, 3, (n,), generator=_gen(seed + 10 + i))
        ids = torch.cumsum((bounds == 0).long(), 0)
        step_ids[i, :n] = ids - ids[0]
    return dict(
        student=student,
        teacher=teacher,
        responses=responses,
        response_mask=response_mask,
        distillation_mask=distillation_mask,
        old=old,
        rollout_w=rollout_w,
        step_ids=step_ids,
    )


def _run_sd(batch, cfg, *, use_old, use_rollout, mode, normalizer=None, horizon=None):
    s = batch["student"].clone().requires_grad_(True)
    t = batch["teacher"].clone().requires_grad_(True)
    kwargs = dict(
        old_log_probs=batch["old"] if use_old else None,
        rollout_is_weights=batch["rollout_w"] if use_rollout else None,
        step_ids=batch["step_ids"] if cfg.step_level_kl else None,
        loss_agg_mode=mode,
        normalizer=normalizer,
        horizon=horizon,
    )
    loss, metrics = self_distillation_loss(
        s, t, batch["responses"], batch["response_mask"], batch["distillation_mask"], cfg, **kwargs
    )
    assert isinstance(metrics, dict)
    assert loss.dim() == 0
    g = _grad(loss, s)
    s_ref = batch["student"].clone().requires_grad_(True)
    ref = ref_self_distillation(
        s_ref, batch["teacher"], batch["responses"], batch["response_mask"], batch["distillation_mask"], cfg, **kwargs
    )
    g_ref = _grad(ref, s_ref)
    return loss, g, ref, g_ref


SD_CONFIGS = [
    dict(alpha=0.5, distillation_topk=5, distillation_add_tail=True),
    dict(alpha=0.0, distillation_topk=5, distillation_add_tail=False),
    dict(alpha=1.0, distillation_topk=None, distillation_add_tail=True),
    dict(alpha=0.3, distillation_topk=100, distillation_add_tail=True, is_clip=None),
    dict(alpha=1.0, full_logit_distillation=False),
    dict(alpha=1.0, full_logit_distillation=False, is_clip=None),
]


@pytest.mark.parametrize("step_level", [False, True])
@pytest.mark.parametrize("use_old,use_rollout", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("cfg_kwargs", SD_CONFIGS)
def test_self_distillation_loss_matches_reference(cfg_kwargs, use_old, use_rollout, step_level):
    cfg = SelfDistillationConfig(**cfg_kwargs, step_level_kl=step_level)
    batch = _sd_batch(60)
    loss, g, ref, g_ref = _run_sd(batch, cfg, use_old=use_old, use_rollout=use_rollout, mode="token-mean")
    _assert_close(loss, ref, rtol=1e-8, atol=1e-10, msg="loss")
    _assert_close(g, g_ref, rtol=1e-7, atol=1e-10, msg="student grad")
    # masked rows (distillation_mask = 0) and padding get exactly no gradient
    assert torch.equal(g[3], torch.zeros_like(g[3]))
    assert torch.equal(g[1, 4:], torch.zeros_like(g[1, 4:]))


@pytest.mark.parametrize("step_level", [False, True])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("full_logit", [True, False])
def test_self_distillation_loss_agg_modes(full_logit, mode, step_level):
    cfg = SelfDistillationConfig(
        alpha=0.5 if full_logit else 1.0,
        distillation_topk=5,
        full_logit_distillation=full_logit,
        step_level_kl=step_level,
    )
    batch = _sd_batch(61)
    for normalizer, horizon in ((None, None), (5.0, 9)):
        loss, g, ref, g_ref = _run_sd(
            batch, cfg, use_old=True, use_rollout=True, mode=mode, normalizer=normalizer, horizon=horizon
        )
        _assert_close(loss, ref, rtol=1e-8, atol=1e-10, msg=f"loss normalizer={normalizer}")
        _assert_close(g, g_ref, rtol=1e-7, atol=1e-10, msg=f"grad normalizer={normalizer}")


def test_self_distillation_sampled_token_value_and_gradient_explicit():
    """Non-full-logit: value (s_y - t_y) * s_y, gradient (s_y - t_y) * d s_y (stop-gradient factor)."""
    cfg = SelfDistillationConfig(alpha=1.0, full_logit_distillation=False, is_clip=None)
    batch = _sd_batch(62, rows=2, length=3)
    s = batch["student"].clone().requires_grad_(True)
    mask = torch.ones(2, 3, dtype=torch.float64)
    loss, _ = self_distillation_loss(
        s,
        batch["teacher"],
        batch["responses"],
        mask,
        torch.ones(2, dtype=torch.float64),
        cfg,
        loss_agg_mode="token-mean",
    )
    s_y = ref_token_log_probs(s.detach(), batch["responses"])
    t_y = ref_token_log_probs(batch["teacher"], batch["responses"])
    assert loss.item() == pytest.approx(float(((s_y - t_y) * s_y).mean()), rel=1e-10)
    g = _grad(loss, s)
    # d s_y / d logits = onehot(y) - softmax
    onehot = torch.nn.functional.one_hot(batch["responses"], V).double()
    expected = (s_y - t_y)[..., None] * (onehot - torch.softmax(s.detach(), -1)) / 6.0
    _assert_close(g, expected, rtol=1e-9, atol=1e-12)
    # the full derivative of (s_y - t_y) * s_y would be (2 s_y - t_y) d s_y: must NOT be that
    wrong = (2 * s_y - t_y)[..., None] * (onehot - torch.softmax(s.detach(), -1)) / 6.0
    assert not torch.allclose(g, wrong)


def test_self_distillation_is_weight_explicit():
    """IS weight = min(exp(clamp(s_y - old, -20, 20)), is_clip), detached."""
    cfg = SelfDistillationConfig(alpha=1.0, distillation_topk=None, is_clip=2.0)
    batch = _sd_batch(63, rows=1, length=4)
    s = batch["student"].clone().requires_grad_(True)
    s_y = ref_token_log_probs(batch["student"], batch["responses"])
    old = s_y - torch.tensor([[0.0, math.log(1.5), math.log(5.0), -math.log(4.0)]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    loss, _ = self_distillation_loss(
        s,
        batch["teacher"],
        batch["responses"],
        mask,
        torch.ones(1, dtype=torch.float64),
        cfg,
        old_log_probs=old,
        loss_agg_mode="seq-mean-token-sum",
    )
    d = ref_divergence(batch["student"], batch["teacher"], 1.0, None)
    w = torch.tensor([[1.0, 1.5, 2.0, 0.25]], dtype=torch.float64)
    assert loss.item() == pytest.approx(float((d * w).sum()), rel=1e-9)
    s2 = batch["student"].clone().requires_grad_(True)
    d2 = ref_divergence(s2, batch["teacher"], 1.0, None)
    _assert_close(_grad(loss, s), _grad((d2 * w).sum(), s2), rtol=1e-8, atol=1e-12)


def test_self_distillation_step_level_explicit():
    """Every step counts equally within its row: a valid token's value becomes its step's mean times
    T_row / (S_row * n_step). Checked with a masked token inside a step (it must not enter the mean),
    unequal step lengths, and a fractional mask (token-mean)."""
    cfg = SelfDistillationConfig(alpha=0.0, distillation_topk=None, step_level_kl=True, is_clip=None)
    batch = _sd_batch(64, rows=2, length=6)
    d = ref_divergence(batch["student"], batch["teacher"], 0.0, None)
    step_ids = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 1, 1, 2, -1, -1]])
    ones = torch.ones(2, dtype=torch.float64)

    # (a) binary mask with a hole at [0, 3] (inside step 1 of row 0)
    mask = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    loss, _ = self_distillation_loss(
        batch["student"],
        batch["teacher"],
        batch["responses"],
        mask,
        ones,
        cfg,
        step_ids=step_ids,
        loss_agg_mode="seq-mean-token-sum",
    )
    step1 = (d[0, 2] + d[0, 4]) / 2
    row0 = 2 * d[0, 0:2].mean() + 2 * step1
    row1 = 4 / 3 * (d[1, 0] + d[1, 1:3].mean() + d[1, 3])  # 4 tokens, 3 steps of 1, 2, 1 tokens
    expected = float(row0 + row1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    plain = float(2 * d[0, 0:2].mean() + 2 * step1 + d[1, 0:4].sum()) / 2
    assert abs(expected - plain) > 1e-6  # unequal steps: step-level weighting is observable

    # (b) fractional mask: unweighted step mean, then the masked token-mean
    fmask = torch.tensor([[1, 0.5, 1, 0.25, 1, 0], [1, 1, 0.5, 1, 0, 0]], dtype=torch.float64)
    s = batch["student"].clone().requires_grad_(True)
    loss, _ = self_distillation_loss(
        s, batch["teacher"], batch["responses"], fmask, ones, cfg, step_ids=step_ids, loss_agg_mode="token-mean"
    )
    s_ref = batch["student"].clone().requires_grad_(True)
    d_ref = ref_divergence(s_ref, batch["teacher"], 0.0, None)
    stepped = ref_step_mean(d_ref, fmask, step_ids)
    ref = (stepped * fmask).sum() / fmask.sum()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    no_step = float((d * fmask).sum() / fmask.sum())
    assert abs(ref.item() - no_step) > 1e-4  # the step mean is observable here
    _assert_close(_grad(loss, s), _grad(ref, s_ref), rtol=1e-8, atol=1e-12)


def test_self_distillation_step_level_requires_step_ids():
    cfg = SelfDistillationConfig(alpha=0.5, step_level_kl=True)
    batch = _sd_batch(65)
    with pytest.raises((ValueError, TypeError, AssertionError, RuntimeError)):
        self_distillation_loss(
            batch["student"],
            batch["teacher"],
            batch["responses"],
            batch["response_mask"],
            batch["distillation_mask"],
            cfg,
            step_ids=None,
        )


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("full_logit,step_level", [(True, False), (True, True), (False, False)])
def test_self_distillation_all_masked(full_logit, step_level, mode):
    cfg = SelfDistillationConfig(
        alpha=0.5 if full_logit else 1.0,
        full_logit_distillation=full_logit,
        distillation_topk=5,
        step_level_kl=step_level,
    )
    batch = _sd_batch(66)
    s = batch["student"].clone().requires_grad_(True)
    loss, metrics = self_distillation_loss(
        s,
        batch["teacher"],
        batch["responses"],
        batch["response_mask"],
        torch.zeros(4, dtype=torch.float64),
        cfg,
        old_log_probs=batch["old"],
        step_ids=batch["step_ids"] if step_level else None,
        loss_agg_mode=mode,
    )
    assert isinstance(metrics, dict)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert s.grad is not None
    assert torch.equal(s.grad, torch.zeros_like(s.grad))


def test_self_distillation_float32_and_bf16():
    cfg = SelfDistillationConfig(alpha=0.5, distillation_topk=5)
    batch = _sd_batch(67)
    s = batch["student"].float().requires_grad_(True)
    loss, _ = self_distillation_loss(
        s,
        batch["teacher"].float(),
        batch["responses"],
        batch["response_mask"].float(),
        batch["distillation_mask"].float(),
        cfg,
        old_log_probs=batch["old"].float(),
    )
    s_ref = batch["student"].float().double().requires_grad_(True)
    ref = ref_self_distillation(
        s_ref,
        batch["teacher"].float().double(),
        batch["responses"],
        batch["response_mask"],
        batch["distillation_mask"],
        cfg,
        old_log_probs=batch["old"].float().double(),
    )
    _assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    _assert_close(_grad(loss, s), _grad(ref, s_ref), rtol=1e-4, atol=1e-6)
    sb = batch["student"].bfloat16().requires_grad_(True)
    loss_b, _ = self_distillation_loss(
        sb, batch["teacher"].bfloat16(), batch["responses"], batch["response_mask"], batch["distillation_mask"], cfg
    )
    assert torch.isfinite(loss_b.float())
    loss_b.backward()
    assert sb.grad is not None and torch.isfinite(sb.grad.float()).all()


def test_self_distillation_teacher_gets_no_gradient():
    for cfg in (
        SelfDistillationConfig(alpha=0.5, distillation_topk=5),
        SelfDistillationConfig(alpha=1.0, full_logit_distillation=False),
    ):
        batch = _sd_batch(68)
        s = batch["student"].clone().requires_grad_(True)
        t = batch["teacher"].clone().requires_grad_(True)
        loss, _ = self_distillation_loss(
            s,
            t,
            batch["responses"],
            batch["response_mask"],
            batch["distillation_mask"],
            cfg,
            old_log_probs=batch["old"],
        )
        loss.backward()
        assert s.grad is not None and float(s.grad.abs().sum()) > 0
        assert _no_grad_or_zero(t)
