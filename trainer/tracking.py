"""Experiment tracking: one `log(metrics, step)` call fans out to every logger in `trainer.logger`.

Loggers:
  console      a tqdm bar over the training steps (stderr) and one compact line per step (stdout)
               with a few headline metrics, 4 significant digits.
  jsonl        `{log_dir}/metrics.jsonl`, one `{"step": step, **metrics}` object per `log()` call,
               flushed per line. Strict JSON: non-finite floats (nan/inf) are written as `null` so
               every line parses with any JSON reader (jq, pandas, json.loads).
  tensorboard  `{log_dir}/tensorboard`, one scalar per numeric metric.
  wandb        `wandb.init(dir=log_dir)`; offline unless WANDB_API_KEY is set, an explicit
               WANDB_MODE always wins. Offline runs can be uploaded later with `wandb sync`.

The run config (when given) is written once, atomically, to `{log_dir}/config.json`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mopd.common.io import atomic_write_text
from trainer.disk_space import raise_if_disk_full

__all__ = ["ALLOWED_LOGGERS", "Tracking", "wandb_mode", "format_console_line"]

ALLOWED_LOGGERS = ("console", "jsonl", "tensorboard", "wandb")

# Metrics shown on the per-step console line, in this order, when present. Each tuple is a group
# of alternatives (first present wins); "val-core/" is a prefix (all such keys, up to 3).
_SCORE_KEYS = ("critic/score/mean", "critic/rewards/mean", "reward/mean")
_LOSS_KEYS = ("actor/loss", "actor/pg_loss")
_VAL_PREFIX = "val-core/"
_MAX_VAL_KEYS = 3
_TAIL_KEYS = ("timing_s/step", "perf/throughput")
_FALLBACK_KEYS = 4  # when no headline metric is present, show the first few numeric ones
_NON_TTY_MININTERVAL_S = 30.0  # bar refresh period when stderr goes to a log file


def wandb_mode() -> str:
    """WANDB_MODE if set; else "online" when WANDB_API_KEY is set; else "offline"."""
    explicit = os.environ.get("WANDB_MODE", "").strip()
    if explicit:
        return explicit
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _scalar(value: Any) -> Any:
    """Python int/float for numbers (incl. numpy scalars and 1-element tensors); else unchanged."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()
        except (ValueError, RuntimeError):  # multi-element array/tensor: not a scalar
            return value
        return int(value) if isinstance(value, bool) else value
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_console_line(metrics: Mapping[str, Any], step: int, total_steps: int | None) -> str:
    """`step 3/10 | critic/score/mean=0.4375 | actor/loss=0.01234 | timing_s/step=1.5`."""
    numeric = {k: v for k, v in metrics.items() if _is_number(v)}
    shown: list[str] = []
    for group in (_SCORE_KEYS, _LOSS_KEYS):
        key = next((k for k in group if k in numeric), None)
        if key is not None:
            shown.append(key)
    shown += [k for k in numeric if k.startswith(_VAL_PREFIX)][:_MAX_VAL_KEYS]
    shown += [k for k in _TAIL_KEYS if k in numeric]
    if not shown:
        shown = list(numeric)[:_FALLBACK_KEYS]
    head = f"step {step}" if total_steps is None else f"step {step}/{total_steps}"
    return " | ".join([head] + [f"{k}={_fmt(numeric[k])}" for k in shown])


class Tracking:
    """Log metrics to the configured loggers. Close it (or use `with`) so files and runs finish."""

    def __init__(
        self,
        project: str,
        experiment: str,
        loggers: Sequence[str] | str,
        config: Mapping[str, Any] | None,
        log_dir: str | os.PathLike,
        total_steps: int | None = None,
    ):
        self.project = project
        self.experiment = experiment
        self.loggers = self._validate_loggers(loggers)
        self.log_dir = Path(log_dir)
        self.total_steps = total_steps
        self._closed = False
        self._jsonl = None
        self._tb = None
        self._wandb_run = None
        self._bar_on_tty = False
        self._bar = None
        self._bar_started = False

        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self._plain_config(config)
        try:
            if config is not None:
                atomic_write_text(self.log_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")
            if "jsonl" in self.loggers:
                self._jsonl = open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8")
            if "tensorboard" in self.loggers:
                self._tb = self._open_tensorboard()
            if "wandb" in self.loggers:
                self._wandb_run = self._open_wandb(config)
            if "console" in self.loggers:
                self._bar = self._progress_bar()  # now, so the first step's time counts
        except BaseException:
            self.close()
            raise

    # -- setup

    @staticmethod
    def _validate_loggers(loggers: Sequence[str] | str) -> list[str]:
        if isinstance(loggers, str):
            loggers = [loggers]
        result: list[str] = []
        for name in loggers:
            if name not in ALLOWED_LOGGERS:
                raise ValueError(f"trainer.logger: unknown logger {name!r}; allowed: {list(ALLOWED_LOGGERS)}")
            if name not in result:
                result.append(name)
        return result

    @staticmethod
    def _plain_config(config: Any) -> dict | None:
        if config is None:
            return None
        try:  # OmegaConf DictConfig from Hydra -> plain, resolved dict
            from omegaconf import DictConfig, OmegaConf

            if isinstance(config, DictConfig):
                return OmegaConf.to_container(config, resolve=True)
        except ImportError:
            pass
        return dict(config)

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "trainer.logger includes 'tensorboard' but the tensorboard package is not installed; "
                "run `pip install tensorboard` or remove 'tensorboard' from trainer.logger"
            ) from err
        return SummaryWriter(log_dir=str(self.log_dir / "tensorboard"))

    def _open_wandb(self, config: dict | None):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "trainer.logger includes 'wandb' but the wandb package is not installed; "
                "run `pip install wandb` or remove 'wandb' from trainer.logger"
            ) from err
        mode = wandb_mode()
        kwargs = dict(project=self.project, name=self.experiment, config=config, dir=str(self.log_dir))
        if mode != "online":
            return wandb.init(mode=mode, **kwargs)
        # Online: bounded wait, then keep training with an offline run rather than crash or hang.
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=60), **kwargs)
        except Exception as err:  # wandb raises several types (CommError, UsageError, timeouts)
            warnings.warn(
                f"wandb online init failed ({type(err).__name__}: {err}); logging offline to "
                f"{self.log_dir}/wandb instead; upload later with `wandb sync`",
                RuntimeWarning,
                stacklevel=3,
            )
            return wandb.init(mode="offline", **kwargs)

    def _progress_bar(self):
        from tqdm import tqdm

        is_tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._bar_on_tty = is_tty
        return tqdm(
            total=self.total_steps,
            desc=self.experiment or "train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=is_tty,
            ncols=None if is_tty else 100,
            ascii=not is_tty,
            mininterval=0.1 if is_tty else _NON_TTY_MININTERVAL_S,
        )

    # -- logging

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record `metrics` at `step` in every logger. Non-numeric values only reach jsonl/wandb."""
        if self._closed:
            raise RuntimeError("Tracking.log() called after close()")
        step = int(step)
        if "step" in metrics:
            raise ValueError("metric name 'step' is reserved (the jsonl record uses it for the step)")
        values = {str(k): _scalar(v) for k, v in metrics.items()}

        if self._jsonl is not None:
            record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
            try:
                self._jsonl.write(json.dumps(record, allow_nan=False, default=str) + "\n")
                self._jsonl.flush()
            except OSError as err:  # a full disk: one line naming the file, not a traceback
                raise_if_disk_full(err, f"metrics of step {step}", self.log_dir / "metrics.jsonl")
                raise
        if self._tb is not None:
            for key, value in values.items():
                if _is_number(value):
                    self._tb.add_scalar(key, value, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)
        if "console" in self.loggers:
            self._log_console(values, step)

    def _log_console(self, values: dict[str, Any], step: int) -> None:
        from tqdm import tqdm

        bar = self._bar
        if not self._bar_started and step > 1:
            # First log of a resumed run: start the bar at the previous step so elapsed time and
            # rate cover only the steps run by this process.
            bar.initial = bar.n = bar.last_print_n = step - 1
        self._bar_started = True
        if step > bar.n:
            bar.update(step - bar.n)
        line = format_console_line(values, step, self.total_steps)
        if self._bar_on_tty:
            tqdm.write(line, file=sys.stdout)  # clears and redraws the bar around the line
        else:
            # Bar and lines go to files/pipes: a tqdm.write would redraw the bar every step.
            print(line, file=sys.stdout, flush=True)

    # -- shutdown

    def close(self) -> None:
        """Flush and close every logger; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for closer in (self._close_bar, self._close_jsonl, self._close_tb, self._close_wandb):
            try:
                closer()
            except Exception as err:  # close the rest before reporting
                errors.append(err)
        if errors:
            raise errors[0]

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _close_jsonl(self):
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def _close_tb(self):
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    def _close_wandb(self):
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            run.finish()

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
