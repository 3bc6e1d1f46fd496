"""Tracking: jsonl, tensorboard, wandb (offline), console, config.json and logger validation."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.tracking import Tracking, format_console_line, wandb_mode

CONFIG = {"trainer": {"total_epochs": 1}, "actor_rollout_ref": {"actor": {"optim": {"lr": 1e-6}}}}


def metrics_for(step):
    return {
        "critic/score/mean": 0.25 * step,
        "actor/loss": 1.0 / (step + 2),
        "timing_s/step": 1.23456789,
        "perf/throughput": np.float32(100.5),
        "actor/entropy": torch.tensor(2.0 + step),
    }


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_parse_and_config_json_written(tmp_path):
    with Tracking("proj", "exp", ["jsonl"], CONFIG, str(tmp_path)) as tracker:
        for step in (1, 2, 3):
            tracker.log(metrics_for(step), step=step)
        tracker.log({"val-core/task/acc/mean@4": float("nan"), "flag": True, "inf": float("inf")}, step=3)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    assert rows[1]["critic/score/mean"] == 0.5 and isinstance(rows[1]["actor/loss"], float)
    assert rows[0]["perf/throughput"] == 100.5 and rows[0]["actor/entropy"] == 3.0  # numpy/torch scalars
    assert rows[3] == {"step": 3, "val-core/task/acc/mean@4": None, "flag": 1, "inf": None}
    assert json.loads((tmp_path / "config.json").read_text()) == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl"]


def test_jsonl_appends_across_runs_and_no_config_file_without_config(tmp_path):
    for step in (1, 2):
        with Tracking("proj", "exp", "jsonl", None, tmp_path) as tracker:  # single string accepted
            tracker.log({"x": step}, step=step)
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "config.json").exists()


def test_unknown_logger_raises_with_allowed_list(tmp_path):
    with pytest.raises(ValueError) as err:
        Tracking("proj", "exp", ["console", "mlflow"], None, tmp_path)
    assert str(err.value) == (
        "trainer.logger: unknown logger 'mlflow'; allowed: ['console', 'jsonl', 'tensorboard', 'wandb']"
    )


def test_close_is_idempotent_and_log_after_close_fails(tmp_path):
    tracker = Tracking("proj", "exp", ["jsonl", "console"], None, tmp_path, total_steps=2)
    tracker.log({"x": 1.0}, step=1)
    tracker.close()
    tracker.close()
    with pytest.raises(RuntimeError, match="after close"):
        tracker.log({"x": 2.0}, step=2)


def test_reserved_step_metric_name(tmp_path):
    with Tracking("proj", "exp", ["jsonl"], None, tmp_path) as tracker:
        with pytest.raises(ValueError, match="reserved"):
            tracker.log({"step": 1.0}, step=1)


def test_tensorboard_event_file_is_readable(tmp_path):
    with Tracking("proj", "exp", ["tensorboard"], None, tmp_path) as tracker:
        for step in (1, 2, 3):
            tracker.log({**metrics_for(step), "note": "text is skipped by tensorboard"}, step=step)
    tb_dir = tmp_path / "tensorboard"
    events = list(tb_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(tb_dir))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"critic/score/mean", "actor/loss", "perf/throughput", "actor/entropy"} <= set(scalars)
    assert "note" not in scalars
    points = acc.Scalars("critic/score/mean")
    assert [p.step for p in points] == [1, 2, 3]
    assert [p.value for p in points] == pytest.approx([0.25, 0.5, 0.75])


def test_wandb_offline_run_directory_is_created(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with Tracking("proj", "exp", ["wandb"], CONFIG, tmp_path) as tracker:
        run_dir = tracker._wandb_run.dir
        for step in (1, 2):
            tracker.log(metrics_for(step), step=step)
        tracker.log({"loss": float("nan")}, step=3)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0] in Path(run_dir).parents
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1 and records[0].stat().st_size > 0


def test_wandb_mode_selection(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_wandb_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        Tracking("proj", "exp", ["jsonl", "wandb"], None, tmp_path)


def test_console_prints_step_and_headline_metrics(tmp_path, capsys):
    with Tracking("proj", "exp", ["console"], None, tmp_path, total_steps=3) as tracker:
        for step in (1, 2, 3):
            tracker.log(metrics_for(step), step=step)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1] == (
        "step 2/3 | critic/score/mean=0.5 | actor/loss=0.25 | timing_s/step=1.235 | perf/throughput=100.5"
    )
    assert "3/3" in err  # the tqdm bar, on stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_console_line_format():
    metrics = {
        "critic/rewards/mean": 0.123456,
        "actor/pg_loss": -1234567.0,
        "val-core/a/acc/mean@4": 0.5,
        "val-core/b/acc/mean@4": 1 / 3,
        "other": 7,
        "text": "ignored",
    }
    assert format_console_line(metrics, 5, None) == (
        "step 5 | critic/rewards/mean=0.1235 | actor/pg_loss=-1.235e+06 | "
        "val-core/a/acc/mean@4=0.5 | val-core/b/acc/mean@4=0.3333"
    )
    # No headline metric: the first few numeric ones are shown instead.
    assert format_console_line({"a": 1.0, "b": math.pi, "c": "x"}, 1, 10) == "step 1/10 | a=1 | b=3.142"


def test_all_loggers_together(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = ["console", "jsonl", "tensorboard", "wandb", "jsonl"]  # duplicates collapse
    with Tracking("proj", "exp", loggers, CONFIG, tmp_path, total_steps=2) as tracker:
        assert tracker.loggers == ["console", "jsonl", "tensorboard", "wandb"]
        tracker.log(metrics_for(1), step=1)
        tracker.log(metrics_for(2), step=2)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert "step 2/2" in capsys.readouterr().out


def test_console_bar_of_resumed_run_starts_at_previous_step(tmp_path, capsys):
    with Tracking("proj", "exp", ["console"], None, tmp_path, total_steps=10) as tracker:
        tracker.log({"actor/loss": 0.5}, step=6)
        assert (tracker._bar.initial, tracker._bar.n) == (5, 6)  # rate counts this run's steps only
        tracker.log({"actor/loss": 0.4}, step=7)
        assert tracker._bar.n == 7
    assert "step 7/10 | actor/loss=0.4" in capsys.readouterr().out


def test_omegaconf_config_is_resolved_into_config_json(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"a": 2, "b": "${a}", "nested": {"lr": 1e-6}})
    Tracking("proj", "exp", [], cfg, tmp_path).close()
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 2, "b": 2, "nested": {"lr": 1e-6}}


def test_a_full_disk_while_writing_metrics_is_one_line_naming_the_file(tmp_path):
    import errno

    from mopd.common.errors import CheckpointError

    class FullFile:
        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    tracker = Tracking("proj", "exp", ["jsonl"], None, str(tmp_path))
    tracker._jsonl.close()
    tracker._jsonl = FullFile()  # a stand-in filesystem error: the write is what fails on a full disk
    with pytest.raises(CheckpointError) as err:
        tracker.log({"a": 1.0}, step=3)
    message = str(err.value)
    assert "metrics of step 3" in message and str(tmp_path / "metrics.jsonl") in message
    assert "no space left" in message and "\n" not in message
    tracker._jsonl = None
    tracker.close()
