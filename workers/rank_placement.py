"""What a Ray worker reports about where it runs, and how it takes the rank the driver assigns.

Mixed into the worker class by ``trainer.worker_group.RayWorkerGroup`` (``trainer.placement`` orders the
ranks). The device index is the position of Ray's GPU id among the devices this process sees: with
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1`` (the trainer's default on GPUs, so NCCL sees a node's
peers) it is the physical GPU number; with Ray's per-actor ``CUDA_VISIBLE_DEVICES`` it is 0.
"""

from __future__ import annotations

import os


class RankPlacementMixin:
    def placement_probe(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        index = None
        if gpu_ids:
            index = visible.index(gpu_ids[0]) if gpu_ids[0] in visible else int(gpu_ids[0])
        return {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": gpu_ids,
            "device_index": index,
            "pid": os.getpid(),
        }

    def assign_rank(self, rank: int, local_rank: int, device_index: int | None) -> None:
        """Before ``init_model``: the rank in the process group, the rank on this node, and the device."""
        self.rank, self.local_rank = rank, local_rank
        self.device_index = device_index if device_index is not None else local_rank
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank))
