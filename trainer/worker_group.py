"""Worker groups: the driver calls ``group.method(batch)`` and the group dispatches to its ranks.

- ``LocalWorkerGroup``: one worker in this process (debugging, tests, machines without Ray).
- ``RayWorkerGroup``: one Ray actor per device or CPU slot on a local Ray cluster started here, or an
  existing one via ``RAY_ADDRESS``.
Both read each method's ``@register`` mark (``workers.dispatch``) to split inputs and gather outputs.
"""

from __future__ import annotations

import os
import socket

from workers.batch import concat_batches, split_batch
from workers.dispatch import Dispatch, dispatch_mode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Group:
    world_size: int
    worker_cls: type

    def _call_all(self, name: str, per_rank_args: list[tuple]) -> list:
        raise NotImplementedError

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        mode = dispatch_mode(self.worker_cls, name)
        if mode is None:
            raise AttributeError(f"{self.worker_cls.__name__}.{name} is not a registered worker method")

        def call(*args):
            if mode is Dispatch.DP_COMPUTE:
                (batch,) = args
                shards = split_batch(batch, self.world_size)
                return concat_batches(self._call_all(name, [(s,) for s in shards]))
            results = self._call_all(name, [args] * self.world_size)
            return results[0] if mode is Dispatch.RANK_ZERO else results

        return call


class LocalWorkerGroup(_Group):
    def __init__(self, worker_cls, config: dict):
        self.worker_cls = worker_cls
        self.world_size = 1
        self.worker = worker_cls(config, 0, 1)
        self.worker.set_master("127.0.0.1", free_port())

    def _call_all(self, name, per_rank_args):
        return [getattr(self.worker, name)(*per_rank_args[0])]

    def shutdown(self) -> None:
        self.worker.shutdown()


class RayWorkerGroup(_Group):
    def __init__(self, worker_cls, config: dict, world_size: int, *, use_gpu: bool, timeout_s: float = 3600.0):
        import ray

        self.worker_cls = worker_cls
        self.world_size = world_size
        self.timeout_s = timeout_s
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            address = os.environ.get("RAY_ADDRESS")
            # Logical CPUs are oversubscribed: a worker is one slot, not one core (helpers never starve).
            kwargs = {} if address else {"num_cpus": max(8, 2 * world_size)}
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=True,
                     ignore_reinit_error=True, **kwargs)
            self._owns_ray = True
        remote_cls = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(worker_cls)
        self.workers = [remote_cls.remote(config, rank, world_size) for rank in range(world_size)]
        # The process group's rendezvous is rank 0's node (on a multi-node cluster, not the driver's).
        master = ray.get(self.workers[0].free_address.remote(), timeout=timeout_s)
        ray.get([w.set_master.remote(*master) for w in self.workers], timeout=timeout_s)

    def _call_all(self, name, per_rank_args):
        refs = [getattr(w, name).remote(*args) for w, args in zip(self.workers, per_rank_args)]
        return self._ray.get(refs, timeout=self.timeout_s)

    def shutdown(self) -> None:
        try:
            self._call_all("shutdown", [()] * self.world_size)
        finally:
            for w in self.workers:
                self._ray.kill(w)
            if self._owns_ray:
                self._ray.shutdown()
