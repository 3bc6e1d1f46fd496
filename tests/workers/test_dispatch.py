"""workers/dispatch.py: how a batch is cut over ranks and put back together, and how a worker group
reads the ``@register`` marks (one process, and a real local Ray cluster with two workers)."""

from __future__ import annotations

import pytest
import torch

from workers.batch import batch_size, concat_batches, split_batch
from workers.dispatch import Dispatch, dispatch_mode, register


def make_batch(size: int = 6, width: int = 3) -> dict:
    return {
        "input_ids": torch.arange(size * width).view(size, width),
        "scores": torch.arange(size, dtype=torch.float32),
        "uid": [f"u{i // 2}" for i in range(size)],
        "meta": {"step": 3, "temperature": 0.7, "tags": ["a", "b"]},
        "scale": 2.5,
    }


def test_register_marks_and_dispatch_mode_reads_them():
    class Worker:
        @register(Dispatch.DP_COMPUTE)
        def compute(self, batch):
            return batch

        @register(Dispatch.ONE_TO_ALL)
        def setup(self):
            return None

        def helper(self):
            return None

    assert dispatch_mode(Worker, "compute") is Dispatch.DP_COMPUTE
    assert dispatch_mode(Worker, "setup") is Dispatch.ONE_TO_ALL
    assert dispatch_mode(Worker, "helper") is None and dispatch_mode(Worker, "missing") is None


def test_split_is_contiguous_and_leaves_meta_and_scalars_whole():
    batch = make_batch()
    shards = split_batch(batch, 3)
    assert [batch_size(s) for s in shards] == [2, 2, 2]
    for r, shard in enumerate(shards):
        assert torch.equal(shard["input_ids"], batch["input_ids"][2 * r : 2 * r + 2])
        assert shard["uid"] == batch["uid"][2 * r : 2 * r + 2] == [f"u{r}", f"u{r}"]  # a prompt's samples stay together
        assert shard["meta"] is batch["meta"]  # never cut, even the list inside it
        assert shard["scale"] == 2.5


def test_split_then_concat_is_the_identity():
    batch = make_batch(8)
    for parts in (1, 2, 4, 8):
        back = concat_batches(split_batch(batch, parts))
        assert set(back) == set(batch)
        assert torch.equal(back["input_ids"], batch["input_ids"]) and torch.equal(back["scores"], batch["scores"])
        assert back["uid"] == batch["uid"] and back["meta"] == batch["meta"] and back["scale"] == 2.5


def test_uneven_split_and_batches_without_samples_are_errors():
    with pytest.raises(ValueError, match="6 samples cannot be split evenly over 4 workers"):
        split_batch(make_batch(6), 4)
    with pytest.raises(ValueError, match="no per-sample field"):
        batch_size({"meta": {"step": 1}, "scale": 1.0})
    assert concat_batches([]) == {}


def test_concat_right_pads_shards_of_different_widths_with_zeros():
    a = {"responses": torch.ones(2, 3, dtype=torch.long), "logits": torch.ones(2, 3, 4)}
    b = {"responses": torch.full((1, 5), 7), "logits": torch.full((1, 5, 4), 2.0)}
    out = concat_batches([a, b])
    assert out["responses"].shape == (3, 5) and out["logits"].shape == (3, 5, 4)
    assert out["responses"][:2, 3:].eq(0).all() and out["responses"][:2, :3].eq(1).all()
    assert out["responses"][2].eq(7).all()
    assert out["logits"][:2, 3:].eq(0).all() and out["logits"][2].eq(2.0).all()


# ----------------------------------------------------------------------------------------------
# Worker groups read the marks


def _make_worker_cls():
    """A small worker with the group's protocol (defined in a function, so Ray ships it by value)."""

    class EchoWorker:
        def __init__(self, config, rank, world_size):
            self.rank, self.world_size, self.config = rank, world_size, config

        def free_address(self):
            return "127.0.0.1", 0

        def set_master(self, address, port):
            self.master = (address, port)

        @register(Dispatch.DP_COMPUTE)
        def double(self, batch):
            return {"x": batch["x"] * 2, "rank": [self.rank] * batch["x"].shape[0], "meta": batch["meta"]}

        @register(Dispatch.ONE_TO_ALL)
        def whoami(self, suffix):
            return f"{self.rank}/{self.world_size}{suffix}"

        @register(Dispatch.RANK_ZERO)
        def first(self):
            return self.rank

        @register(Dispatch.ONE_TO_ALL)
        def shutdown(self):
            return None

        def not_remote(self):
            return None

    return EchoWorker


def test_local_group_dispatches_by_mark():
    from trainer.worker_group import LocalWorkerGroup

    group = LocalWorkerGroup(_make_worker_cls(), {"k": 1})
    out = group.double({"x": torch.arange(4), "meta": {"step": 1}})
    assert torch.equal(out["x"], torch.arange(4) * 2) and out["rank"] == [0] * 4
    assert group.whoami("!") == ["0/1!"] and group.first() == 0
    with pytest.raises(AttributeError, match="not a registered worker method"):
        group.not_remote()
    group.shutdown()


def test_ray_group_shards_gathers_in_rank_order_and_broadcasts():
    pytest.importorskip("ray")
    from trainer.worker_group import RayWorkerGroup

    group = RayWorkerGroup(_make_worker_cls(), {"k": 1}, 2, use_gpu=False, timeout_s=120)
    try:
        out = group.double({"x": torch.arange(6), "meta": {"step": 2}})
        assert torch.equal(out["x"], torch.arange(6) * 2)
        assert out["rank"] == [0, 0, 0, 1, 1, 1] and out["meta"] == {"step": 2}
        assert group.whoami("?") == ["0/2?", "1/2?"]
        assert group.first() == 0
    finally:
        group.shutdown()
