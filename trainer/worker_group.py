"""Worker groups: the driver calls ``group.method(batch)`` and the group dispatches to its ranks.

- ``LocalWorkerGroup``: one worker in this process (debugging, tests, machines without Ray).
- ``RayWorkerGroup``: one Ray actor per device or CPU slot on a local Ray cluster started here, or an
  existing one via ``RAY_ADDRESS``.
Both read each method's ``@register`` mark (``workers.dispatch``) to split inputs and gather outputs.
"""

from __future__ import annotations

import socket
import time

from mopd.common.errors import WorkerDiedError
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
    def __init__(self, worker_cls, config):
        self.worker_cls = worker_cls
        self.world_size = 1
        self.worker = worker_cls(config, 0, 1)
        self.worker.set_master("127.0.0.1", free_port())

    def _call_all(self, name, per_rank_args):
        return [getattr(self.worker, name)(*per_rank_args[0])]

    def shutdown(self) -> None:
        self.worker.shutdown()


class RayWorkerGroup(_Group):
    """One Ray actor per rank, placed by ``trainer.placement`` (one placement group, packed node by node)."""

    def __init__(
        self,
        worker_cls,
        config,
        world_size: int,
        *,
        use_gpu: bool,
        nnodes: int = 1,
        placement_timeout_s: float = 300.0,
        runtime_env: dict | None = None,
        output_dir: str | None = None,
        timeout_s: float = 3600.0,
    ):
        """``config`` goes to every rank's constructor; the placement follows ``trainer.nnodes``,
        ``trainer.placement_timeout_s`` and ``trainer.runtime_env``, and is written to
        ``output_dir/placement.json`` (``trainer.default_local_dir``)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from trainer import placement, ray_cluster
        from workers.rank_placement import RankPlacementMixin

        per_node = world_size // nnodes
        self.worker_cls = worker_cls
        self.world_size = world_size
        self.timeout_s = timeout_s
        self._ray = ray
        self.placement_group = None
        runtime_env = dict(runtime_env or {})
        if use_gpu:  # every GPU of the node visible to each rank (NCCL peer access); the rank picks its own
            runtime_env["env_vars"] = {
                "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
                **(runtime_env.get("env_vars") or {}),
            }
        self._owns_ray = ray_cluster.connect(ray, local_num_cpus=max(8, 2 * world_size), runtime_env=runtime_env)
        try:
            driver_node = ray.get_runtime_context().get_node_id()
            chosen = placement.choose_nodes(ray.nodes(), nnodes, per_node, use_gpu, driver_node)
            self.placement_group = placement.reserve(ray, chosen, per_node, use_gpu, float(placement_timeout_s))
            # The worker class keeps its name (``ray::ActorRolloutRefWorker`` in ps) and gains the probe.
            placed_cls = type(worker_cls.__name__, (worker_cls, RankPlacementMixin), {})
            remote_cls = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(placed_cls)
            by_bundle = [
                remote_cls.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self.placement_group, placement_group_bundle_index=b
                    )
                ).remote(config, b, world_size)
                for b in range(world_size)
            ]
            self.workers = by_bundle  # killed by _release if anything below fails
            probes = ray.get([w.placement_probe.remote() for w in by_bundle], timeout=timeout_s)
            self.placement = placement.places(probes, per_node)
            placement.check_packed(self.placement, per_node)
            self.workers = [by_bundle[p.bundle] for p in self.placement]
            ray.get(
                [
                    w.assign_rank.remote(p.rank, p.local_rank, p.device_index)
                    for w, p in zip(self.workers, self.placement)
                ],
                timeout=timeout_s,
            )
        except BaseException:
            self._release()
            raise
        for line in placement.node_lines(self.placement):
            print(line, flush=True)
        if output_dir:
            placement.write_placement(output_dir, self.placement, per_node)
        # The process group's rendezvous is rank 0's node (on a multi-node cluster, not the driver's).
        master = ray.get(self.workers[0].free_address.remote(), timeout=timeout_s)
        ray.get([w.set_master.remote(*master) for w in self.workers], timeout=timeout_s)

    def _call_all(self, name, per_rank_args):
        refs = [getattr(w, name).remote(*args) for w, args in zip(self.workers, per_rank_args)]
        exceptions = self._ray.exceptions
        try:
            # As each result arrives, not in rank order: a dead rank fails the call at once, even while a
            # survivor still waits in a collective for it.
            pending, deadline = list(refs), time.monotonic() + self.timeout_s
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise exceptions.GetTimeoutError(f"{name}: no result from every worker within {self.timeout_s:g} s")
                self._ray.get(ready)
            return self._ray.get(refs)
        except exceptions.RayActorError:
            raise self._worker_died(name, refs) from None
        except exceptions.RayTaskError:
            # A survivor's collective fails when its peer dies; name the dead peer, not the survivor.
            died = self._worker_died(name, refs, wait_s=10.0)
            if died.rank is None:
                raise
            raise died from None

    def _worker_died(self, method: str, refs: list, wait_s: float = 0.0) -> WorkerDiedError:
        """Which rank's task failed with a dead actor, and why its process ended (Ray's exit detail)."""
        exceptions = self._ray.exceptions
        for rank, ref in enumerate(refs):
            ready, _ = self._ray.wait([ref], timeout=wait_s)
            if not ready:
                continue
            try:
                self._ray.get(ref, timeout=0)
            except exceptions.RayActorError as err:
                from trainer.placement import describe_node, lost_node

                # Ray says when the actor's node died; the GCS marks that node dead a moment later.
                lost = lost_node(self._ray, self.placement, rank, wait_s=10.0 if _node_died(err) else 0.0)
                if lost is not None:  # the whole node went: every rank it held is gone
                    node, ranks = lost
                    return WorkerDiedError(
                        f"{describe_node(node)} died during {method}: ranks "
                        f"{', '.join(map(str, ranks))} lost (rank {rank}{_pid_of(err)}: "
                        f"{_exit_cause(err)})",
                        rank=rank,
                    )
                return WorkerDiedError(
                    f"worker rank {rank}{_pid_of(err)} died during {method}: {_exit_cause(err)}", rank=rank
                )
            except Exception:  # noqa: BLE001 - a survivor's own error: keep looking for the dead rank
                continue
        return WorkerDiedError(f"a worker died during {method}", rank=None)

    def shutdown(self) -> None:
        try:
            self._call_all("shutdown", [()] * self.world_size)
        except (WorkerDiedError, self._ray.exceptions.RayError):
            pass  # a dead worker has nothing to shut down; the others are killed below
        finally:
            self._release()

    def _release(self) -> None:
        """Kill the workers, free the placement group, and stop the cluster if this driver started it."""
        for w in getattr(self, "workers", []):
            self._ray.kill(w)
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.placement_group)
            except Exception:  # noqa: BLE001 - a cluster already gone has nothing left to free
                pass
            self.placement_group = None
        if self._owns_ray:
            self._ray.shutdown()


def _pid_of(err) -> str:
    pid = getattr(getattr(err, "_actor_died_error_context", None), "pid", 0) or _field(str(err), "pid:")
    return f" (pid {pid})" if pid else ""


def _node_died(err) -> bool:
    """Whether Ray's error says the actor's node died (not just its process)."""
    context = getattr(err, "_actor_died_error_context", None)
    try:
        return context is not None and context.HasField("node_death_info")
    except (AttributeError, ValueError):  # another Ray's error layout: look for the node in the table only
        return False


def _field(text: str, prefix: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(prefix):
            return line.strip()[len(prefix) :].strip()
    return ""


def _exit_cause(err) -> str:
    """Ray's one-line reason (e.g. 'Worker exit type: SYSTEM_ERROR Worker exit detail: ... killed by SIGKILL')."""
    text = str(err)
    for line in text.splitlines():
        if "exit type" in line.lower() or "exit detail" in line.lower():
            line = line.split(" Some common causes")[0]  # Ray's generic advice is longer than the cause
            return " ".join(line.split()).removeprefix("The actor is dead because its worker process has died. ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
