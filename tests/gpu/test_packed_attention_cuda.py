"""Packed sequences under sdpa on the device (``use_remove_padding`` without flash-attn): the model loaded
as ``packed_attention.PACKED_SDPA`` runs torch's varlen flash-attention kernel in bf16 on CUDA (per-sequence
sdpa elsewhere). Its log-probs and gradients against the padded forward's; the CPU tests check the
per-sequence path exactly in float64 (tests/workers/test_remove_padding.py, test_actor_loss.py)."""

from __future__ import annotations

import pytest
import torch

from tests.workers.test_remove_padding import _batch

pytestmark = pytest.mark.gpu


def test_varlen_kernel_is_used_on_cuda(device):
    """torch's varlen kernel exists here and passes the check the packed attention makes before using it."""
    from workers import packed_attention

    if device != "cuda":
        pytest.skip("the varlen kernel is CUDA only")
    assert packed_attention._VARLEN is not None, f"torch {torch.__version__} has no usable varlen_attn"
    for dtype in (torch.bfloat16, torch.float16):
        assert packed_attention.varlen_agrees(torch.device("cuda"), dtype), dtype
        assert packed_attention._varlen_usable(torch.zeros(1, 4, 3, 64, dtype=dtype, device="cuda"))


def test_the_varlen_check_runs_at_init_not_in_the_first_forward(device):
    from workers import packed_attention

    if device != "cuda":
        pytest.skip("the varlen kernel is CUDA only")
    packed_attention._VARLEN_CHECKED.clear()
    assert packed_attention.check_at_init(torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    assert list(packed_attention._VARLEN_CHECKED.values()) == [True]  # cached: the forwards do not check again


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_sdpa_log_probs_and_gradients_equal_padded_on_the_device(device, checkpointing):
    from mopd.core.fused_head import fused_head
    from workers import forward, model_utils, packed_attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    path = model_utils.resolve_model_path("embedded")
    results = {}
    for name, attn, remove_padding in (
        ("padded", "sdpa", False),
        ("packed", packed_attention.implementation("sdpa", True), True),
    ):
        model = model_utils.load_causal_lm(path, dtype=dtype, attn_implementation=attn, device=torch.device(device))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        ids, mask, pos, responses, response_mask = (
            t.to(device)
            for t in _batch(
                [30, 70, 10, 50, 64, 3], [40, 10, 60, 20, 64, 1], prompt_width=70, response_width=64, seed=5
            )
        )
        labels = responses[response_mask.bool()]

        def fn(hidden, weight):
            return fused_head(hidden, weight, labels, temperature=1.0)[0].unsqueeze(-1)

        values = forward.response_head(model, ids, mask, pos, response_mask, fn, remove_padding)
        values.float().sum().backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (values.detach().float(), grads)
    (a, ga), (b, gb) = results["padded"], results["packed"]
    # bf16: log-probs of ~5.6 nats agree to a few hundredths; gradients to a few percent of their norm.
    torch.testing.assert_close(b, a, rtol=0.02, atol=0.05)
    gap = (gb - ga).norm() / ga.norm()
    assert gap < (0.03 if dtype == torch.bfloat16 else 1e-4), gap.item()
