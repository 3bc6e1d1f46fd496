"""The shared-prefix KV budget is sized in the compute dtype (FSDP2's bf16 over float32 masters), not the
masters' dtype."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from mopd.common.models import load_causal_lm, resolve_model_path
from workers import model_utils, prefix_plan


def test_budget_dtype_is_the_mixed_precision_compute_dtype():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model_utils.init_distributed(0, 1, "127.0.0.1", port, torch.device("cpu"))
    try:
        plain = load_causal_lm(resolve_model_path("embedded"), dtype=torch.float32)
        assert prefix_plan.compute_dtype(plain) == torch.float32
        mixed = model_utils.fsdp2_wrap(
            load_causal_lm(resolve_model_path("embedded"), dtype=torch.float32), torch.device("cpu"), 1, torch.bfloat16
        )
        assert next(mixed.parameters()).dtype == torch.float32  # the masters
        assert prefix_plan.compute_dtype(mixed) == torch.bfloat16
        # twice the tokens fit the same cache bytes in bf16
        per_token = prefix_plan._cache_bytes_per_token
        assert per_token(mixed, prefix_plan.compute_dtype(mixed)) * 2 == per_token(plain, torch.float32)
    finally:
        dist.destroy_process_group()
