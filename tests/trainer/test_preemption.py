"""Preemption as a scheduler does it, on the embedded default (``trainer.backend=local``): SIGTERM/SIGUSR1 at a
random moment -> a checkpoint of the finished step, one line, exit 75 -> the same command resumes and ends
with bit-identical weights; a second signal, the grace deadline or Ctrl-C stop at once, keeping the last
complete checkpoint."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mopd.common.errors import EXIT_PREEMPTED
from tests.trainer.test_faults import ROOT, command, env, train
from trainer.checkpoint import CheckpointManager
from trainer.checkpoint_verify import verify

STEPS = ("trainer.backend=local", "trainer.total_training_steps=8", "trainer.save_freq=4")


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    # SIGINT back to its default in the child: a test runner started in the background ignores it, and Python
    # only turns SIGINT into KeyboardInterrupt when it is not ignored at start.
    return subprocess.Popen(
        command(run_dir, *overrides),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{what} never happened (rc {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def hf_weights(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"global_step_{step}" / "hf" / "model.safetensors"))


def mopd_lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    result = train(run, *STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_at_a_random_moment_checkpoints_and_the_rerun_resumes_bit_identically(straight_run, tmp_path, sig):
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 0.4)
    run = tmp_path / "run"
    proc = start(run, *STEPS)
    try:
        wait_for(proc, lambda: steps_logged(run) >= 1, "a first step")
        time.sleep(delay)  # anywhere in a later step: generation, update, save
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    context = f"(seed {seed}, delay {delay:.3f} s)\n{stderr[-3000:]}"
    assert proc.returncode == EXIT_PREEMPTED, context
    (line,) = mopd_lines(stderr, "[mopd] stopped by")
    step = int(line.split("after step ")[1].split(";")[0])
    assert 1 <= step < 8, context
    where = run / "checkpoints" / f"global_step_{step}"
    assert line == (
        f"[mopd] stopped by {sig.name} after step {step}; checkpoint written: {where}; the same command resumes"
    ), context
    assert verify(where) and steps_logged(run) == step  # every step done is logged and checkpointed
    assert "Traceback" not in stderr, context

    resumed = train(run, *STEPS)  # the requeued job: the very same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {where} at step {step}" in resumed.stdout
    a, b = hf_weights(straight_run, 8), hf_weights(run, 8)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming from step {step} {context}"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["second-signal", "grace-deadline", "ctrl-c"])
def test_a_stop_at_once_keeps_the_last_complete_checkpoint(tmp_path, how):
    run = tmp_path / "run"
    grace = ["trainer.preemption_grace_s=0.001"] if how == "grace-deadline" else []
    # 8 optimizer updates a step for the second signal: a step outlasts the moment between the two
    epochs = ["actor_rollout_ref.actor.ppo_epochs=8"] if how == "second-signal" else []
    proc = start(
        run, "trainer.backend=local", "trainer.total_training_steps=200", "trainer.save_freq=2", *epochs, *grace
    )
    try:
        wait_for(proc, lambda: steps_logged(run) >= 3, "three steps")
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
            if how == "second-signal":  # once the first is handled: two pending SIGTERMs would merge into one
                while "SIGTERM received" not in proc.stdout.readline():
                    pass
                proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    expected_rc = {"second-signal": 143, "grace-deadline": 143, "ctrl-c": 130}[how]
    assert proc.returncode == expected_rc, stderr[-3000:]
    first = {
        "second-signal": "[mopd] stopped at once by a second signal (SIGTERM after SIGTERM) during step ",
        "grace-deadline": "[mopd] stopped at once: trainer.preemption_grace_s=0.001 s passed since SIGTERM",
        "ctrl-c": "[mopd] interrupted (Ctrl-C) during step ",
    }[how]
    (line,) = mopd_lines(stderr, first)
    manager = CheckpointManager(run / "checkpoints")
    latest_step, latest = manager.latest()
    assert f"last complete checkpoint: step {latest_step} at {latest}; resume: rerun the same command" in line
    assert verify(latest)
    assert not [p.name for p in manager.root.iterdir() if p.name.startswith(".")]  # no partial save left
    assert "Traceback" not in stderr, stderr[-3000:]
