"""The optimizer horizon reaches the worker as an argument (``init_model(total_optimizer_steps)``), not
through the config: the cosine schedule ends at its floor exactly at the horizon it is given."""

from __future__ import annotations

import inspect

import pytest
import torch

from workers.config import OptimConfig
from workers.fsdp_worker import ActorRolloutRefWorker
from workers.optimizer import build_optimizer

OPTIM = {
    "lr": 1.0,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "lr_warmup_steps": 2,
    "lr_warmup_steps_ratio": 0.0,
    "warmup_style": "cosine",
    "min_lr_ratio": 0.1,
}


def lrs(total: int, steps: int, **changes) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, OptimConfig.from_dict({**OPTIM, **changes}), total)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_init_model_takes_the_horizon_explicitly():
    assert list(inspect.signature(ActorRolloutRefWorker.init_model).parameters)[1:] == ["total_optimizer_steps"]


@pytest.mark.parametrize("total", [6, 20])
def test_cosine_reaches_its_floor_at_the_given_horizon(total):
    schedule = lrs(total, total + 2)
    assert schedule[:2] == pytest.approx([0.5, 1.0])  # linear warm-up
    assert schedule[2] == pytest.approx(1.0)
    assert schedule[total] == pytest.approx(0.1) and schedule[total + 1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(schedule[2:], schedule[3:]))


def test_warmup_ratio_is_a_fraction_of_the_horizon():
    schedule = lrs(40, 4, lr_warmup_steps=-1, lr_warmup_steps_ratio=0.1, warmup_style="constant")
    assert schedule == pytest.approx([0.25, 0.5, 0.75, 1.0])
