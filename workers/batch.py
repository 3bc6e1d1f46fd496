"""The batch dict and the helpers that cut it (one home for the ``"meta"`` rule).

A *batch* is a plain dict: tensors with the batch on dim 0, lists with one entry per sample, and
anything else (scalars; the dict under the key ``"meta"``, e.g. the step and sampling settings) passed
along unchanged. Every helper here applies that rule, so the driver, the worker group and the workers
cut batches the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

META = "meta"


def is_per_sample(key: str, value: Any) -> bool:
    """Whether ``batch[key]`` has one entry per sample (and so is cut with the batch)."""
    return key != META and isinstance(value, (torch.Tensor, list, tuple))


def batch_size(batch: dict) -> int:
    for key, value in batch.items():
        if is_per_sample(key, value):
            return value.shape[0] if isinstance(value, torch.Tensor) else len(value)
    raise ValueError("batch has no per-sample field")


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    """Samples ``start:stop``; ``meta`` and scalars unchanged."""
    return {k: (v[start:stop] if is_per_sample(k, v) else v) for k, v in batch.items()}


def truncate_batch(batch: dict, size: int) -> dict:
    """The first ``size`` samples (drops the padding rows added to fill every rank)."""
    return slice_batch(batch, 0, size)


def index_batch(batch: dict, index: torch.Tensor | Sequence[int]) -> dict:
    """Samples ``index`` in that order (a permutation, or any selection)."""
    index = torch.as_tensor(index, dtype=torch.long)
    rows = index.tolist()
    out = {}
    for key, value in batch.items():
        if not is_per_sample(key, value):
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value[index.to(value.device)]
        else:
            out[key] = type(value)(value[i] for i in rows) if isinstance(value, tuple) else [value[i] for i in rows]
    return out


def split_batch(batch: dict, parts: int) -> list[dict]:
    """``parts`` contiguous equal shards; the batch size must be a multiple of ``parts`` (config
    validation says which numbers to change)."""
    size = batch_size(batch)
    if size % parts:
        raise ValueError(f"a batch of {size} samples cannot be split evenly over {parts} workers")
    step = size // parts
    return [slice_batch(batch, r * step, (r + 1) * step) for r in range(parts)]


def concat_batches(parts: Sequence[dict]) -> dict:
    """Inverse of ``split_batch`` for per-sample fields; ``meta`` and scalars come from the first part."""
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if isinstance(first, torch.Tensor) and key != META:
            out[key] = _cat_padded([p[key] for p in parts])
        elif is_per_sample(key, first):
            out[key] = [x for p in parts for x in p[key]]
        else:
            out[key] = first
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, right-padding dim 1 with zeros where widths differ (e.g. response lengths)."""
    if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
    return torch.cat(tensors, dim=0)
