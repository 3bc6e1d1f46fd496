"""Where Ray puts the ranks (trainer.placement) and which cluster the driver uses (trainer.ray_cluster).

The Ray tests start their own clusters under a private temp dir (RAY_TMPDIR), never touching another
cluster on this machine: a two-node ``ray.cluster_utils.Cluster`` (2 CPU slots per node) joined through
RAY_ADDRESS, with a small worker class instead of the FSDP worker (the trainer's run is tests/e2e).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import replace

import pytest

from mopd.common.errors import ConfigError
from trainer import placement, ray_cluster
from workers.dispatch import Dispatch, register


def node(node_id: str, ip: str, cpu: float, gpu: float = 0, alive: bool = True) -> dict:
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive, "Resources": {"CPU": cpu, "GPU": gpu}}


# ----------------------------------------------------------------------------------------------
# Pure logic


def test_nodes_are_chosen_driver_first_then_by_ip_and_only_if_they_hold_a_node_of_ranks():
    nodes = [
        node("c" * 56, "10.0.0.3", 8, 4),
        node("a" * 56, "10.0.0.2", 8, 4),
        node("b" * 56, "10.0.0.1", 8, 2),
        node("d" * 56, "10.0.0.0", 8, 8, alive=False),
    ]
    chosen = placement.choose_nodes(nodes, 2, 4, use_gpu=True, driver_node_id="c" * 56)
    assert [n["NodeID"][0] for n in chosen] == ["c", "a"]  # b has 2 GPUs only, d is dead
    assert [n["NodeID"][0] for n in placement.choose_nodes(nodes, 3, 2, use_gpu=True)] == ["b", "a", "c"]


def test_a_cluster_too_small_is_refused_in_one_line_naming_what_is_missing():
    nodes = [node("a" * 56, "10.0.0.1", 16, 4), node("b" * 56, "10.0.0.2", 16, 2)]
    with pytest.raises(ConfigError) as info:
        placement.choose_nodes(nodes, 2, 4, use_gpu=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("trainer.nnodes=2 x trainer.n_gpus_per_node=4 needs 2 Ray node(s) with 4 GPUs")
    assert "has 1 such node(s): 1 missing" in msg and "node 10.0.0.2 (bbbbbbbb): 2 GPU, 16 CPU" in msg


def test_ranks_are_ordered_by_node_then_by_the_gpu_ray_gave_the_bundle():
    probes = [{"node_id": "n0", "node_ip": "ip0", "gpu_ids": [g], "device_index": int(g)} for g in ("3", "1")]
    probes += [{"node_id": "n1", "node_ip": "ip1", "gpu_ids": [g], "device_index": int(g)} for g in ("0", "2")]
    placed = placement.places(probes, per_node=2)
    assert [(p.rank, p.node_id, p.local_rank, p.device, p.bundle) for p in placed] == [
        (0, "n0", 0, "cuda:1", 1),
        (1, "n0", 1, "cuda:3", 0),
        (2, "n1", 0, "cuda:0", 2),
        (3, "n1", 1, "cuda:2", 3),
    ]
    assert [p.device_index for p in placed] == [1, 3, 0, 2] and placed[1].gpu_ids == ("3",)
    placement.check_packed(placed, 2)
    split = [placed[0], replace(placed[2], rank=1), replace(placed[1], rank=2), placed[3]]
    with pytest.raises(RuntimeError, match="not one block of 2 consecutive ranks"):
        placement.check_packed(split, 2)


@pytest.mark.parametrize(
    "overrides,start",
    [
        (["trainer.placement_timeout_s=0"], "trainer.placement_timeout_s must be a positive number of seconds"),
        (["trainer.runtime_env=[NCCL_DEBUG]"], "trainer.runtime_env must be null or a mapping"),
        (
            [
                "trainer.backend=ray",
                "trainer.nnodes=2",
                "trainer.n_gpus_per_node=3",
                "data.train_batch_size=6",
                "actor_rollout_ref.actor.ppo_mini_batch_size=6",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
            ],
            "actor_rollout_ref.rollout.tensor_model_parallel_size (2) must divide trainer.n_gpus_per_node (3)",
        ),
    ],
)
def test_placement_config_keys_are_checked(overrides, start):
    from hydra import compose, initialize_config_dir

    from trainer.config_schema import validate_config
    from trainer.main import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="grpo", overrides=overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value).startswith(start), info.value


# ----------------------------------------------------------------------------------------------
# Which cluster the driver uses


@pytest.fixture()
def ray_tmp(monkeypatch):
    """A private Ray temp dir (short: Ray's socket paths must stay under 108 characters)."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_stale_ray_current_cluster_file_does_not_stop_the_trainer(ray_tmp):
    import ray

    os.makedirs(os.path.join(ray_tmp, "ray"))
    with socket.socket() as s:  # a port nothing listens on: the cluster that file names is gone
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with open(os.path.join(ray_tmp, "ray", "ray_current_cluster"), "w") as f:
        f.write(dead)
    # The failure users met: plain ray.init reads that file and refuses num_cpus.
    with pytest.raises(ValueError, match="num_cpus and num_gpus must not be provided"):
        ray.init(num_cpus=1, include_dashboard=False)
    owns = ray_cluster.connect(ray, local_num_cpus=1)
    try:
        assert owns and ray.is_initialized() and ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()


def test_an_unreachable_ray_address_is_one_line_naming_it(ray_tmp, monkeypatch):
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ConfigError) as info:
        ray_cluster.connect(ray, local_num_cpus=1)
    assert str(info.value).startswith(f"RAY_ADDRESS={address}: no Ray cluster answers there")
    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "headnode")
    ray_cluster._probe("auto")  # Ray's own forms pass through
    with pytest.raises(ConfigError, match="RAY_ADDRESS=head:x: expected host:port"):
        ray_cluster._probe("head:x")


# ----------------------------------------------------------------------------------------------
# A two-node cluster on this machine


class EchoWorker:
    def __init__(self, config, rank, world_size):
        self.rank, self.world_size = rank, world_size

    def free_address(self):
        return "127.0.0.1", 0

    def set_master(self, address, port):
        self.master = (address, port)

    @register(Dispatch.ONE_TO_ALL)
    def where(self):
        import ray

        return {
            "rank": self.rank,
            "node": ray.get_runtime_context().get_node_id(),
            "LOCAL_RANK": os.environ["LOCAL_RANK"],
            "device_index": self.device_index,
            "env": os.environ.get("MOPD_PLACEMENT_TEST"),
        }

    @register(Dispatch.ONE_TO_ALL)
    def shutdown(self):
        return None


@pytest.fixture(scope="module")
def two_nodes():
    """Head without CPU slots (the driver's helpers only) and two nodes of 2 CPU slots, each named by a resource."""
    import sys

    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2, resources={f"node_{name}": 1}) for name in "ab"]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        yield cluster, nodes
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_ranks_are_packed_node_by_node_and_written_to_placement_json(two_nodes, tmp_path, capsys):
    from trainer.worker_group import RayWorkerGroup

    cluster, nodes = two_nodes
    group = RayWorkerGroup(
        EchoWorker,
        {},
        4,
        use_gpu=False,
        nnodes=2,
        output_dir=str(tmp_path),
        placement_timeout_s=60,
        runtime_env={"env_vars": {"MOPD_PLACEMENT_TEST": "from trainer.runtime_env"}},
        timeout_s=120,
    )
    try:
        seen = group.where()
        out = capsys.readouterr().out
        assert f"joined the Ray cluster at RAY_ADDRESS={cluster.address}: 3 node(s), 4 CPU, 0 GPU" in out
        node_ids = {n.node_id for n in nodes}
        assert [s["rank"] for s in seen] == [0, 1, 2, 3]
        assert seen[0]["node"] == seen[1]["node"] != seen[2]["node"] == seen[3]["node"]
        assert {s["node"] for s in seen} == node_ids  # the slot-less head holds no rank
        assert [s["LOCAL_RANK"] for s in seen] == ["0", "1", "0", "1"]
        assert [s["device_index"] for s in seen] == [0, 1, 0, 1]
        assert {s["env"] for s in seen} == {"from trainer.runtime_env"}
        record = json.loads((tmp_path / "placement.json").read_text())
        assert [(r["rank"], r["node_id"], r["local_rank"], r["device"]) for r in record["ranks"]] == [
            (s["rank"], s["node"], int(s["LOCAL_RANK"]), "cpu") for s in seen
        ]
        assert record["nnodes"] == 2 and record["n_gpus_per_node"] == 2
        node_lines = [line for line in out.splitlines() if line.startswith("[mopd] node ")]
        assert len(node_lines) == 2 and "ranks 0-1, local ranks 0-1" in node_lines[0]
        assert "ranks 2-3, local ranks 0-1" in node_lines[1]

        # A second group cannot get its bundles while the first holds every slot: refused after the timeout.
        with pytest.raises(ConfigError, match=r"did not grant 2 worker bundle\(s\).*placement_timeout_s=2 s"):
            RayWorkerGroup(EchoWorker, {}, 2, use_gpu=False, nnodes=2, placement_timeout_s=2)
        # More nodes than the cluster has: refused at once, naming what is missing.
        with pytest.raises(ConfigError, match=r"needs 3 Ray node\(s\) with 1 CPU slots .* 2 such node\(s\): 1 missing"):
            RayWorkerGroup(EchoWorker, {}, 3, use_gpu=False, nnodes=3)
    finally:
        group.shutdown()
