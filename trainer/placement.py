"""Where the ranks of a Ray worker group run: one placement group, one bundle per rank, packed node by node.

``trainer.nnodes`` nodes are chosen that can each hold ``trainer.n_gpus_per_node`` ranks (a GPU and a CPU
per rank; a CPU slot per rank on a CPU-only cluster), the driver's own node first when it qualifies, the
rest by IP then node id. Bundle ``b`` is pinned to node ``b // n_gpus_per_node`` through Ray's per-bundle
label selector on ``ray.io/node-id``, so a node's ranks never land elsewhere and a second job on the same
cluster cannot interleave with them. Ranks are then numbered by node, and inside a node by the GPU Ray
gave the bundle: rank ``r`` runs on node ``r // n_gpus_per_node`` with local rank ``r % n_gpus_per_node``,
which keeps vLLM's tensor-parallel groups (consecutive ranks) inside one node. ``placement.json`` in the
run directory records rank, node, IP, local rank and device; the log has one line per node.

Cost: one ``ray.nodes()`` call and one probe per rank at start; nothing per step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mopd.common.errors import ConfigError

NODE_ID_LABEL = "ray.io/node-id"
SHORT_ID = 8  # node ids are 56 hex digits; 8 tell the nodes of a cluster apart in a log line


@dataclass(frozen=True)
class RankPlace:
    rank: int
    node_id: str
    node_ip: str
    local_rank: int
    device: str  # "cuda:<index in the worker's visible devices>" or "cpu"
    device_index: int | None  # that index; None on CPU
    gpu_ids: tuple  # Ray's GPU ids for the rank (the node's physical GPU numbers); empty on CPU
    bundle: int


def choose_nodes(
    nodes: list[dict], nnodes: int, per_node: int, use_gpu: bool, driver_node_id: str | None = None
) -> list[dict]:
    """The ``nnodes`` alive nodes that will hold the ranks, in rank order; refuse in one line if too few."""
    resource = "GPU" if use_gpu else "CPU"
    alive = [n for n in nodes if n.get("Alive")]

    def holds(n):
        res = n.get("Resources", {})
        return res.get(resource, 0) >= per_node and res.get("CPU", 0) >= per_node

    eligible = sorted(
        (n for n in alive if holds(n)),
        key=lambda n: (n["NodeID"] != driver_node_id, n.get("NodeManagerAddress", ""), n["NodeID"]),
    )
    if len(eligible) >= nnodes:
        return eligible[:nnodes]
    unit = "GPU" if use_gpu else "CPU slot"
    seen = (
        "; ".join(
            f"{describe_node(n)}: {n.get('Resources', {}).get('GPU', 0):g} GPU, "
            f"{n.get('Resources', {}).get('CPU', 0):g} CPU"
            for n in alive
        )
        or "no alive node"
    )
    raise ConfigError(
        f"trainer.nnodes={nnodes} x trainer.n_gpus_per_node={per_node} needs {nnodes} Ray node(s) with "
        f"{per_node} {unit}s (and {per_node} CPUs) each, but the cluster has {len(eligible)} such node(s): "
        f"{nnodes - len(eligible)} missing ({seen}); join more nodes (`ray start --address=...`, "
        "RAY_ADDRESS for the driver) or lower trainer.nnodes / trainer.n_gpus_per_node"
    )


def bundle_for_rank(use_gpu: bool) -> dict:
    """What one rank reserves: its GPU and one CPU (a CPU slot alone on a CPU-only cluster)."""
    return {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}


def reserve(ray, chosen: list[dict], per_node: int, use_gpu: bool, timeout_s: float):
    """One placement group, bundle ``b`` pinned to ``chosen[b // per_node]``; waits at most ``timeout_s``."""
    from ray.util.placement_group import placement_group, remove_placement_group

    world = len(chosen) * per_node
    bundles = [bundle_for_rank(use_gpu) for _ in range(world)]
    selectors = [{NODE_ID_LABEL: chosen[b // per_node]["NodeID"]} for b in range(world)]
    try:
        group = placement_group(bundles, strategy="PACK", bundle_label_selector=selectors)
    except TypeError as err:  # a Ray without per-bundle label selectors
        raise ConfigError(
            f"Ray {ray.__version__} cannot pin placement-group bundles to nodes ({err}): "
            "pip install 'ray[default]>=2.50'"
        ) from None
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if ready:
        return group
    remove_placement_group(group)
    free = ray.available_resources()
    raise ConfigError(
        f"the Ray cluster did not grant {world} worker bundle(s) ({bundles[0]} each, {per_node} on each of "
        f"{', '.join(describe_node(n) for n in chosen)}) within trainer.placement_timeout_s={timeout_s:g} s: "
        f"free now {free.get('GPU', 0):g} GPU and {free.get('CPU', 0):g} CPU in the whole cluster; another job "
        "holds them, or raise trainer.placement_timeout_s"
    )


def rank_order(probes: list[dict], per_node: int) -> list[int]:
    """Bundle indices in rank order: by node (the bundle's pinned node), then by the GPU Ray gave it."""

    def key(b):
        gpus = probes[b]["gpu_ids"]
        first = int(gpus[0]) if gpus and str(gpus[0]).isdigit() else b
        return (b // per_node, first, b)

    return sorted(range(len(probes)), key=key)


def places(probes: list[dict], per_node: int) -> list[RankPlace]:
    """Each rank's place from the per-bundle probes (``workers.rank_placement``)."""
    out = []
    for rank, b in enumerate(rank_order(probes, per_node)):
        p = probes[b]
        device = f"cuda:{p['device_index']}" if p["gpu_ids"] else "cpu"
        out.append(
            RankPlace(
                rank,
                p["node_id"],
                p["node_ip"],
                rank % per_node,
                device,
                p["device_index"] if p["gpu_ids"] else None,
                tuple(p["gpu_ids"]),
                b,
            )
        )
    return out


def check_packed(placed: list[RankPlace], per_node: int) -> None:
    """Each node holds exactly the ranks k*per_node .. (k+1)*per_node-1 for some k (the selectors' promise)."""
    by_node: dict[str, list[int]] = {}
    for p in placed:
        by_node.setdefault(p.node_id, []).append(p.rank)
    for node_id, ranks in by_node.items():
        start = ranks[0] - ranks[0] % per_node
        if sorted(ranks) != list(range(start, start + per_node)):
            raise RuntimeError(
                f"node {node_id[:SHORT_ID]} holds ranks {ranks}, not one block of {per_node} "
                "consecutive ranks: the placement group did not pack node by node"
            )


def node_lines(placed: list[RankPlace]) -> list[str]:
    """One log line per node: its ranks, local ranks and devices."""
    lines, by_node = [], {}
    for p in placed:
        by_node.setdefault(p.node_id, []).append(p)
    for node_id, ranks in by_node.items():
        gpus = ",".join(str(g) for p in ranks for g in p.gpu_ids)
        lines.append(
            f"[mopd] node {ranks[0].node_ip} ({node_id[:SHORT_ID]}): ranks {_span([p.rank for p in ranks])}, "
            f"local ranks {_span([p.local_rank for p in ranks])}, devices "
            f"{','.join(p.device for p in ranks)}" + (f" (GPU ids {gpus})" if gpus else "")
        )
    return lines


def write_placement(run_dir: str | Path, placed: list[RankPlace], per_node: int) -> Path:
    """``<run_dir>/placement.json``, written atomically (a crash leaves the old file or the new one)."""
    path = Path(run_dir) / "placement.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "n_gpus_per_node": per_node,
        "nnodes": len({p.node_id for p in placed}),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ranks": [{**asdict(p), "gpu_ids": list(p.gpu_ids)} for p in placed],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def lost_node(ray, placed: list[RankPlace], rank: int, wait_s: float = 10.0) -> tuple[dict, list[int]] | None:
    """If ``rank`` died with its node: that node's record and every rank it held. Ray marks a node dead a
    moment after its workers' calls fail, so this waits up to ``wait_s`` while the node still looks alive."""
    node_id = placed[rank].node_id
    deadline = time.monotonic() + wait_s
    while True:
        record = {n["NodeID"]: n for n in ray.nodes()}.get(node_id)
        if record is None or not record.get("Alive"):
            record = record or {"NodeID": node_id, "NodeManagerAddress": placed[rank].node_ip}
            return record, [p.rank for p in placed if p.node_id == node_id]
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def describe_node(n: dict) -> str:
    return f"node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:SHORT_ID]})"


def _span(values: list[int]) -> str:
    return (
        f"{values[0]}-{values[-1]}"
        if len(values) > 1 and values == list(range(values[0], values[-1] + 1))
        else ",".join(map(str, values))
    )
