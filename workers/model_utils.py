"""Model building on one rank: the process group, FSDP2 wrapping, full weights (loading: ``mopd.common.models``)."""

from __future__ import annotations

import inspect
import os
from datetime import timedelta

import torch
import torch.distributed as dist

# HF loading is shared with the analysis tools (mopd must not import workers); the worker reaches it here.
from mopd.common.models import load_causal_lm, load_tokenizer, pick_device, pick_dtype, resolve_model_path  # noqa: F401


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, device: torch.device) -> None:
    """One process group per worker process (also for a single local worker, so FSDP2 always applies)."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", master_addr)
    os.environ.setdefault("MASTER_PORT", str(master_port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    # device_id binds NCCL to this rank's GPU up front (barriers and collectives then need no guessing).
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=30),
        init_method=f"tcp://{master_addr}:{master_port}",
        device_id=device if device.type == "cuda" else None,
    )


def cache_kwarg(module) -> str:
    """transformers 5.2x names the cache argument of ``forward``/``generate`` ``cache`` (``past_key_values``
    before)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def new_cache(module):
    """An empty KV cache for ``module`` (transformers' ``DynamicCache``)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=module.config)
    except TypeError:  # older transformers: no per-layer types to set up
        return DynamicCache()


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values) ``[B, heads, T, head_dim]`` held by a ``DynamicCache``."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.54


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


def fsdp2_wrap(
    model,
    device: torch.device,
    world_size: int,
    compute_dtype: torch.dtype = torch.float32,
    *,
    shard_single_rank: bool = False,
):
    """``fully_shard`` every decoder layer and the root over a 1-D mesh of all ranks (a plain module on a
    single float32 rank, where sharding is a no-op).

    Parameters stay float32 (the optimizer's and the EMA's master copy); with a lower ``compute_dtype``
    FSDP2 casts them for forward/backward and reduces gradients in float32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if world_size == 1 and compute_dtype == torch.float32 and not shard_single_rank:
        # Nothing to shard, gather or cast: FSDP2 would only copy every parameter into its all-gather
        # buffer before each forward and every gradient out of its reduce-scatter buffer after each
        # backward (measured ~9% of a CPU GRPO update). The module keeps the same parameter names, so
        # checkpoints and state dicts are interchangeable with the sharded ones.
        return model
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
    rank gets the full tensors on the model's device (tests compare engines against it). Rollout
    engines are synced bucket by bucket instead (``workers.weight_sync``).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))


def device_tensor(value, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor for a collective. NCCL reduces only tensors on the rank's CUDA device (gloo takes CPU
    tensors and hides the mistake), so every tensor handed to ``dist.*`` is made here."""
    return torch.as_tensor(value, dtype=dtype).to(device)


def read_and_reset_peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory (GB) since the last call, then reset: torch's CUDA allocator on a GPU, the process's
    peak resident set on a CPU (Linux: VmHWM, reset through /proc/self/clear_refs)."""
    if device.type == "cuda":
        out = {
            "allocated": torch.cuda.max_memory_allocated(device) / 1e9,
            "reserved": torch.cuda.max_memory_reserved(device) / 1e9,
        }
        torch.cuda.reset_peak_memory_stats(device)
        return out
    peak_kb = None
    try:
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
    except (OSError, StopIteration):
        import resource

        peak_kb = peak_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # lifetime peak (KB on Linux)
    return {"rss": peak_kb * 1024 / 1e9}


def release_cached_memory(device: torch.device) -> None:
    """Return the CUDA caching allocator's free blocks to the device at a phase boundary (after loading,
    before generation or a vLLM wake, after the update), so the next phase (and vLLM, which allocates
    outside torch's cache) finds them free; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
