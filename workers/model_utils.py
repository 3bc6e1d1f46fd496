"""Model building on one rank: the process group, FSDP2 wrapping, full weights (loading: ``mopd.models``)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# HF loading is shared with the analysis tools (mopd must not import workers); the worker reaches it here.
from mopd.models import load_causal_lm, load_tokenizer, pick_device, pick_dtype, resolve_model_path  # noqa: F401


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, device: torch.device) -> None:
    """One process group per worker process (also for a single local worker, so FSDP2 always applies)."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", master_addr)
    os.environ.setdefault("MASTER_PORT", str(master_port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30),
        init_method=f"tcp://{master_addr}:{master_port}",
    )


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (each becomes one FSDP2 unit)."""
    for attr in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    return []


def fsdp2_wrap(model, device: torch.device, world_size: int, compute_dtype: torch.dtype = torch.float32):
    """``fully_shard`` every decoder layer and the root over a 1-D mesh of all ranks.

    Parameters stay float32 (the optimizer's and the EMA's master copy); with a lower ``compute_dtype``
    FSDP2 casts them for forward/backward and reduces gradients in float32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    kwargs = {"mesh": mesh}
    if compute_dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model, *, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded weights (a collective: every rank must call it).

    ``rank0_only``: gathered to CPU on rank 0 only (others get ``{}``), for exports; otherwise every
    rank gets the full tensors on the model's device, for syncing its rollout copy.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))


def reshard(module) -> None:
    """Return FSDP2 parameters to their sharded state (a no-grad forward leaves the root unsharded)."""
    if module is not None and hasattr(module, "reshard"):
        module.reshard()


def local_tensors(params) -> list[torch.Tensor]:
    """Local shards of (possibly DTensor) parameters, as plain tensors sharing storage."""
    out = []
    for p in params:
        out.append(p.to_local() if hasattr(p, "to_local") else p)
    return out
