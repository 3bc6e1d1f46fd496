"""Verified checkpoints (manifest, fallback on resume), the checkpoint writer's full-disk handling, and the
skipped-update guard: the units behind the fault rows of tests/trainer/test_faults.py."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from mopd.common.errors import CheckpointError, TrainingDivergedError
from trainer import checkpoint_verify
from trainer.checkpoint import CheckpointManager
from trainer.checkpoint_save import CheckpointWriter
from trainer.checkpoint_verify import MANIFEST_FILE, CheckpointCorrupt, verify
from trainer.update_guard import SkippedUpdateGuard
from workers import update_health


def save(manager, step, size=1000):
    tmp = manager.begin(step)
    (tmp / "sharded").mkdir()
    (tmp / "sharded" / "__0_0.distcp").write_bytes(bytes(range(256)) * (size // 256 + 1))
    (tmp / "driver_state.pt").write_text(f"state-{step}")
    return manager.commit(step, tmp)


# ----------------------------------------------------------------------------- manifest


def test_commit_writes_a_manifest_that_verifies_and_lists_every_file(tmp_path):
    final = save(CheckpointManager(tmp_path), 3)
    manifest = json.loads((final / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"sharded/__0_0.distcp", "driver_state.pt"}
    assert manifest["total_bytes"] == sum(e["size"] for e in manifest["files"].values())
    assert verify(final) is True


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_verify_names_the_damaged_file(tmp_path, damage):
    final = save(CheckpointManager(tmp_path), 3)
    shard = final / "sharded" / "__0_0.distcp"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[:100])
    elif damage == "flip":
        shard.write_bytes(data[:500] + bytes([data[500] ^ 1]) + data[501:])
    else:
        shard.unlink()
    with pytest.raises(CheckpointCorrupt) as err:
        verify(final)
    assert err.value.path == shard
    expected = {
        "truncate": f"100 bytes, the manifest says {len(data)}",
        "flip": "CRC-32 mismatch",
        "delete": "missing",
    }[damage]
    assert expected in str(err.value)


def test_large_files_are_checked_by_size_and_sampled_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_verify, "FULL_CRC_MAX_BYTES", 4096)
    monkeypatch.setattr(checkpoint_verify, "BLOCK_BYTES", 256)
    final = save(CheckpointManager(tmp_path), 1, size=64 * 1024)
    entry = json.loads((final / MANIFEST_FILE).read_text())["files"]["sharded/__0_0.distcp"]
    assert entry["sampled"] is True
    shard = final / "sharded" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last block is always sampled (where a DCP/safetensors footer would be)
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="CRC-32 mismatch"):
        verify(final)


def test_a_checkpoint_without_manifest_is_accepted_unverified(tmp_path):
    final = save(CheckpointManager(tmp_path), 2)
    (final / MANIFEST_FILE).unlink()  # written before manifests existed
    assert verify(final) is False
    assert CheckpointManager(tmp_path).resolve_resume("auto", None) == final


# ----------------------------------------------------------------------------- resume


def test_auto_resume_skips_a_corrupt_newest_checkpoint_with_one_line(tmp_path):
    manager = CheckpointManager(tmp_path)
    good = save(manager, 2)
    newest = save(manager, 4)
    (newest / "sharded" / "__0_0.distcp").write_bytes(b"x")
    lines = []
    assert manager.resolve_resume("auto", None, warn=lines.append) == good
    (line,) = lines
    assert str(newest / "sharded" / "__0_0.distcp") in line and "is corrupt" in line
    assert f"resuming from {good}, the newest checkpoint that verifies" in line
    assert newest.is_dir()  # kept for inspection, nothing deleted


def test_auto_resume_stops_when_no_checkpoint_verifies(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (1, 2):
        (save(manager, step) / "driver_state.pt").write_text("altered!")
    lines = []
    with pytest.raises(CheckpointError, match="no checkpoint under .* verifies") as err:
        manager.resolve_resume("auto", None, warn=lines.append)
    assert "global_step_2/driver_state.pt" in str(err.value)
    assert len(lines) == 1 and "global_step_1/driver_state.pt" in lines[0]


def test_resume_path_to_a_corrupt_checkpoint_stops_naming_the_file(tmp_path):
    manager = CheckpointManager(tmp_path)
    bad = save(manager, 5)
    (bad / "driver_state.pt").write_text("")
    with pytest.raises(CheckpointError) as err:
        manager.resolve_resume("resume_path", str(bad))
    assert "trainer.resume_from_path" in str(err.value) and str(bad / "driver_state.pt") in str(err.value)


def test_pruning_keeps_the_newly_verified_checkpoint_and_a_failed_verification_prunes_nothing(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, max_to_keep=1)
    first = save(manager, 1)

    def lose_a_write(directory):
        (directory / "driver_state.pt").write_text("lost")  # the filesystem changed it after the manifest
        return checkpoint_verify.verify(directory)

    import trainer.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "verify", lose_a_write)
    tmp = manager.begin(2)
    (tmp / "driver_state.pt").write_text("state-2")
    with pytest.raises(CheckpointCorrupt):
        manager.commit(2, tmp)
    monkeypatch.undo()
    assert manager.complete_steps() == [1] and verify(first)  # the older, verified one survives


# ----------------------------------------------------------------------------- full disk (a stand-in ENOSPC)


def test_a_write_failing_on_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", max_to_keep=1)
    writer = CheckpointWriter(manager, estimated_bytes=10)
    first = writer.save(1, lambda tmp: (tmp / "w.bin").write_bytes(b"0" * 5000))

    def fill_the_disk(tmp):
        (tmp / "w.bin").write_bytes(b"0" * 100)
        raise RuntimeError("writer failed") from OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError) as err:
        writer.save(2, fill_the_disk)
    message = str(err.value)
    assert message.startswith(f"checkpoint step 2 could not be written to {manager.root}: no space left")
    assert "MB free, it needs 0.0 MB (measured from step 1)" in message
    assert manager.complete_steps() == [1] and verify(first)
    assert sorted(p.name for p in manager.root.iterdir()) == ["global_step_1", "latest_checkpointed_iteration.txt"]


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing_and_warned_about_early(tmp_path, monkeypatch, capsys):
    from trainer import checkpoint_save

    manager = CheckpointManager(tmp_path / "ckpt")
    writer = CheckpointWriter(manager, estimated_bytes=None)
    monkeypatch.setattr(checkpoint_save, "free_bytes", lambda path: 3000)  # 3 kB left after the first save
    writer.save(1, lambda tmp: (tmp / "w.bin").write_bytes(b"0" * 4000))
    assert "the next checkpoint will not fit" in capsys.readouterr().err
    written = []
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint step 2 could not be written .* it needs 0\.0 MB "
        r"\(measured from step 1\)",
    ):
        writer.save(2, written.append)
    assert written == [] and manager.complete_steps() == [1]


def test_an_error_on_a_roomy_disk_is_not_called_a_full_disk(tmp_path):
    manager = CheckpointManager(tmp_path)
    writer = CheckpointWriter(manager, estimated_bytes=10)

    def bug(tmp):
        raise ValueError("a bug in a writer")

    with pytest.raises(ValueError, match="a bug in a writer"):
        writer.save(1, bug)
    assert list(tmp_path.iterdir()) == []  # the partial directory is gone


# ----------------------------------------------------------------------------- skipped updates


def test_skip_causes_and_the_weight_check():
    cpu = torch.device("cpu")
    assert update_health.skip_cause(0.5, 1.0, cpu, 1) is None
    assert update_health.skip_cause(float("nan"), 1.0, cpu, 1) == update_health.NONFINITE_LOSS
    assert update_health.skip_cause(0.5, float("inf"), cpu, 1) == update_health.NONFINITE_GRAD_NORM
    module = torch.nn.Linear(3, 2)
    assert update_health.weights_finite(module, cpu, 1)
    with torch.no_grad():
        module.weight.fill_(3e38)  # huge but finite: the max-abs check does not overflow
    assert update_health.weights_finite(module, cpu, 1)
    with torch.no_grad():
        module.bias[1] = float("nan")
    assert not update_health.weights_finite(module, cpu, 1)


def test_guard_counts_consecutive_skips_and_stops(capsys):
    guard = SkippedUpdateGuard(max_consecutive=3, lr=1e6)

    def latest():
        return 2, "/ckpt/global_step_2"

    def step(n, causes):
        guard.after_update(n, causes)
        guard.stop_if_dead(n, latest)

    step(1, [[]])
    assert guard.may_save(1)
    step(2, [["non-finite loss", "non-finite loss"]])
    assert capsys.readouterr().err.count("skipped 2 optimizer update(s): non-finite loss") == 1
    assert not guard.may_save(2)
    assert "checkpoint of step 2 not written" in capsys.readouterr().err
    step(3, [[]])  # an applied update resets the run of skips
    assert guard.consecutive == 0 and guard.may_save(3)
    step(4, [["non-finite gradient norm"]])
    step(5, [["non-finite gradient norm"]])
    assert "optimizer update(s)" not in capsys.readouterr().err  # the first skip is shown once per run
    with pytest.raises(TrainingDivergedError) as err:
        step(6, [["non-finite gradient norm"]])
    assert "the last 3 optimizer updates were all skipped" in str(err.value)
    assert "latest: non-finite gradient norm" in str(err.value)
    assert "optim.lr (now 1e+06)" in str(err.value) and "/ckpt/global_step_2" in str(err.value)


def test_guard_stops_at_once_on_non_finite_weights_from_any_rank():
    guard = SkippedUpdateGuard(max_consecutive=None, lr=1e-3)
    guard.after_update(1, [["non-finite gradient norm"]] * 2)  # no limit: keeps going
    guard.stop_if_dead(1, lambda: None)
    guard.after_update(2, [[], [update_health.NONFINITE_WEIGHTS]])
    assert not guard.may_save(2)
    with pytest.raises(TrainingDivergedError, match="non-finite after the optimizer step of step 2"):
        guard.stop_if_dead(2, lambda: None)


# ----------------------------------------------------------------------------- the preemption handler in-process


def test_preemption_handler_flags_the_first_signal_and_stops_at_once_on_the_second(capsys):
    import os
    import signal

    from trainer.preemption import PreemptionHandler, StopNow, stop_in

    before = signal.getsignal(signal.SIGUSR1)
    handler = PreemptionHandler(grace_s=None).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested and handler.signal_name == "SIGUSR1"
        assert "SIGUSR1 received: finishing this step" in capsys.readouterr().out
        with pytest.raises(StopNow) as err:
            with handler.critical():  # the stop waits for the critical section to end
                os.kill(os.getpid(), signal.SIGTERM)
                finished_publishing = True
        assert finished_publishing and err.value.exit_code == 128 + signal.SIGTERM
        assert "second signal (SIGTERM after SIGUSR1)" in str(err.value)
        wrapped = RuntimeError("a library wrapped it")
        wrapped.__context__ = err.value
        assert stop_in(wrapped) is err.value and stop_in(RuntimeError("no")) is None
    finally:
        handler.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_rollout_dump_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from trainer import rollout_io

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rollout_io, "write_jsonl", full)
    with pytest.raises(CheckpointError) as err:
        rollout_io._write(tmp_path / "rollouts" / "3.jsonl", iter([]))
    assert str(err.value).startswith(
        f"rollout dump could not be written to {tmp_path / 'rollouts' / '3.jsonl'}: no space left on the device ("
    )
    monkeypatch.setattr(rollout_io, "write_jsonl", lambda path, rows: (_ for _ in ()).throw(PermissionError(13, "no")))
    with pytest.raises(PermissionError):  # not a full disk: the error itself
        rollout_io._write(tmp_path / "r.jsonl", iter([]))
