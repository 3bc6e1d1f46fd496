"""Balance the data-parallel ranks' work (``trainer.balance_batch``, on by default as in the release).

The worker group hands rank r the r-th contiguous shard of a batch, and each rank walks its shard in
mini-batches of ``window / world`` rows with an optimizer step (a collective) after each. A rank with the
longest sequences makes every other rank wait at that collective. ``balanced_order`` permutes the rows so
that, **within each mini-batch**, every rank gets the same number of rows and a near-equal token
workload (longest-processing-time greedy over rows, or over whole prompt groups where a prompt's rollouts
must stay together). Mini-batch membership does not change, so with global token normalization the
losses and gradients are those of the unbalanced batch (only the summation order differs). The rows
carry their uid, so peers and advantages, computed on the unpermuted batch, are untouched.

Cost: O(B log B) on the driver per call; no tensor is copied except by the caller's one ``index_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.batch import index_batch
from workers.rollout_batch import RolloutBatch


def row_workloads(batch: RolloutBatch) -> list[float]:
    """Tokens each row costs the ranks: its prompt + response, plus its teacher prompt + response."""
    work = batch.attention_mask.sum(-1).to(torch.float64)
    if batch.teacher_attention_mask is not None:
        work = work + batch.teacher_attention_mask.sum(-1).to(torch.float64)
    return work.tolist()


def balanced_order(workloads: Sequence[float], world: int, window: int, unit: int = 1) -> list[int]:
    """A permutation of ``range(len(workloads))``: shard r of the permuted rows (contiguous, ``len / world``
    rows) is, window after window, the rows that window assigns to rank r. ``unit`` consecutive rows (a
    prompt's rollouts) move together. Windows that cannot be split into equal whole-unit parts keep their
    order (each rank then gets its contiguous slice, as without balancing)."""
    rows = len(workloads)
    if world < 1 or window < 1 or rows % window:
        raise ValueError(f"balanced_order: {rows} rows do not split into windows of {window}")
    per_rank: list[list[int]] = [[] for _ in range(world)]
    for start in range(0, rows, window):
        for rank, part in enumerate(_split_window(workloads, start, window, world, unit)):
            per_rank[rank].extend(part)
    return [i for part in per_rank for i in part]


def _split_window(workloads, start: int, window: int, world: int, unit: int) -> list[list[int]]:
    if window % world:
        raise ValueError(f"balanced_order: a mini-batch of {window} rows cannot be split over {world} ranks")
    if window % (world * unit):
        size = window // world  # units would straddle ranks: the plain contiguous split
        return [list(range(start + r * size, start + (r + 1) * size)) for r in range(world)]
    units = [list(range(u, u + unit)) for u in range(start, start + window, unit)]
    capacity = len(units) // world
    loads, parts = [0.0] * world, [[] for _ in range(world)]
    weight = {u[0]: sum(workloads[i] for i in u) for u in units}
    heaviest_first = sorted(units, key=lambda u: (-weight[u[0]], u[0]))
    for u in heaviest_first:
        rank = min((r for r in range(world) if len(parts[r]) < capacity), key=lambda r: (loads[r], r))
        parts[rank].append(u)
        loads[rank] += weight[u[0]]
    _refine_by_swaps(parts, loads, weight)
    return [sorted(i for u in part for i in u) for part in parts]


def _refine_by_swaps(parts: list[list[list[int]]], loads: list[float], weight: dict, rounds: int = 64) -> None:
    """Greedy placement can leave a gap that one swap closes: swap the unit pair between the busiest and the
    idlest rank that brings their loads closest, while that lowers the busiest load."""
    for _ in range(rounds):
        hi = max(range(len(loads)), key=lambda r: loads[r])
        lo = min(range(len(loads)), key=lambda r: loads[r])
        gap = loads[hi] - loads[lo]
        best = None
        for a, ua in enumerate(parts[hi]):
            for b, ub in enumerate(parts[lo]):
                delta = weight[ua[0]] - weight[ub[0]]
                if 0 < delta < gap and (best is None or abs(gap - 2 * delta) < best[0]):
                    best = (abs(gap - 2 * delta), a, b, delta)
        if best is None:
            return
        _, a, b, delta = best
        parts[hi][a], parts[lo][b] = parts[lo][b], parts[hi][a]
        loads[hi] -= delta
        loads[lo] += delta


def imbalance(workloads: Sequence[float], order: Sequence[int], world: int, window: int) -> float:
    """Sum over mini-batches of the busiest rank's tokens / of the mean rank's: 1.0 is perfectly even, 2.0 means
    the ranks spend half the step waiting for the slowest."""
    ordered = [workloads[i] for i in order]
    shard = len(ordered) // world
    per_window = window // world
    busiest = mean = 0.0
    for w in range(len(ordered) // window):
        loads = [sum(ordered[r * shard + w * per_window : r * shard + (w + 1) * per_window]) for r in range(world)]
        busiest += max(loads)
        mean += sum(loads) / world
    return busiest / mean if mean else 1.0


class BatchBalancer:
    """Permute a batch before a data-parallel worker call and put the per-row results back in order."""

    def __init__(self, world: int, window: int, unit: int, enabled: bool):
        self.world, self.window, self.unit = world, window, unit
        self.enabled = enabled and world > 1

    def order(self, batch: RolloutBatch) -> tuple[list[int] | None, dict[str, float]]:
        if not self.enabled:
            return None, {}
        work = row_workloads(batch)
        identity = list(range(len(work)))
        order = balanced_order(work, self.world, self.window, self.unit)
        return order, {
            "perf/dp_token_imbalance/before": imbalance(work, identity, self.world, self.window),
            "perf/dp_token_imbalance/after": imbalance(work, order, self.world, self.window),
        }

    def call(self, method, batch: RolloutBatch, metrics: dict | None = None) -> dict:
        """``method(batch)`` on the balanced batch; per-row tensors of the result come back in batch order."""
        order, stats = self.order(batch)
        if metrics is not None:
            metrics.update(stats)
        if order is None:
            return method(batch)
        out = method(index_batch(batch, order))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return {
            k: (v[inverse] if isinstance(v, torch.Tensor) and v.shape[:1] == (len(order),) else v)
            for k, v in out.items()
        }
