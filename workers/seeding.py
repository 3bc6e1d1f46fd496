"""Seeds and random state of a rank: seeds derived from (run seed, step, index, purpose), so sampling and
shuffling do not depend on which rank or batch a row lands in, and the RNG state a checkpoint carries."""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derive_seed(seed: int, step: int, index: int, tag: str) -> int:
    """A seed that depends only on (run seed, step, index, purpose): reproducible and resumable."""
    return int(np.random.SeedSequence([seed, step, index, zlib.crc32(tag.encode())]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shuffled_groups(size: int, group: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of ``size`` rows that keeps each run of ``group`` consecutive rows together."""
    blocks = torch.randperm(size // group, generator=generator)
    return (blocks.unsqueeze(1) * group + torch.arange(group)).reshape(-1)
