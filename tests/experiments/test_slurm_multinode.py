"""experiments/slurm/ray_multinode.sbatch run end to end on this machine with two "nodes".

Small stand-ins for Slurm's ``sbatch``, ``scontrol`` and ``srun`` go first on PATH: ``sbatch`` sets the
job's variables and runs the script; ``scontrol show hostnames`` lists the fake nodes; each ``srun`` runs its
step here in its own process group (forwarding USR1/TERM to it, as slurmstepd does), so every
``ray start --block`` step starts one local Ray node. The cluster lives in a private RAY_TMPDIR on a free
port and is stopped by the script itself (the test checks no process of it is left).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "experiments" / "slurm" / "ray_multinode.sbatch"

STANDINS = {
    "sbatch": r"""#!/usr/bin/env bash
# sbatch stand-in: --nodes=N --gpus-per-node=G SCRIPT ARGS...; runs the job here, in the foreground.
nodes=1 gpus=""
while [[ $1 == --* ]]; do
  case $1 in --nodes=*) nodes=${1#*=} ;; --gpus-per-node=*) gpus=${1#*=} ;; esac
  shift
done
export SLURM_JOB_ID=4242 SLURM_JOB_NODELIST="fake[1-$nodes]" SLURM_NNODES=$nodes SLURM_GPUS_PER_NODE=$gpus
exec bash "$@"
""",
    "scontrol": r"""#!/usr/bin/env bash
# scontrol stand-in: `scontrol show hostnames fake[1-N]` -> fake1 .. fakeN; `scontrol requeue ID` is logged
if [[ $1 == requeue ]]; then echo "scontrol requeue $2" >> "$FAKE_SLURM_LOG"; exit 0; fi
[[ $1 == show && $2 == hostnames ]] || { echo "scontrol stand-in: unsupported: $*" >&2; exit 2; }
n=${3##*-}; n=${n%]}
for i in $(seq "$n"); do echo "fake$i"; done
""",
    "srun": r"""#!/usr/bin/env bash
# srun stand-in: log the step's flags, run its command here in a process group of its own, forward signals.
echo "srun $*" >> "$FAKE_SLURM_LOG"
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in -w|-N|-n|--nodelist) shift 2 ;; *) shift ;; esac
done
setsid "$@" &
child=$!
trap 'echo "srun: USR1 to step $child" >> "$FAKE_SLURM_LOG"; kill -USR1 -- -$child 2>/dev/null' USR1
trap 'kill -TERM -- -$child 2>/dev/null' TERM
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || exit $rc
done
""",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STANDINS.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        RAY_TMPDIR=ray_tmp,
        FAKE_SLURM_LOG=str(tmp_path / "slurm.log"),
        RAY_PORT=str(free_port()),
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=str(ROOT),
        TOKENIZERS_PARALLELISM="false",
        USE_CUDA="0",
        # two Ray nodes on one machine: each picks its own agent port; no dashboard
        RAY_START_ARGS="--dashboard-agent-listen-port=0",
        RAY_HEAD_ARGS="--include-dashboard=false",
    )
    env.pop("RAY_ADDRESS", None)
    yield env, tmp_path
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    for pid in left:  # only processes of this test's cluster (its private temp dir is on their command line)
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"the script left Ray processes of its cluster running: {left}"


@pytest.mark.slow
def test_sbatch_script_starts_the_cluster_trains_on_two_nodes_and_stops_it(slurm):
    env, tmp = slurm
    run = tmp / "run"
    env.update(MOPD_CONTAINER_IMAGE="mopd-gh200.sqsh", MOPD_CONTAINER_MOUNTS="/data:/data")
    result = subprocess.run(
        [
            "sbatch",
            "--nodes=2",
            "--gpus-per-node=2",
            str(SBATCH),
            "run_local_grpo.sh",
            "data.train_batch_size=4",
            "data.max_response_length=6",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
            "trainer.total_training_steps=1",
            "trainer.test_freq=-1",
            "trainer.val_before_train=false",
            "trainer.logger=[jsonl]",
            "trainer.num_threads=1",
            f"trainer.default_local_dir={run}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "[mopd] Ray cluster up: 2 node(s), 4 GPU(s)" in out and "[mopd] Ray cluster stopped" in out
    assert "joined the Ray cluster at RAY_ADDRESS=" in out
    ranks = json.loads((run / "placement.json").read_text())["ranks"]
    assert ranks[0]["node_id"] == ranks[1]["node_id"] != ranks[2]["node_id"] == ranks[3]["node_id"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    steps = (tmp / "slurm.log").read_text().splitlines()
    assert sum("ray start --head" in s for s in steps) == 1 and sum("ray start --address=" in s for s in steps) == 1
    assert all("--container-image=mopd-gh200.sqsh" in s and "--container-mounts=/data:/data" in s for s in steps)
    assert any("run_local_grpo.sh trainer.nnodes=2 trainer.n_gpus_per_node=2" in s for s in steps)


FAKE_RAY = r"""#!/usr/bin/env bash
# ray stand-in: `ray start ... --block` waits; `ray status` reports $FAKE_RAY_NODES nodes of 2 GPUs.
case $1 in
  start) echo "fake ray start $*"; exec sleep 300 ;;
  status)
    echo "Active:"; for i in $(seq "$FAKE_RAY_NODES"); do echo " 1 node_fake$i"; done
    echo "Pending:"; echo "Resources"; echo "Total Usage:"; echo " 0.0/$((2 * FAKE_RAY_NODES)).0 GPU" ;;
esac
"""


def _fake_ray(env: dict, tmp: Path, nodes: int) -> None:
    path = tmp / "bin" / "ray"
    path.write_text(FAKE_RAY)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env["FAKE_RAY_NODES"] = str(nodes)


def test_a_cluster_that_never_fills_up_fails_naming_what_is_missing(slurm):
    env, tmp = slurm
    _fake_ray(env, tmp, nodes=1)
    env["MOPD_CLUSTER_TIMEOUT_S"] = "2"
    result = subprocess.run(
        ["sbatch", "--nodes=2", "--gpus-per-node=2", str(SBATCH), "run_local_grpo.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        "[mopd] error: the Ray cluster at 127.0.0.1:" in result.stderr
        and "has 1/2 node(s) and 2/4 GPU(s) after MOPD_CLUSTER_TIMEOUT_S=2 s" in result.stderr
    ), result.stderr
    assert "[mopd] Ray cluster stopped" in result.stdout
    assert "run_local_grpo.sh" not in (tmp / "slurm.log").read_text()  # no driver without a cluster


def test_usr1_from_slurm_reaches_the_driver_step(slurm):
    """``#SBATCH --signal=B:USR1@120`` signals the batch script; it forwards USR1 to the driver's step, and
    the driver's exit 75 (checkpointed on a signal) requeues the job."""
    env, tmp = slurm
    _fake_ray(env, tmp, nodes=2)
    driver = tmp / "driver.sh"
    # A trainer stand-in: Python, as the real driver (a handler on USR1 even where its shell ignores it).
    driver.write_text(
        'exec python3 -c "import os, signal, sys, time\n'
        "def stop(*_):\n    open(os.environ['MARK'], 'w').write('checkpointed')\n    sys.exit(75)\n"
        "signal.signal(signal.SIGUSR1, stop)\nopen(os.environ['MARK'] + '.up', 'w').write('up')\n"
        'time.sleep(60)\nsys.exit(3)"\n'
    )
    env["MARK"] = str(tmp / "mark")
    proc = subprocess.Popen(
        ["sbatch", "--nodes=2", "--gpus-per-node=2", str(SBATCH), str(driver)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp / "mark.up").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out + err  # the driver's own exit status
    assert "scontrol requeue 4242" in Path(env["FAKE_SLURM_LOG"]).read_text()
    assert (tmp / "mark").read_text().strip() == "checkpointed"
    assert "USR1: asking the driver to checkpoint and exit" in out and "[mopd] Ray cluster stopped" in out
