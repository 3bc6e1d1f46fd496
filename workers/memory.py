"""Device memory between phases: the optimizer state's trip to host memory and back
(``actor.fsdp_config.optimizer_offload``). Caches are returned by ``model_utils.release_cached_memory``."""

from __future__ import annotations

import torch


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """Move every state tensor of ``optimizer`` (Adam's moments: 8 bytes per parameter shard) to ``device``;
    returns the bytes moved. ``step`` counters stay where the optimizer keeps them (a CPU scalar unless
    capturable/fused). The copy is blocking, so the source is free when this returns. FSDP2's DTensor
    states move with their local shards."""
    moved = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key == "step" or not torch.is_tensor(value) or value.device == device:
                continue
            state[key] = value.to(device)
            moved += value.numel() * value.element_size()
    return moved
