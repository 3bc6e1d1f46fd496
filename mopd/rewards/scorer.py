"""Batch scoring, serial or in a process pool, and the rules that keep bad rewards loud.

A verifier that raises or times out gives its item score 0 and a ``verifier_error`` (with the traceback);
a non-finite score is a failure with score 0 (``apply_nonfinite_rule``, docs/verifiers.md);
``summarize_health`` counts both for the driver's ``reward/*`` metrics.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mopd.rewards.registry import _REGISTRY, compute_score, normalize_result

__all__ = ["RewardScorer", "apply_nonfinite_rule", "summarize_health"]


def _error_result(exc: BaseException, trace: str = "") -> dict:
    message = str(exc)
    return {
        "score": 0.0,
        "acc": 0.0,
        "feedback": "",
        "pred": "",
        "incorrect_format": 0,
        "verifier_error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
        "verifier_traceback": trace or "".join(traceback.format_exception_only(type(exc), exc)),
    }


def apply_nonfinite_rule(result: dict) -> dict:
    """A NaN/inf score is a failed rollout: score (and acc) 0, the original kept as ``nonfinite_score``.

    Why 0 and not dropped: peer selection and GRPO advantages need one number per rollout, and a NaN
    would poison the group's mean (every advantage of the prompt becomes NaN). The driver counts these
    as ``reward/nonfinite_fraction`` and prints the first one, so the rule is never silent.
    """
    score = result["score"]
    if math.isfinite(score):
        return result
    out = dict(result, score=0.0, nonfinite_score=repr(score))
    if not math.isfinite(out["acc"]):
        out["acc"] = 0.0
    return out


def summarize_health(results: Sequence[dict]) -> dict:
    """How many of a batch's results errored or had a non-finite score, and the first of each."""
    errors = [r for r in results if "verifier_error" in r]
    nonfinite = [r for r in results if "nonfinite_score" in r]
    total = max(len(results), 1)
    return {
        "num_errors": len(errors),
        "num_nonfinite": len(nonfinite),
        "error_fraction": len(errors) / total,
        "nonfinite_fraction": len(nonfinite) / total,
        "first_error": errors[0] if errors else None,
        "first_nonfinite": nonfinite[0] if nonfinite else None,
    }


class _Alarm:
    """Per-item timeout by SIGALRM (pool workers run items on their main thread; POSIX only).

    A verifier that itself uses SIGALRM (e.g. math_verify's timeout) cancels this one while it runs.
    """

    def __init__(self, timeout_s: float | None):
        usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        self.timeout_s = timeout_s if (timeout_s and usable) else None

    def _fire(self, signum, frame):
        raise TimeoutError(f"verifier took longer than {self.timeout_s:g} s")

    def __enter__(self):
        if self.timeout_s:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        return self

    def __exit__(self, *exc):
        if self.timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        return False


def _score_one(fn: Callable, item: Sequence, timeout_s: float | None) -> dict:
    data_source, solution_str, ground_truth, extra_info = item
    try:
        with _Alarm(timeout_s):
            return apply_nonfinite_rule(normalize_result(fn(data_source, solution_str, ground_truth, extra_info)))
    except (Exception, SystemExit) as exc:  # one bad item must not take the batch down
        return _error_result(exc, traceback.format_exc())


def _score_chunk(fn: Callable, items: list, timeout_s: float | None) -> list[dict]:
    return [_score_one(fn, item, timeout_s) for item in items]


class _Unpicklable:
    """Stands in, inside a worker, for a verifier registered in the parent that could not be sent over."""

    def __init__(self, data_source: str, reason: str):
        self.data_source, self.reason = data_source, reason

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"the reward function registered for data_source {self.data_source!r} cannot be sent to a worker "
            f"process ({self.reason}); define it at module level or use num_workers=0"
        )


def _install_registry(entries: dict) -> None:
    _REGISTRY.update(entries)


def _registry_snapshot() -> dict:
    """What the parent has registered, as picklable entries (the built-ins re-register themselves)."""
    out = {}
    for data_source, fn in _REGISTRY.items():
        try:
            pickle.dumps(fn)
            out[data_source] = fn
        except Exception as exc:  # lambdas, closures, functions of unimportable modules
            out[data_source] = _Unpicklable(data_source, f"{type(exc).__name__}: {exc}")
    return out


class RewardScorer:
    """Score (data_source, solution_str, ground_truth, extra_info) items with ``fn``, results in input order.

    ``num_workers > 0`` runs them in a spawn-started process pool (``fn`` must be picklable: a module-level
    function, or what ``load_reward_fn`` returns); data sources registered in this process at pool start
    are registered in the workers too. ``timeout_s`` bounds each item (SIGALRM in the scoring process).
    A verifier that raises, or times out, gives that item score 0 and a ``verifier_error`` entry (with
    ``verifier_traceback``); a non-finite score becomes 0 with a ``nonfinite_score`` entry; a worker
    that dies (segfault, out of memory) gives its pending items such an entry and the pool is restarted
    for the next call.
    """

    def __init__(self, fn: Callable = compute_score, num_workers: int = 0, timeout_s: float | None = None):
        if num_workers < 0:
            raise ValueError(f"RewardScorer: num_workers must be >= 0, got {num_workers}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"RewardScorer: timeout_s must be > 0 or None, got {timeout_s}")
        self.fn, self.num_workers, self.timeout_s = fn, int(num_workers), timeout_s
        self._pool: ProcessPoolExecutor | None = None
        if self.num_workers > 0:
            try:
                pickle.dumps(fn)
            except Exception as exc:
                raise TypeError(
                    f"RewardScorer: the reward function {fn!r} cannot be sent to worker processes "
                    f"({type(exc).__name__}: {exc}); define it at module level, load it with "
                    "load_reward_fn(path, name), or use num_workers=0"
                ) from exc

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_install_registry,
                initargs=(_registry_snapshot(),),
            )
        return self._pool

    def score(self, items: Sequence[tuple[str, str, Any, dict | None]]) -> list[dict]:
        items = [tuple(item) for item in items]
        for i, item in enumerate(items):
            if len(item) != 4:
                raise ValueError(
                    f"RewardScorer.score: item {i} has {len(item)} fields, expected "
                    "(data_source, solution_str, ground_truth, extra_info)"
                )
        if not items:
            return []
        if self.num_workers == 0:
            return [_score_one(self.fn, item, self.timeout_s) for item in items]

        # a few chunks per worker: amortises pickling, still balances uneven verifier times
        chunk = max(1, math.ceil(len(items) / (self.num_workers * 4)))
        starts = list(range(0, len(items), chunk))
        pool = self._get_pool()
        futures = [pool.submit(_score_chunk, self.fn, items[s : s + chunk], self.timeout_s) for s in starts]
        results: list[dict] = []
        broken = False
        for s, future in zip(starts, futures):
            n = len(items[s : s + chunk])
            try:
                part = future.result()
            except BrokenProcessPool as exc:
                broken = True
                part = [_error_result(exc)] * n
            except Exception as exc:  # e.g. an item that cannot be pickled
                part = [_error_result(exc)] * n
            results.extend(dict(r) for r in part)
        if broken:
            self.close()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
