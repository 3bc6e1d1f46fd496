"""Multi-node training on one machine: a Ray cluster of two nodes (``ray.cluster_utils.Cluster``, 2 CPU
slots each, plus a slot-less head) joined through ``RAY_ADDRESS``, the embedded default trained at world size
4 with ``trainer.nnodes=2 trainer.n_gpus_per_node=2`` as a user runs it (``python -m trainer.main``).

- ranks 0-1 on one node and 2-3 on the other (``placement.json``), the same losses as a one-node run of
  world size 4 (the math does not depend on placement), checkpoint and resume on the cluster;
- a node removed mid-run: the driver ends with one line naming that node and the ranks it held.

The cluster lives under a private RAY_TMPDIR and is shut down by the fixture; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = [  # the embedded default, a few short steps
    "data.train_batch_size=4",
    "data.max_response_length=8",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "trainer.test_freq=-1",
    "trainer.val_before_train=false",
    "trainer.logger=[jsonl]",
    "trainer.backend=ray",
    "trainer.num_threads=1",
]
pytestmark = pytest.mark.slow


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer.main",
        "--config-name",
        "grpo",
        *SMALL,
        f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]


def driver_env(address: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    return env


def train(run_dir: Path, address: str | None, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(run_dir, *overrides), cwd=ROOT, env=driver_env(address), capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 2 CPU slots, each named by a custom resource; the head holds no slot."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths stay under 108 characters
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PYTHONPATH", "RAY_AUTH_MODE")}
    # The nodes' workers import this checkout (not whatever an editable install points at).
    os.environ.update(RAY_TMPDIR=tmp, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=2, resources={f"node_{name}": 1}) for name in "ab"]
    c.wait_for_nodes()
    try:
        yield c, nodes
    finally:
        c.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_nodes_train_like_one_node_and_resume(cluster, tmp_path):
    c, nodes = cluster
    run = tmp_path / "two_nodes"
    first = train(
        run,
        c.address,
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=2",
        "trainer.save_freq=1",
    )
    assert f"joined the Ray cluster at RAY_ADDRESS={c.address}: 3 node(s), 4 CPU" in first.stdout

    record = json.loads((run / "placement.json").read_text())
    ranks = record["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3] and [r["local_rank"] for r in ranks] == [0, 1, 0, 1]
    assert ranks[0]["node_id"] == ranks[1]["node_id"] != ranks[2]["node_id"] == ranks[3]["node_id"]
    assert {r["node_id"] for r in ranks} == {n.node_id for n in nodes}
    assert sum(line.startswith("[mopd] node ") for line in first.stdout.splitlines()) == 2

    # Resume on the cluster: one more step from the step-2 checkpoint.
    resumed = train(
        run,
        c.address,
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=3",
        "trainer.save_freq=1",
        "trainer.resume_mode=auto",
    )
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    two_nodes = metrics(run)
    assert [r["step"] for r in two_nodes] == [1, 2, 3]

    # One node, world size 4, a cluster of the driver's own: the same rollouts and losses.
    one = tmp_path / "one_node"
    train(one, None, "trainer.nnodes=1", "trainer.n_gpus_per_node=4", "trainer.total_training_steps=3")
    one_node = metrics(one)
    assert len({r["node_id"] for r in json.loads((one / "placement.json").read_text())["ranks"]}) == 1
    for a, b in zip(two_nodes, one_node, strict=True):
        assert a["critic/score/mean"] == b["critic/score/mean"]
        assert a["actor/loss"] == pytest.approx(b["actor/loss"], rel=1e-5, abs=1e-7)
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-4)


def test_a_node_removed_mid_run_names_the_node_and_its_ranks(cluster, tmp_path):
    """Last in this module: it takes node b away."""
    c, nodes = cluster
    run = tmp_path / "run"
    proc = subprocess.Popen(
        command(
            run,
            "trainer.nnodes=2",
            "trainer.n_gpus_per_node=2",
            "trainer.total_training_steps=200",
            "trainer.save_freq=1",
            "trainer.max_actor_ckpt_to_keep=1",
        ),
        cwd=ROOT,
        env=driver_env(c.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(run.glob("checkpoints/global_step_*/COMPLETE")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.5)
        ranks = json.loads((run / "placement.json").read_text())["ranks"]
        victim = nodes[1]
        lost = [r["rank"] for r in ranks if r["node_id"] == victim.node_id]
        c.remove_node(victim)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("[mopd] error:")]
    assert f"({victim.node_id[:8]}) died during " in line, line
    assert f"ranks {', '.join(map(str, lost))} lost" in line, line
    assert "last complete checkpoint: step " in line and "trainer.resume_mode=auto" in line, line
