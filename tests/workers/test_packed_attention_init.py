"""workers/packed_attention.py: the varlen kernel's self-check runs at init (a no-op where the kernel cannot
apply), and grouped key/value heads go to the kernel as they are (its native GQA), not repeated."""

from __future__ import annotations

import torch

from workers import packed_attention


def test_check_at_init_is_a_no_op_on_cpu_and_in_float32(monkeypatch):
    ran = []
    monkeypatch.setattr(packed_attention, "varlen_agrees", lambda *a, **k: ran.append(a) or True)
    assert packed_attention.check_at_init(torch.device("cpu"), torch.bfloat16) is False
    assert packed_attention.check_at_init(torch.device("cpu"), torch.float32) is False
    assert ran == []


def test_grouped_kv_heads_reach_the_varlen_kernel_unrepeated(monkeypatch):
    import torch.nn.attention.varlen as varlen

    seen = {}

    def fake_varlen_attn(
        q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False, **rest
    ):
        seen.update(q_heads=q.shape[1], k_heads=k.shape[1], enable_gqa=enable_gqa, window=window_size)
        return torch.zeros_like(q)

    monkeypatch.setattr(varlen, "varlen_attn", fake_varlen_attn)
    run = packed_attention._varlen_kernel()
    q, k, v = torch.zeros(12, 8, 16), torch.zeros(12, 2, 16), torch.zeros(12, 2, 16)
    run(q, k, v, torch.tensor([0, 5, 12], dtype=torch.int32), 7, 0.25, groups=4)
    assert seen == {"q_heads": 8, "k_heads": 2, "enable_gqa": True, "window": (-1, 0)}
