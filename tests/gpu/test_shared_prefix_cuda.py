"""The shared-prefix teacher forward on the device, in bf16, with every attention kernel installed there
(sdpa; flash_attention_2 when flash-attn is importable): the same hidden states as the plain forward.
The CPU tests check it exactly in float64 (tests/workers/test_shared_prefix.py); here the question is
whether a kernel handles the cached, left-padded prefix and right-padded rest as the plain path does."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.workers.test_shared_prefix import _group_prompts, _prompts, _teacher_batch

pytestmark = pytest.mark.gpu

KERNELS = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@pytest.mark.parametrize("prompts", [_prompts(seed=7), _group_prompts(0)], ids=["mixed", "groups"])
@pytest.mark.parametrize("attn", KERNELS)
def test_shared_prefix_hidden_equals_the_plain_forward_on_the_device(device, attn, prompts):
    """ "groups" packs siblings into one row under a boolean 4D mask with sdpa (flash-attention: one row
    each); both lay the parents' keys/values out left-padded in a cache."""
    from workers import forward, model_utils
    from workers.shared_prefix import shared_prefix_hidden

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if attn == "flash_attention_2" and device != "cuda":
        pytest.skip("flash-attn needs CUDA")
    model = model_utils.load_causal_lm(
        model_utils.resolve_model_path("embedded"), dtype=dtype, attn_implementation=attn, device=torch.device(device)
    )
    batch = [t.to(device) for t in _teacher_batch(prompts, [5, 1, 7, 3, 7, 2, 6, 4], response_width=7, seed=7)]
    with torch.no_grad():
        plain = forward.response_hidden(model, *batch).float()
        shared = shared_prefix_hidden(model, *batch)
    assert shared is not None
    # bf16: one rounding of ~8 bits per layer; the two paths sum attention in different orders.
    torch.testing.assert_close(shared.float(), plain, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("attn", KERNELS)
def test_shared_prefix_student_gradient_equals_the_plain_one_on_the_device(device, attn):
    """The student's side (actor.shared_prefix): the gradient flows back from each row through the cached
    keys/values of its prompt. bf16 on the device: the parameter gradients agree with the plain forward's
    to a few percent of their norm (summation order differs); float64 on the CPU checks it exactly."""
    from workers import model_utils
    from workers.prefix_plan import plan
    from workers.shared_prefix import response_head

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if attn == "flash_attention_2" and device != "cuda":
        pytest.skip("flash-attn needs CUDA")
    model = model_utils.load_causal_lm(
        model_utils.resolve_model_path("embedded"), dtype=dtype, attn_implementation=attn, device=torch.device(device)
    )
    batch = [
        t.to(device) for t in _teacher_batch(_group_prompts(0), [5, 1, 7, 3, 7, 2, 6, 4], response_width=7, seed=3)
    ]
    assert plan(model, batch[0], batch[1], batch[3]) is not None  # the shared path runs
    probe = torch.randn(model.config.hidden_size, 3, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    grads = {}
    for name, share in (("plain", False), ("shared", True)):
        model.zero_grad(set_to_none=True)
        values = response_head(model, *batch, lambda hidden, weight, where=None: hidden @ probe, share=share)
        values.float().square().sum().backward()
        grads[name] = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    gap = (grads["shared"] - grads["plain"]).norm() / grads["plain"].norm()
    assert gap < (0.03 if dtype == torch.bfloat16 else 1e-4), gap.item()
