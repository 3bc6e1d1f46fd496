"""Which Ray cluster the driver uses: its own one-node cluster, or an existing one named by ``RAY_ADDRESS``.

- Without ``RAY_ADDRESS`` the driver starts a local cluster of its own (``address="local"``). It never
  attaches to the cluster that Ray's ``ray_current_cluster`` file names: that file outlives a crashed or
  killed cluster, and Ray then refuses ``num_cpus`` with "When connecting to an existing cluster, num_cpus
  and num_gpus must not be provided" (every run on the machine fails until someone deletes it).
- With ``RAY_ADDRESS=host:port`` (``ray start`` on each node, ``experiments/slurm/ray_multinode.sbatch``)
  the driver joins that cluster and says so in one line; an address nothing answers on is refused in one
  line naming it, after a short TCP probe, instead of Ray's minutes of reconnect warnings.
- ``trainer.runtime_env`` is Ray's runtime environment for the workers (e.g. ``{env_vars: {NCCL_DEBUG: INFO}}``).
"""

from __future__ import annotations

import os
import socket

from mopd.common.errors import ConfigError

PROBE_TIMEOUT_S = 10.0


def connect(ray, *, local_num_cpus: int, runtime_env: dict | None = None) -> bool:
    """Start or join the cluster; True when this driver started it (and must shut it down)."""
    if ray.is_initialized():
        return False  # the caller's own ray.init (a notebook, a test): use it as it is
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    common = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True, ignore_reinit_error=True)
    if runtime_env:
        common["runtime_env"] = runtime_env
    if not address or address == "local":
        # Logical CPUs are oversubscribed: a worker is one slot, not one core (helpers never starve).
        ray.init(address="local", num_cpus=local_num_cpus, **common)
        return True
    _probe(address)
    try:
        ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"RAY_ADDRESS={address}: cannot join that Ray cluster: {first}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    print(
        f"[mopd] joined the Ray cluster at RAY_ADDRESS={address}: {len(nodes)} node(s), "
        f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU",
        flush=True,
    )
    return False


def _probe(address: str) -> None:
    """A TCP connect to the GCS port of ``host:port`` (Ray Client ``ray://`` and ``auto`` go to Ray as they are)."""
    if "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return
    except ValueError:
        raise ConfigError(
            f"RAY_ADDRESS={address}: expected host:port of a running Ray head (`ray start --head` prints it)"
        ) from None
    except OSError as err:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({err.strerror or err}); start one with "
            "`ray start --head` (experiments/slurm/ray_multinode.sbatch on Slurm), or unset RAY_ADDRESS to run "
            "on a local cluster of this machine"
        ) from None


def node_table(ray) -> dict[str, dict]:
    """Node id -> Ray's node record (alive or not): IP, resources, labels."""
    return {n["NodeID"]: n for n in ray.nodes()}
