"""Atomic writes and CheckpointManager: commit, prune, latest, resume modes, crash safety."""

import os

import pytest
import torch

from mopd.common.io import atomic_write_bytes, atomic_write_text
from trainer.checkpoint import (
    COMPLETE_MARKER,
    TRACKER_FILE,
    CheckpointManager,
    atomic_torch_save,
)


def save(manager, step, payload="weights"):
    tmp = manager.begin(step)
    (tmp / "model.txt").write_text(f"{payload}-{step}")
    return manager.commit(step, tmp)


def visible(root):
    return sorted(p.name for p in root.iterdir())


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_replaces_content_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert visible(tmp_path) == ["file.txt"]


def test_atomic_write_bytes_creates_parents_and_uses_umask_mode(tmp_path):
    target = tmp_path / "a" / "b.bin"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_atomic_write_failure_keeps_old_file_and_cleans_temp(tmp_path):
    target = tmp_path / "state.pt"
    atomic_torch_save({"x": torch.arange(3)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target)["x"], torch.arange(3))
    assert visible(tmp_path) == ["state.pt"]


# ----------------------------------------------------------------------------- manager


def test_begin_makes_hidden_temp_dir_and_commit_publishes(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", max_to_keep=None)
    tmp = manager.begin(5)
    assert tmp.parent == manager.root and tmp.name.startswith(".tmp_global_step_5_")
    assert manager.complete_steps() == [] and manager.latest() is None

    (tmp / "model.txt").write_text("w")
    final = manager.commit(5, tmp)
    assert final == manager.step_dir(5) == manager.root / "global_step_5"
    assert (final / COMPLETE_MARKER).is_file() and (final / "model.txt").read_text() == "w"
    assert not tmp.exists()
    assert (manager.root / TRACKER_FILE).read_text().strip() == "5"
    assert manager.latest() == (5, final)
    assert CheckpointManager.step_from_path(final) == 5
    assert visible(manager.root) == ["global_step_5", TRACKER_FILE]


def test_commit_prunes_oldest_beyond_max_to_keep(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    for step in (1, 2, 3, 4):
        save(manager, step)
    assert manager.complete_steps() == [3, 4]
    assert visible(tmp_path) == ["global_step_3", "global_step_4", TRACKER_FILE]


@pytest.mark.parametrize("max_to_keep", [None, 0, -1])
def test_max_to_keep_none_or_nonpositive_keeps_all(tmp_path, max_to_keep):
    manager = CheckpointManager(tmp_path, max_to_keep=max_to_keep)
    for step in (1, 2, 3):
        save(manager, step)
    assert manager.complete_steps() == [1, 2, 3]


def test_recommit_same_step_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=3)
    save(manager, 2, payload="first")
    final = save(manager, 2, payload="second")
    assert (final / "model.txt").read_text() == "second-2"
    assert manager.complete_steps() == [2]
    assert visible(tmp_path) == ["global_step_2", TRACKER_FILE]


def test_just_committed_older_step_survives_pruning(tmp_path):
    # Resumed from step 1 while steps 2 and 3 exist: the new step-2 save must not be pruned.
    manager = CheckpointManager(tmp_path, max_to_keep=1)
    keep_all = CheckpointManager(tmp_path, max_to_keep=None)
    for step in (1, 2, 3):
        save(keep_all, step)
    save(manager, 2)
    assert manager.complete_steps() == [2]
    assert manager.latest() == (2, manager.step_dir(2))


def test_crash_before_commit_keeps_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=1)
    prev = save(manager, 10)
    tmp = manager.begin(20)  # the process "dies" while writing step 20
    (tmp / "model.txt").write_text("half-writ")
    (tmp / COMPLETE_MARKER).write_text("20")  # even a stray marker in a temp dir is not trusted

    restarted = CheckpointManager(tmp_path, max_to_keep=1)
    assert restarted.latest() == (10, prev)
    assert restarted.complete_steps() == [10]
    assert restarted.resolve_resume("auto", None) == prev
    assert (prev / "model.txt").read_text() == "weights-10"

    # The retry of step 20 clears the stale temp dir and then prunes step 10.
    retry = restarted.begin(20)
    assert not tmp.exists()
    (retry / "model.txt").write_text("done")
    restarted.commit(20, retry)
    assert visible(tmp_path) == ["global_step_20", TRACKER_FILE]


def test_dir_without_complete_marker_is_ignored(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    save(manager, 1)
    (tmp_path / "global_step_9").mkdir()  # e.g. written by a crashed run of older code
    assert manager.complete_steps() == [1]
    assert manager.latest()[0] == 1


def test_latest_prefers_tracker_else_highest_complete(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    for step in (1, 2, 3):
        save(manager, step)
    (tmp_path / TRACKER_FILE).write_text("2\n")
    assert manager.latest() == (2, manager.step_dir(2))
    (tmp_path / TRACKER_FILE).write_text("7\n")  # points to a missing dir
    assert manager.latest() == (3, manager.step_dir(3))
    (tmp_path / TRACKER_FILE).write_text("garbage")
    assert manager.latest() == (3, manager.step_dir(3))
    (tmp_path / TRACKER_FILE).unlink()
    assert manager.latest() == (3, manager.step_dir(3))


def test_latest_on_missing_root_is_none(tmp_path):
    manager = CheckpointManager(tmp_path / "nope", max_to_keep=2)
    assert manager.latest() is None and manager.complete_steps() == []
    assert manager.resolve_resume("auto", None) is None


def test_abort_removes_temp_dir_and_refuses_other_paths(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    final = save(manager, 1)
    tmp = manager.begin(2)
    (tmp / "x").write_text("x")
    manager.abort(tmp)
    assert not tmp.exists()
    manager.abort(tmp)  # already gone: no-op
    with pytest.raises(ValueError, match="not a checkpoint temp dir"):
        manager.abort(final)
    with pytest.raises(ValueError, match="not a checkpoint temp dir"):
        manager.commit(1, final)
    assert manager.latest() == (1, final)


def test_resolve_resume_modes(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", max_to_keep=None)
    assert manager.resolve_resume("auto", None) is None
    first = save(manager, 1)
    second = save(manager, 2)
    assert manager.resolve_resume("disable", str(first)) is None
    assert manager.resolve_resume("auto", None) == second
    assert manager.resolve_resume("resume_path", str(first)) == first


def test_resolve_resume_path_errors_name_the_field(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    missing = tmp_path / "global_step_3"
    with pytest.raises(ValueError, match="trainer.resume_from_path") as err:
        manager.resolve_resume("resume_path", str(missing))
    assert str(missing) in str(err.value)

    tmp = manager.begin(4)
    half = tmp_path / "global_step_4"
    os.replace(tmp, half)  # a dir that exists but never got the marker
    with pytest.raises(ValueError, match="trainer.resume_from_path") as err:
        manager.resolve_resume("resume_path", str(half))
    assert str(half) in str(err.value) and COMPLETE_MARKER in str(err.value)

    with pytest.raises(ValueError, match="trainer.resume_from_path"):
        manager.resolve_resume("resume_path", None)


def test_resolve_resume_unknown_mode(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=None)
    with pytest.raises(ValueError, match="trainer.resume_mode") as err:
        manager.resolve_resume("latest", None)
    assert "['auto', 'disable', 'resume_path']" in str(err.value)


def test_torch_state_round_trip_through_commit(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    tmp = manager.begin(7)
    state = {"weight": torch.randn(4, 3), "step": 7}
    atomic_torch_save(state, tmp / "model.pt")
    final = manager.commit(7, tmp)
    loaded = torch.load(manager.resolve_resume("auto", None) / "model.pt")
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["step"] == 7
    assert final.name == "global_step_7"
