"""Faults a user meets, run as the user runs them (``python -m trainer.main``): a verifier that raises or
returns NaN, and a Ray worker killed mid-run. Each must be loud and end in one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.train_batch_size=2",
    "data.max_response_length=4",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "trainer.test_freq=-1",
    "trainer.val_before_train=false",
    "trainer.logger=[jsonl]",
]


def command(run_dir: Path, *overrides: str, config: str = "grpo") -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer.main",
        "--config-name",
        config,
        *SMALL,
        f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(run_dir, *overrides), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[mopd] error:")]


# ----------------------------------------------------------------------------------------------
# Bad rewards


def test_a_verifier_that_always_raises_stops_with_one_line(tmp_path):
    reward = tmp_path / "broken_reward.py"
    reward.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    raise RuntimeError('verifier service down')\n"
    )
    result = train(
        tmp_path / "run",
        "trainer.backend=local",
        "trainer.total_training_steps=3",
        f"custom_reward_function.path={reward}",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert line.startswith("[mopd] error: every reward of step 1 errored (4/4 rollouts)"), line
    assert str(reward) in line and "RuntimeError: verifier service down" in line
    # the first error's traceback, once, pointing at the user's file
    assert result.stderr.count("[mopd] reward error") == 1
    assert f'File "{reward}", line 2, in compute_score' in result.stderr
    logged = tmp_path / "run" / "metrics.jsonl"
    assert not logged.exists() or "step" not in logged.read_text()  # no step was logged on reward 0


def test_some_errors_and_nan_rewards_are_counted_and_shown_once(tmp_path):
    reward = tmp_path / "flaky_reward.py"
    reward.write_text(
        "CALLS = [0]\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    CALLS[0] += 1\n"
        "    if CALLS[0] % 4 == 1:\n"
        "        raise KeyError('missing field')\n"
        "    if CALLS[0] % 4 == 2:\n"
        "        return float('nan')\n"
        "    return 1.0\n"
    )
    run = tmp_path / "run"
    result = train(
        run, "trainer.backend=local", "trainer.total_training_steps=2", f"custom_reward_function.path={reward}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # 4 rollouts a step: one raises, one is NaN, two score 1
        assert row["reward/error_fraction"] == pytest.approx(0.25)
        assert row["reward/nonfinite_fraction"] == pytest.approx(0.25)
        assert row["critic/score/mean"] == pytest.approx(0.5)  # NaN counts as a failure (score 0), not NaN
    assert result.stderr.count("[mopd] reward error") == 1 and "KeyError: 'missing field'" in result.stderr
    assert result.stderr.count("[mopd] non-finite reward") == 1 and "score nan" in result.stderr
    assert error_lines(result.stderr) == []


# ----------------------------------------------------------------------------------------------
# A Ray worker killed mid-run


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _worker_pids(root: int) -> list[int]:
    """The Ray worker processes under this driver (its own cluster's raylet), never anyone else's."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        kids = _children(pid)
        stack += kids
        for kid in kids:
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::ActorRolloutRefWorker"):
                found.append(kid)
    return found


def test_killed_ray_worker_ends_the_run_with_one_line_and_resume_advice(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        command(
            run,
            "trainer.backend=ray",
            "trainer.n_gpus_per_node=2",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
            "trainer.total_training_steps=200",
            "trainer.save_freq=1",
            "trainer.max_actor_ckpt_to_keep=1",
        ),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(run.glob("checkpoints/global_step_*/COMPLETE")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.5)
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr[-3000:]
    (line,) = error_lines(stderr)
    assert f"(pid {workers[-1]}) died during" in line and "worker rank " in line, line
    assert "Worker exit type: SYSTEM_ERROR" in line and "Some common causes" not in line, line
    assert "last complete checkpoint: step " in line and "trainer.resume_mode=auto" in line, line
    assert f"trainer.default_local_dir={run}" in line
    assert "Traceback" not in stderr, stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# trainer/main.py: only the project's own error types become one line


@pytest.mark.parametrize("error,code", [("data", 2), ("reward", 1)])
def test_main_prints_user_errors_as_one_line(monkeypatch, capsys, error, code):
    from mopd.common.errors import DataError, RewardError
    from trainer import config_schema, main

    exc = (
        DataError("data.train_files: x.parquet has no rows") if error == "data" else RewardError("every reward failed")
    )

    def fail(cfg):
        raise exc

    monkeypatch.setattr(config_schema, "validate_config", fail)
    with pytest.raises(SystemExit) as info:
        main.run({})
    assert info.value.code == code
    assert capsys.readouterr().err == f"[mopd] error: {exc}\n"


def test_main_keeps_the_traceback_of_a_programming_error(monkeypatch):
    from trainer import config_schema, main

    def bug(cfg):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(config_schema, "validate_config", bug)
    with pytest.raises(ValueError, match="internal bug"):
        main.run({})


# ----------------------------------------------------------------------------------------------
# The fault table of issue 22: a full disk, a corrupt checkpoint, a model that has died (preemption and
# Ctrl-C: tests/trainer/test_preemption.py)


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MB tmpfs: a checkpoint of the embedded default (16.8 MB) cannot fit. Needs root (mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({made.stderr.strip()}); the stand-in ENOSPC test covers the writer "
            "(tests/trainer/test_checkpoint_verify.py)"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_with_one_line_and_no_partial_checkpoint(small_disk):
    run = small_disk / "run"
    result = train(run, "trainer.backend=local", "trainer.total_training_steps=4", "trainer.save_freq=2")
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    root = run / "checkpoints"
    assert line.startswith(
        f"[mopd] error: checkpoint step 2 could not be written to {root}: no space left on the device ("
    ), line
    free_mb = float(line.split("device (")[1].split(" MB free")[0])
    assert 5 < free_mb <= 10.5, line  # what is left once the partial directory is removed
    assert "it needs 16.3 MB (estimated from the model's parameters)" in line
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "the checkpoint needs about 16.3 MB" in result.stderr  # warned before writing
    assert sorted(p.name for p in root.iterdir()) == []  # the partial directory is gone
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # step 2 is not logged as done


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = tmp_path / "run"
    common = ("trainer.backend=local", "trainer.save_freq=2", "trainer.max_actor_ckpt_to_keep=3")
    assert train(run, *common, "trainer.total_training_steps=4").returncode == 0
    shard = run / "checkpoints" / "global_step_4" / "sharded" / "__0_0.distcp"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    result = train(run, *common, "trainer.total_training_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if "is corrupt" in x]
    assert line == (
        f"[mopd] checkpoint {shard.parents[1]} is corrupt: {shard}: {size // 2} bytes, the manifest says "
        f"{size} (truncated or rewritten); resuming from {run / 'checkpoints' / 'global_step_2'}, the "
        "newest checkpoint that verifies (the corrupt one stays on disk for inspection)"
    )
    assert f"resumed from {run / 'checkpoints' / 'global_step_2'} at step 2" in result.stdout
    assert "Traceback" not in result.stderr

    # resume_path to a corrupt checkpoint: one line, nothing trained
    os.truncate(run / "checkpoints" / "global_step_6" / "driver_state.pt", 10)
    bad = train(
        run,
        *common,
        "trainer.total_training_steps=8",
        "trainer.resume_mode=resume_path",
        f"trainer.resume_from_path={run / 'checkpoints' / 'global_step_6'}",
    )
    assert bad.returncode == 1, bad.stderr[-3000:]
    (line,) = error_lines(bad.stderr)
    assert "trainer.resume_from_path: checkpoint" in line and "global_step_6/driver_state.pt: 10 bytes" in line


def test_a_learning_rate_that_destroys_the_model_stops_the_run(tmp_path):
    run = tmp_path / "run"
    result = train(
        run,
        "trainer.backend=local",
        "trainer.total_training_steps=30",
        "trainer.save_freq=2",
        "actor_rollout_ref.actor.optim.lr=1e6",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "optimizer updates were all skipped" in line and "trainer.max_consecutive_skipped_updates=5" in line
    assert "actor_rollout_ref.actor.optim.lr (now 1e+06)" in line
    assert result.stderr.count("skipped 1 optimizer update(s): non-finite") == 1  # the first, once
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["actor/skipped_updates"] for r in rows]
    assert skipped[-5:] == [1.0] * 5 and len(rows) < 30  # stopped five skips after the first
    first_skip = skipped.index(1.0) + 1
    kept = CheckpointManager(run / "checkpoints").complete_steps()
    assert kept and max(kept) < first_skip  # no checkpoint of the dead model's later steps
