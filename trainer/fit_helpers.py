"""The fit loop's small parts (``trainer/ppo_trainer.py``): building the worker group and the batch balancer,
the data files, metric reductions over ranks, validation padding and the stage timer."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from mopd.common.models import EMBEDDED_DIR
from mopd.core.loss_modes import DISTILLATION_MODES, PREFERENCE_MODES
from trainer.balance import BatchBalancer
from trainer.config_sections import MOPDConfig
from workers.rollout_batch import RolloutBatch


def make_group(cfg: MOPDConfig):
    """The worker group: one rank per device, each built with its typed section (``WorkerConfig``)."""
    from trainer.worker_group import LocalWorkerGroup, RayWorkerGroup
    from workers.config import WorkerConfig
    from workers.fsdp_worker import ActorRolloutRefWorker

    trainer = cfg.trainer
    backend = trainer.backend
    if backend == "auto":
        try:
            import ray  # noqa: F401

            backend = "ray"
        except ImportError:
            backend = "local"
    trainer.check_backend(backend)
    worker_config = WorkerConfig.of(cfg)
    if backend == "local":
        return LocalWorkerGroup(ActorRolloutRefWorker, worker_config)
    use_gpu = trainer.device == "cuda" or (trainer.device == "auto" and torch.cuda.is_available())
    return RayWorkerGroup(
        ActorRolloutRefWorker,
        worker_config,
        trainer.world_size,
        use_gpu=use_gpu,
        nnodes=trainer.nnodes,
        placement_timeout_s=trainer.placement_timeout_s,
        runtime_env=trainer.runtime_env,
        output_dir=trainer.default_local_dir,
    )


def make_balancer(cfg: MOPDConfig, loss_mode: str, world: int) -> BatchBalancer:
    """Balance within each mini-batch; whole prompt groups where pairs (DPO/SimPO) or the teacher's shared
    prefixes need a prompt's rollouts together on one rank."""
    n = cfg.actor_rollout_ref.rollout.n
    window = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * n
    keep_groups = loss_mode in PREFERENCE_MODES or (
        loss_mode in DISTILLATION_MODES and cfg.actor_rollout_ref.ref.shared_prefix
    )
    return BatchBalancer(world, window, n if keep_groups else 1, cfg.trainer.balance_batch)


def data_files(files, split: str):
    if files == "embedded":
        return str(EMBEDDED_DIR / f"{split}.parquet")
    return files


def valid_tokens(batch: RolloutBatch) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(batch.responses, batch.response_mask)]


def due(freq: int | None, step: int, is_last: bool) -> bool:
    return bool(freq) and freq > 0 and (step % freq == 0 or is_last)


def reduce_worker_metrics(per_rank: list[dict]) -> dict:
    """Means over ranks, mini- and micro-batches; counts of work done (``perf/*_tokens_run``) are summed."""
    merged: dict[str, list[float]] = {}
    for rank_metrics in per_rank:
        for key, values in rank_metrics.items():
            merged.setdefault(key, []).extend(values)
    return {
        key: float(np.sum(values) if key.endswith("_tokens_run") else np.mean(values))
        for key, values in merged.items()
        if values
    }


def peak_memory_metrics(stage: str, per_rank: list[dict]) -> dict:
    """The largest rank's peak (GB) for a stage: torch-allocated device memory, or RSS on CPU."""
    out = {}
    for kind in per_rank[0]:
        out[f"perf/{stage}_peak_{kind}_gb"] = max(r[kind] for r in per_rank)
    return out


@contextmanager
def timer(name: str, timing: dict):
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start
