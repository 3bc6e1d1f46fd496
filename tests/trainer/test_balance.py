"""trainer.balance_batch: equal row counts per rank, near-equal tokens, mini-batch membership kept."""

import random

import pytest
import torch

from trainer.balance import BatchBalancer, balanced_order, imbalance
from workers.rollout_batch import RolloutBatch, StepMeta


def shards(order, world):
    size = len(order) // world
    return [order[r * size : (r + 1) * size] for r in range(world)]


@pytest.mark.parametrize("world,window,unit", [(2, 8, 1), (4, 16, 1), (2, 16, 4), (3, 12, 2)])
def test_a_permutation_that_keeps_every_mini_batch_and_evens_the_ranks(world, window, unit):
    rng = random.Random(world * 100 + window + unit)
    rows = 3 * window
    work = [float(rng.randint(10, 500)) for _ in range(rows)]
    order = balanced_order(work, world, window, unit)
    assert sorted(order) == list(range(rows))
    per_window = window // world
    for rank, shard in enumerate(shards(order, world)):
        for w in range(rows // window):  # the rank's w-th mini-batch holds rows of global mini-batch w only
            part = shard[w * per_window : (w + 1) * per_window]
            assert all(w * window <= i < (w + 1) * window for i in part), (rank, w, part)
            for start in range(0, len(part), unit):  # whole units, in order
                unit_rows = part[start : start + unit]
                assert unit_rows == list(range(unit_rows[0], unit_rows[0] + unit))
                assert unit_rows[0] % unit == 0
    assert imbalance(work, order, world, window) <= imbalance(work, list(range(rows)), world, window)


def test_a_skewed_batch_is_evened_out():
    work = [1000.0] * 4 + [10.0] * 4  # the plain split gives rank 0 every long row
    order = balanced_order(work, 2, 8)
    before, after = imbalance(work, list(range(8)), 2, 8), imbalance(work, order, 2, 8)
    assert before == pytest.approx(4000 / 2020)
    assert after == pytest.approx(1.0)


def test_swaps_close_the_gap_greedy_placement_leaves():
    work = [53, 51, 51, 52, 53, 55, 52, 55, 52, 56, 56, 38, 47, 50, 61, 53]  # a real step's tokens per row
    order = balanced_order(work, 2, 16)
    assert imbalance(work, order, 2, 16) == pytest.approx(418 / 417.5)  # 835 tokens: 418 + 417 is the best


def test_units_that_cannot_split_evenly_keep_the_plain_split():
    work = [float(i) for i in range(8)]
    assert balanced_order(work, 2, 8, unit=8) == list(range(8))  # one group cannot go to two ranks


def test_balancer_puts_per_row_outputs_back_in_batch_order():
    mask = torch.zeros(8, 10, dtype=torch.long)
    for i, length in enumerate([9, 1, 8, 2, 7, 3, 6, 4]):
        mask[i, :length] = 1
    batch = RolloutBatch(attention_mask=mask, uid=list("aabbccdd"), meta=StepMeta(step=1))
    seen = {}

    def method(b):
        seen["uid"] = b.uid
        return {"row_id": b.attention_mask.sum(-1), "metrics": [1]}

    metrics = {}
    out = BatchBalancer(world=2, window=8, unit=1, enabled=True).call(method, batch, metrics)
    torch.testing.assert_close(out["row_id"], mask.sum(-1))
    assert seen["uid"] != batch.uid and sorted(seen["uid"]) == sorted(batch.uid)
    assert metrics["perf/dp_token_imbalance/after"] <= metrics["perf/dp_token_imbalance/before"]
    off = {}
    BatchBalancer(world=1, window=8, unit=1, enabled=True).call(method, batch, off)
    assert off == {} and seen["uid"] == batch.uid
