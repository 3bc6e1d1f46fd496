"""Is an optimizer update safe to apply, and are the weights still finite after it? (one rank's view)

An update is skipped when the mini-batch loss is non-finite on any rank, or when the gradient norm is
(``clip_grad_norm_`` already reduces the norm over ranks, so every rank sees the same one; the loss flag
takes one MAX all-reduce of a single number, on the rank's device, only with more than one rank). The
weights are checked once per ``update_actor`` call (a training step), after its last optimizer step:
``torch._foreach_norm`` over the local shards, summed, then one all-reduce - one read of the local
parameters (about a third of what an AdamW step reads and writes), so the check's cost grows with the
parameters per rank and is paid once per step, not per mini-batch. A diverging model shows first as a
non-finite loss or gradient norm; the weight check catches what slips through (a poisoned optimizer state,
an overflow in the step itself) before a checkpoint can record it.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from workers import model_utils

__all__ = ["NONFINITE_GRAD_NORM", "NONFINITE_LOSS", "NONFINITE_WEIGHTS", "skip_cause", "weights_finite"]

NONFINITE_LOSS = "non-finite loss"
NONFINITE_GRAD_NORM = "non-finite gradient norm"
NONFINITE_WEIGHTS = "non-finite weights after the optimizer step"


def _any_rank(flag: bool, device: torch.device, world_size: int) -> bool:
    if world_size == 1:
        return flag
    value = model_utils.device_tensor([float(flag)], device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def skip_cause(loss: float, grad_norm: float, device: torch.device, world_size: int) -> str | None:
    """Why this mini-batch's update must be skipped (the same answer on every rank), or None to apply it."""
    if _any_rank(not math.isfinite(loss), device, world_size):
        return NONFINITE_LOSS
    if not math.isfinite(grad_norm):
        return NONFINITE_GRAD_NORM
    return None


@torch.no_grad()
def weights_finite(module: torch.nn.Module, device: torch.device, world_size: int) -> bool:
    """Whether every parameter of ``module`` (all ranks' shards) is finite."""
    local = [t for t in model_utils.local_tensors(module.parameters()) if t.numel()]
    bad = False
    if local:
        # The 2-norms (one fused kernel: the fastest reduction) carry any NaN/inf; a non-finite total is confirmed
        # element-wise, since squares of huge but finite weights (> ~1e19) overflow too. That path is rare.
        bad = not bool(torch.isfinite(torch.stack(torch._foreach_norm(local)).sum()).item())
        if bad:
            bad = not bool(torch.stack([t.isfinite().all() for t in local]).all().item())
    return not _any_rank(bad, device, world_size)
