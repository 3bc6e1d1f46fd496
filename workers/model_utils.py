"""Model building on one rank: resolve paths, load HF models, FSDP2-wrap, gather full weights."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = PROJECT_ROOT / "datasets" / "embedded"


def resolve_model_path(path: str | None) -> str | None:
    """``embedded`` names the shipped tiny base model; anything else is a local dir or a hub id."""
    if path == "embedded":
        target = EMBEDDED_DIR / "base_model"
        if not (target / "config.json").exists():
            raise FileNotFoundError(
                f"actor_rollout_ref.model.path=embedded: {target} is missing; create it with "
                "`python scripts/make_embedded_default.py`"
            )
        return str(target)
    return path


def pick_device(setting: str, local_rank: int) -> torch.device:
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def device_tensor(value, device, dtype=torch.float64) -> torch.Tensor:
    """A tensor on the collective's device (nccl reduces CUDA tensors only; gloo CPU ones)."""
    return torch.as_tensor(value, dtype=dtype, device=device)


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


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, *, dtype: torch.dtype, attn_implementation: str, trust_remote_code: bool = False,
                   device: torch.device | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
    if device is not None:
        model.to(device)
    return model


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


def fsdp2_wrap(model, device: torch.device, world_size: int, compute_dtype: torch.dtype = torch.float32, *,
               shard_single_rank: bool = False):
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
