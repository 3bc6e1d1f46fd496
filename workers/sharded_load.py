"""Building the FSDP2 actor, the teacher and the ``hf`` engine's copy without a full float32 model on any
device, and with at most one copy of the weights in a node's host memory.

- The model is built on the ``meta`` device from its ``config.json`` (no memory), sharded by FSDP2, then
  materialised with ``to_empty``: each rank allocates only its float32 shards.
- Each rank reads its own rows of every tensor from the ``*.safetensors`` files (``get_slice``: memory
  mapped, so the node's ranks share the page cache, one copy of the files at most) and copies them into
  its shards, casting to float32 there. One tensor's rows are in flight at a time.
- The ``hf`` engine's copy is built the same way in the compute dtype and left unfilled: the weight sync
  before every generation fills it from the actor (``workers/weight_sync.py``).
- Non-persistent buffers (rotary frequencies) are not in the checkpoint and ``to_empty`` leaves them
  uninitialised: they are recomputed from a CPU instance of their module.

Costs per rank: device ``4·N/W`` for a float32 shard (``N`` parameters, ``W`` ranks) plus ``b·N`` for the
engine copy; host: the page cache of the files, shared by the node. A checkpoint this loader cannot map
onto the model (other key names, ``.bin`` files) falls back to ``from_pretrained`` on the host (one
float32 copy per rank in host memory, never on the device), and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workers import model_utils


class UnmappableCheckpoint(ValueError):
    """The checkpoint's files or names do not map one-to-one onto the model built from its config."""


def build_sharded(
    path: str,
    *,
    device: torch.device,
    rank: int,
    world_size: int,
    compute_dtype: torch.dtype,
    attn_implementation: str | None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    frozen: bool = False,
    flag: str = "actor_rollout_ref.model.path",
):
    """The FSDP2-wrapped model at ``path`` with float32 master shards on ``device``, loaded from its files."""

    def prepare(model):
        if gradient_checkpointing:  # non-reentrant: works under FSDP2 and with inputs that need no grad
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if frozen:
            model.requires_grad_(False)
        return model

    try:
        files = checkpoint_files(path)
        model = prepare(_on_meta(path, torch.float32, attn_implementation, trust_remote_code, flag))
        model = model_utils.fsdp2_wrap(model, device, world_size, compute_dtype)
        _materialize(model, device)
        _restore_non_persistent_buffers(model)
        load_shards_(model, files, rank, world_size)
        return model
    except UnmappableCheckpoint as why:
        if rank == 0:
            print(
                f"[mopd] {flag}={path}: {why}; loading with from_pretrained on the host instead (one float32 "
                "copy per rank in host memory, shards only on the device)",
                flush=True,
            )
    model = prepare(
        model_utils.load_causal_lm(
            path,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            flag=flag,
        )
    )
    model = model_utils.fsdp2_wrap(model, device, world_size, compute_dtype)
    return model.to(device)  # a plain module (one float32 rank); FSDP2 moved its units already


def build_engine_copy(
    path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    attn_implementation: str | None,
    trust_remote_code: bool = False,
    flag: str = "actor_rollout_ref.model.path",
):
    """An unsharded model in ``dtype`` on ``device`` whose weights are left for the first sync to fill."""
    model = _on_meta(path, dtype, attn_implementation, trust_remote_code, flag)
    _materialize(model, device)
    try:
        _restore_non_persistent_buffers(model)
    except UnmappableCheckpoint as why:  # an architecture whose buffers we cannot rebuild: a loaded copy
        print(f"[mopd] {flag}={path}: {why}; the hf engine's copy is loaded with from_pretrained", flush=True)
        return model_utils.load_causal_lm(
            path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            device=device,
            flag=flag,
        )
    _read_generation_config(model, path)
    return model


def export_holder(path: str, trust_remote_code: bool = False, flag: str = "actor_rollout_ref.model.path"):
    """A weightless (meta) model of ``path``'s architecture, config and generation config:
    ``save_pretrained(..., state_dict=...)`` writes the given weights through it (no float32 model loaded)."""
    model = _on_meta(path, torch.float32, None, trust_remote_code, flag)
    _read_generation_config(model, path)
    return model


def _read_generation_config(model, path: str) -> None:
    from transformers import GenerationConfig

    try:  # eos ids etc. as from_pretrained reads them (generation_config.json may list more than config.json)
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        pass  # no generation_config.json: from_config's defaults, as from_pretrained would use


def checkpoint_files(path: str) -> list[Path]:
    """The ``*.safetensors`` files of a local model folder (through its index when sharded)."""
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
        except Exception as exc:
            raise UnmappableCheckpoint(f"not a local folder and not fetched ({type(exc).__name__})") from None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise UnmappableCheckpoint(f"no model.safetensors or model.safetensors.index.json in {folder}")


def load_shards_(model, files: list[Path], rank: int, world_size: int) -> None:
    """Copy this rank's rows of every checkpoint tensor into ``model``'s (sharded or plain) parameters."""
    from safetensors import safe_open

    targets = dict(model.named_parameters(remove_duplicate=False))
    non_persistent = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "_non_persistent_buffers_set", ())
    }
    targets.update({k: v for k, v in model.named_buffers(remove_duplicate=False) if k not in non_persistent})
    loaded: set[int] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for key in reader.keys():
                target = targets.get(key)
                if target is None:
                    if key.endswith("rotary_emb.inv_freq"):  # older checkpoints saved it; recomputed instead
                        continue
                    raise UnmappableCheckpoint(f"{file.name} holds {key}, which the model built from config.json lacks")
                _copy_rows(target, reader.get_slice(key), rank, world_size, key)
                loaded.add(id(target))
    missing = [name for name, tensor in targets.items() if id(tensor) not in loaded]
    if missing:
        raise UnmappableCheckpoint(f"the checkpoint lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")


def _copy_rows(target, source, rank: int, world_size: int, key: str) -> None:
    shape = list(source.get_shape())
    full = list(target.shape)  # a DTensor's global shape
    if shape != full:
        raise UnmappableCheckpoint(f"{key} is {shape} in the checkpoint but {full} in the model")
    with torch.no_grad():
        if hasattr(target, "to_local"):  # FSDP2: dim-0 chunks as torch.chunk cuts them, the last ranks maybe empty
            local = target.to_local()
            rows = -(-full[0] // world_size)
            start, stop = min(rank * rows, full[0]), min((rank + 1) * rows, full[0])
            if local.shape[0] != stop - start:
                raise UnmappableCheckpoint(f"{key}: local shard of {local.shape[0]} rows, expected {stop - start}")
            if stop > start:
                local.copy_(source[start:stop])
        else:
            target.copy_(source[:])


def _on_meta(path: str, dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool, flag: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        from mopd.common.models import _cannot_load

        raise _cannot_load("model config", path, flag, exc) from None
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code, **extra)


def _materialize(model, device: torch.device) -> None:
    """Allocate the meta model's tensors on ``device`` (uninitialised). A plain module's ``to_empty`` makes a
    new parameter for each module that shares one, so tied embeddings are tied again (FSDP2 keeps them)."""
    model.to_empty(device=device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _restore_non_persistent_buffers(model) -> None:
    """Recompute buffers that are not saved (rotary ``inv_freq``): a CPU instance of each such module, built
    from its own config, supplies them."""
    for name, module in model.named_modules():
        buffers = [b for b in getattr(module, "_non_persistent_buffers_set", ()) if getattr(module, b) is not None]
        if not buffers:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise UnmappableCheckpoint(f"cannot recompute the unsaved buffers {buffers} of {name or 'the model'}")
        try:
            fresh = type(module)(config)
        except TypeError as exc:
            raise UnmappableCheckpoint(
                f"cannot rebuild {type(module).__name__} for its unsaved buffers: {exc}"
            ) from None
        with torch.no_grad():
            for buffer in buffers:
                getattr(module, buffer).copy_(getattr(fresh, buffer))
