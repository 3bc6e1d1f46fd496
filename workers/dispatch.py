"""How a worker method's inputs are split across ranks and its outputs gathered.

A worker class marks each remotely callable method with ``@register(Dispatch.X)``; the worker group (Ray
or local) reads the mark and does the splitting and gathering, so the driver calls
``group.update_actor(batch)`` as if there were one worker.

The batch format lives in ``workers.rollout_batch``; the helpers that shard and gather it in ``workers.batch``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


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
