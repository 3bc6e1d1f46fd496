"""The helpers that cut a batch (one home for the ``meta`` rule), for the driver, the worker group and the workers.

They take a ``RolloutBatch`` (``workers/rollout_batch.py``: the batch's schema) or a plain dict (a worker's
result, e.g. ``{"old_log_probs": ...}``, or a test's) and return the same kind. Tensors with the samples
on dim 0 and lists with one entry per sample are cut with the batch; everything else (``meta``, the
``"meta"`` key of a dict, scalars) is passed along unchanged. A ``RolloutBatch`` field that is ``None``
stays ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.rollout_batch import RolloutBatch

META = "meta"


def is_per_sample(key: str, value: Any) -> bool:
    """Whether ``batch[key]`` has one entry per sample (and so is cut with the batch)."""
    return key != META and isinstance(value, (torch.Tensor, list, tuple))


def _entries(batch) -> dict:
    return batch.present() if isinstance(batch, RolloutBatch) else batch


def _like(batch, values: dict):
    """A batch of ``batch``'s kind holding ``values`` (for a ``RolloutBatch``: its other fields unset)."""
    if isinstance(batch, RolloutBatch):
        return RolloutBatch(**values)
    return values


def batch_size(batch) -> int:
    for key, value in _entries(batch).items():
        if is_per_sample(key, value):
            return value.shape[0] if isinstance(value, torch.Tensor) else len(value)
    raise ValueError("batch has no per-sample field")


def slice_batch(batch, start: int, stop: int):
    """Samples ``start:stop``; ``meta`` and scalars unchanged."""
    return _like(batch, {k: (v[start:stop] if is_per_sample(k, v) else v) for k, v in _entries(batch).items()})


def truncate_batch(batch, size: int):
    """The first ``size`` samples (drops the padding rows added to fill every rank)."""
    return slice_batch(batch, 0, size)


def index_batch(batch, index: torch.Tensor | Sequence[int]):
    """Samples ``index`` in that order (a permutation, or any selection)."""
    index = torch.as_tensor(index, dtype=torch.long)
    rows = index.tolist()
    out = {}
    for key, value in _entries(batch).items():
        if not is_per_sample(key, value):
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value[index.to(value.device)]
        else:
            out[key] = type(value)(value[i] for i in rows) if isinstance(value, tuple) else [value[i] for i in rows]
    return _like(batch, out)


def split_batch(batch, parts: int) -> list:
    """``parts`` contiguous equal shards; the batch size must be a multiple of ``parts`` (config
    validation says which numbers to change)."""
    size = batch_size(batch)
    if size % parts:
        raise ValueError(f"a batch of {size} samples cannot be split evenly over {parts} workers")
    step = size // parts
    return [slice_batch(batch, r * step, (r + 1) * step) for r in range(parts)]


def concat_batches(parts: Sequence):
    """Inverse of ``split_batch`` for per-sample fields; ``meta`` and scalars come from the first part."""
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for key, first in _entries(parts[0]).items():
        if isinstance(first, torch.Tensor) and key != META:
            out[key] = _cat_padded([_entries(p)[key] for p in parts])
        elif is_per_sample(key, first):
            out[key] = [x for p in parts for x in _entries(p)[key]]
        else:
            out[key] = first
    return _like(parts[0], out)


def to_device(batch, device: torch.device):
    return _like(batch, {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in _entries(batch).items()})


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, right-padding dim 1 with zeros where widths differ (e.g. response lengths)."""
    if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
    return torch.cat(tensors, dim=0)


# ----------------------------------------------------------------------------------------------
# Token-budget micro-batches (``actor.use_dynamic_bsz``)
def token_budget_partition(
    lengths: Sequence[Sequence[int]], budget: int, *, group: int = 1, parts: int | None = None
) -> list[list[int]]:
    """Row indices of each micro-batch, such that each micro-batch's token count stays within ``budget``
    in every column of ``lengths`` (one row per sequence: e.g. its student and its teacher length, each
    counted by its own length since they are packed separately).

    ``group`` consecutive rows form one unit that is never split (DPO/SimPO pairs a prompt's rollouts).
    ``parts=None``: as few micro-batches as first-fit-decreasing finds. With ``parts`` (the maximum over
    ranks, so every rank runs the same number of forward/backward passes, as FSDP2's collectives need)
    the units are spread over exactly that many micro-batches, largest first onto the least-loaded one.
    A unit longer than the budget gets a micro-batch of its own. Indices are ascending in each.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, got {budget}")
    rows = len(lengths)
    if rows % group:
        raise ValueError(f"{rows} sequences do not split into groups of {group}")
    units = [list(range(u, u + group)) for u in range(0, rows, group)]
    cost = [tuple(sum(col) for col in zip(*(lengths[i] for i in unit))) for unit in units]
    order = sorted(range(len(units)), key=lambda u: max(cost[u]), reverse=True)
    if parts is None:
        bins: list[list[int]] = []
        loads: list[list[int]] = []
        for u in order:
            for b, load in enumerate(loads):
                if all(l + c <= budget for l, c in zip(load, cost[u])):
                    bins[b].append(u)
                    loads[b] = [l + c for l, c in zip(load, cost[u])]
                    break
            else:
                bins.append([u])
                loads.append(list(cost[u]))
    else:
        if not 1 <= parts <= len(units):
            raise ValueError(f"cannot spread {len(units)} unit(s) over {parts} micro-batches")
        bins = [[] for _ in range(parts)]
        loads = [[0] * len(cost[0]) for _ in range(parts)]
        for u in order:
            b = min(range(parts), key=lambda k: (max(l + c for l, c in zip(loads[k], cost[u])), len(bins[k])))
            bins[b].append(u)
            loads[b] = [l + c for l, c in zip(loads[b], cost[u])]
    return [sorted(i for u in b for i in units[u]) for b in bins if b]


def sequence_lengths(batch, *keys: str) -> list[tuple[int, ...]]:
    """Valid tokens per row of each attention mask in ``keys`` (those present in the batch)."""
    entries = _entries(batch)
    columns = [entries[k].sum(-1).tolist() for k in keys if k in entries]
    return list(zip(*columns))
