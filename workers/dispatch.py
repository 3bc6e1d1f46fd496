"""How a worker method's inputs are split across ranks and its outputs gathered.

A worker class marks each remotely callable method with ``@register(Dispatch.X)``; the worker group (Ray
or local) reads the mark and does the splitting and gathering, so the driver calls
``group.update_actor(batch)`` as if there were one worker.

A *batch* is a plain dict: tensors with the batch on dim 0, lists with one entry per sample, and
anything else (scalars, dicts under the key ``"meta"``) passed to every rank unchanged.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Sequence

import torch


class Dispatch(enum.Enum):
    ONE_TO_ALL = "one_to_all"  # same arguments to every rank; a list of results (one per rank)
    RANK_ZERO = "rank_zero"  # same arguments to every rank; rank 0's result
    DP_COMPUTE = "dp_compute"  # the batch split into contiguous per-rank shards; results concatenated


def register(dispatch: Dispatch) -> Callable:
    def mark(fn):
        fn._dispatch = dispatch
        return fn

    return mark


def dispatch_mode(cls, name: str) -> Dispatch | None:
    return getattr(getattr(cls, name, None), "_dispatch", None)


def batch_size(batch: dict) -> int:
    for key, value in batch.items():
        if key == "meta":
            continue
        if isinstance(value, torch.Tensor):
            return value.shape[0]
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError("batch has no per-sample field")


def split_batch(batch: dict, parts: int) -> list[dict]:
    """Contiguous shards; the batch size must be a multiple of ``parts`` (config validation says which
    numbers to change)."""
    size = batch_size(batch)
    if size % parts:
        raise ValueError(f"a batch of {size} samples cannot be split evenly over {parts} workers")
    step = size // parts
    shards = []
    for r in range(parts):
        shard = {}
        for key, value in batch.items():
            if key == "meta":
                shard[key] = value
            elif isinstance(value, torch.Tensor) or isinstance(value, (list, tuple)):
                shard[key] = value[r * step : (r + 1) * step]
            else:
                shard[key] = value
        shards.append(shard)
    return shards


def concat_batches(parts: Sequence[dict]) -> dict:
    """Inverse of ``split_batch`` for per-sample fields; ``meta`` and scalars come from the first part."""
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if isinstance(first, torch.Tensor) and key != "meta":
            out[key] = _cat_padded([p[key] for p in parts])
        elif isinstance(first, (list, tuple)) and key != "meta":
            out[key] = [x for p in parts for x in p[key]]
        else:
            out[key] = first
    return out


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, right-padding dim 1 with zeros where widths differ (e.g. response lengths)."""
    if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
    return torch.cat(tensors, dim=0)
