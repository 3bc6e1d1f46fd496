"""mopd.core.fused_head: equal to the plain head + ``mopd.core.losses`` in float64, values and gradients."""

from __future__ import annotations

import pytest
import torch

from mopd.core import losses
from mopd.core.fused_head import fused_head

V, H, N = 37, 8, 11


def plain(hidden, weight, labels, teacher_hidden, teacher_weight, temperature, alpha, topk, add_tail):
    """The independent reference: materialise the logits, then today's mopd.core.losses."""
    logits = hidden @ weight.t() / temperature
    log_probs = losses.token_log_probs(logits, labels)
    log_softmax = torch.log_softmax(logits, dim=-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    teacher_logits = (teacher_hidden @ teacher_weight.t() / temperature).detach()
    divergence = losses.topk_divergence(logits, teacher_logits, alpha=alpha, topk=topk, add_tail=add_tail)
    return log_probs, entropy, divergence


def _inputs(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(N, H, generator=g, dtype=torch.float64)).requires_grad_(True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher_hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (N,), generator=g)
    coefs = torch.randn(3, N, generator=g, dtype=torch.float64)
    return hidden, weight, labels, teacher_hidden, teacher_weight, coefs


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("topk,add_tail", [(5, True), (5, False), (None, True), (V + 3, True)])
@pytest.mark.parametrize("temperature,chunk", [(1.0, None), (0.7, 3)])
def test_fused_equals_plain_values_and_gradients(alpha, topk, add_tail, temperature, chunk):
    hidden, weight, labels, th, tw, coefs = _inputs()
    settings = dict(temperature=temperature, alpha=alpha, topk=topk, add_tail=add_tail)
    got = fused_head(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw, chunk_size=chunk, **settings)
    want = plain(
        hidden, weight, labels, th, tw, **{k: settings[k] for k in ("temperature", "alpha", "topk", "add_tail")}
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    grads_got = torch.autograd.grad(sum((c * v).sum() for c, v in zip(coefs, got)), (hidden, weight))
    grads_want = torch.autograd.grad(sum((c * v).sum() for c, v in zip(coefs, want)), (hidden, weight))
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_without_teacher_and_with_only_some_outputs_used():
    hidden, weight, labels, *_, coefs = _inputs(1, scale=3.0)
    log_probs, entropy, divergence = fused_head(hidden, weight, labels, chunk_size=4)
    assert divergence is None
    want_lp, want_ent, _ = plain(hidden, weight, labels, hidden.detach(), weight.detach(), 1.0, 0.5, 5, True)
    torch.testing.assert_close(log_probs, want_lp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(entropy, want_ent, rtol=1e-10, atol=1e-12)
    for got, want in ((log_probs, want_lp), (entropy, want_ent)):  # one output at a time (the other's grad is None)
        grads = torch.autograd.grad((coefs[0] * got).sum(), (hidden, weight), retain_graph=True)
        refs = torch.autograd.grad((coefs[0] * want).sum(), (hidden, weight), retain_graph=True)
        for g, w in zip(grads, refs):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_tied_embedding_gradients_add_up():
    """The head weight is the input embedding: both uses must contribute to its gradient."""
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_(True)
    mix = torch.randn(H, H, generator=g, dtype=torch.float64).requires_grad_(True)
    tokens = torch.randint(0, V, (N,), generator=g)
    labels = torch.roll(tokens, -1)
    teacher_weight = torch.randn(V, H, generator=g, dtype=torch.float64)

    def model_hidden():
        return torch.tanh(embedding[tokens] @ mix)

    def loss(use_fused: bool):
        hidden = model_hidden()
        th = hidden.detach() * 0.5
        if use_fused:
            lp, ent, div = fused_head(
                hidden,
                embedding,
                labels,
                teacher_hidden=th,
                teacher_weight=teacher_weight,
                topk=6,
                alpha=0.5,
                temperature=0.9,
            )
        else:
            lp, ent, div = plain(hidden, embedding, labels, th, teacher_weight, 0.9, 0.5, 6, True)
        return (div - 0.3 * lp - 0.1 * ent).mean()

    got = torch.autograd.grad(loss(True), (embedding, mix))
    want = torch.autograd.grad(loss(False), (embedding, mix))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_float32_and_bfloat16_follow_the_plain_computation():
    hidden, weight, labels, th, tw, coefs = _inputs(2)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        h = hidden.detach().to(dtype).requires_grad_(True)
        w = weight.detach().to(dtype).requires_grad_(True)
        got = fused_head(h, w, labels, teacher_hidden=th.to(dtype), teacher_weight=tw.to(dtype), topk=5)
        want = plain(h.double(), w.double(), labels, th.to(dtype).double(), tw.to(dtype).double(), 1.0, 0.5, 5, True)
        for a, b in zip(got, want):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)
        grads = torch.autograd.grad(sum((c.to(dtype) * v).sum() for c, v in zip(coefs, got)), (h, w))
        assert all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)


def test_bad_shapes_are_refused():
    hidden, weight, labels, th, tw, _ = _inputs()
    with pytest.raises(ValueError, match="same vocabulary"):
        fused_head(hidden, weight, labels, teacher_hidden=th, teacher_weight=tw[:5])
    with pytest.raises(ValueError, match=r"hidden \[N, H\] and weight \[V, H\]"):
        fused_head(hidden, weight.t(), labels)
