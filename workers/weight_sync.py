"""Full weights of an FSDP2 module, gathered bucket by bucket, for a rollout engine to load.

Gathering the whole state dict at once (``get_model_state_dict(full_state_dict=True)``) holds a second,
unsharded copy of the model on the device next to the engine's own copy. Here parameters are cast to
the engine's compute dtype *before* the all-gather (half the traffic for bf16) and gathered in buckets
of about ``bucket_bytes``; the engine consumes each tensor as it arrives, so a bucket is the most that is
held at once beyond the engine's weights.

Every rank must iterate to the end, in the same order: each bucket is a set of collectives.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DEFAULT_BUCKET_BYTES = 256 << 20


def iter_full_parameters(
    module: torch.nn.Module, dtype: torch.dtype, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor in dtype)`` for every parameter of ``module`` (HF names; a tied embedding once)."""
    # A no-grad forward leaves FSDP2's root parameters unsharded (plain tensors); reshard so every
    # parameter is a DTensor again and the gather below is the same collective on every rank.
    if hasattr(module, "reshard"):
        module.reshard()
    # A tied parameter (lm_head.weight = embed_tokens.weight) is gathered once and named under every
    # name, as in an HF state dict: engines that repack their LM head (vLLM's CPU GEMMs) reload it only
    # when its name arrives.
    names: dict[int, list[str]] = {}
    params: list[torch.Tensor] = []
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) not in names:
            names[id(param)] = []
            params.append(param)
        names[id(param)].append(name)
    element = torch.empty((), dtype=dtype).element_size()
    bucket: list[torch.Tensor] = []
    size = 0
    for param in params:
        bucket.append(param)
        size += param.numel() * element
        if size >= bucket_bytes:
            yield from _gather(bucket, names, dtype)
            bucket, size = [], 0
    yield from _gather(bucket, names, dtype)


def _gather(
    bucket: list[torch.Tensor], names: dict[int, list[str]], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    with torch.no_grad():
        full = [(names[id(p)], _full(p.detach().to(dtype))) for p in bucket]
    bucket.clear()
    while full:
        param_names, tensor = full.pop(0)  # drop our reference as soon as the consumer has the tensor
        for name in param_names:
            yield name, tensor


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
