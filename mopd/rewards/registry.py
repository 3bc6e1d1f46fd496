"""Verifiers, dispatched on ``data_source``, and the process pool that runs them.

``compute_score(data_source, solution_str, ground_truth, extra_info)`` has verl's signature, so a user's
``custom_reward_function.path`` file written for verl works here unchanged. Every result, from a built-in
verifier or a custom one, is normalised to a dict with at least ``score`` (float, the reward), ``acc``
(float), ``pred`` (str), ``incorrect_format`` (0/1) and ``feedback`` (str, "" when none); extra keys a
verifier returns are kept (they become per-rollout extra info).

Adding a verifier: ``register_reward(["math", "gsm8k"], fn)`` with ``fn(solution_str, ground_truth,
extra_info) -> dict | float``; built-ins are registered by ``_builtin()`` through lazy imports, so importing
this package stays cheap and a verifier's own dependencies load only when a row of its data source is scored.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math as _stdlib_math  # not bound as `math`: importing the submodule mopd.rewards.math rebinds that name
import numbers
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Sequence

__all__ = ["RewardScorer", "apply_nonfinite_rule", "compute_score", "load_reward_fn", "normalize_result",
           "register_reward", "summarize_health"]

VerifierFn = Callable[[str, Any, "dict | None"], "dict | float"]

# data_source -> fn(solution_str, ground_truth, extra_info) -> dict | float
_REGISTRY: dict[str, VerifierFn] = {}


def register_reward(data_sources: str | Iterable[str], fn: VerifierFn) -> None:
    """Route the given data source(s) to ``fn``; a later registration of the same name replaces it."""
    if not callable(fn):
        raise TypeError(f"register_reward: fn must be callable, got {type(fn).__name__}")
    names = [data_sources] if isinstance(data_sources, str) else list(data_sources)
    if not names:
        raise ValueError("register_reward: no data source given")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register_reward: data sources must be non-empty strings, got {name!r}")
        _REGISTRY[name] = fn


def registered_data_sources() -> list[str]:
    return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------------
# Built-in verifiers (lazy imports: the module is loaded on first use, in whichever process scores).


def _embedded_arith(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd import embedded_task

    return embedded_task.compute_score(solution_str, ground_truth)


def _code(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import code

    return code.compute_score(solution_str, ground_truth, extra_info)


def _math(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import math as math_verifier

    return math_verifier.compute_score(solution_str, ground_truth, extra_info)


def _math_competition(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """aime*/hmmt*: the boxed answer, then math_verify on the whole response (the release's verl fallback)."""
    from mopd.rewards import math as math_verifier

    return math_verifier.compute_score(solution_str, ground_truth, extra_info, whole_response_fallback=True)


def _sciknoweval(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import mcq

    return mcq.compute_score(solution_str, ground_truth, extra_info)


def _gpqa(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import mcq

    return mcq.compute_score_gpqa(solution_str, ground_truth, extra_info)


def _mmlu_pro(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import mcq

    return mcq.compute_score_mmlu_pro(solution_str, ground_truth, extra_info)


def _tooluse(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import tooluse

    return tooluse.compute_score(solution_str, ground_truth, extra_info)


def _reasoning_gym(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    from mopd.rewards import reasoning_gym_scorer

    return reasoning_gym_scorer.compute_score(solution_str, ground_truth, extra_info)


def _humaneval(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """HumanEval rows (``mopd.datasets``' offline source): whatever verifier is registered for ``code``."""
    fn = _REGISTRY.get("code")
    if fn is None:
        raise ValueError("data_source 'humaneval' is scored by the 'code' verifier, and none is registered")
    return fn(solution_str, ground_truth, extra_info)


# data sources matched by prefix when no exact name is registered (the release's aime*/AIME*/hmmt* rule)
_PREFIXES: dict[str, VerifierFn] = {}


def _builtin() -> None:
    """Register the built-in verifiers (code/math/mcq/tooluse join here as they are written)."""
    register_reward("embedded_arith", _embedded_arith)  # == mopd.embedded_task.DATA_SOURCE
    register_reward(["code", "livecodebench", "humanevalplus", "mbppplus", "humaneval"], _code)
    register_reward(["math", "math500", "dapo_math", "gsm8k"], _math)
    register_reward(["aime24", "aime25", "aime2024", "aime2025", "amc23", "hmmt25"], _math_competition)
    _PREFIXES.update({"aime": _math_competition, "hmmt": _math_competition})  # matched case-insensitively
    register_reward("sciknoweval", _sciknoweval)
    register_reward("gpqa", _gpqa)
    register_reward("mmlu_pro", _mmlu_pro)
    register_reward("tooluse", _tooluse)
    register_reward("reasoning_gym", _reasoning_gym)
    register_reward("humaneval", _humaneval)


_builtin()


# ---------------------------------------------------------------------------------------------------
# Normalisation and dispatch

_DEFAULTS = {"pred": "", "incorrect_format": 0, "feedback": ""}


def normalize_result(result: Any) -> dict:
    """A verifier's dict/float/bool as the standard result dict (see the module docstring)."""
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"reward function returned a dict without 'score' (keys: {sorted(result)})")
        out = dict(result)
        out["score"] = float(result["score"])
        out["acc"] = float(result["acc"]) if result.get("acc") is not None else out["score"]
        out["pred"] = "" if result.get("pred") is None else str(result["pred"])
        out["incorrect_format"] = int(bool(result.get("incorrect_format") or 0))
        out["feedback"] = "" if result.get("feedback") is None else str(result["feedback"])
        return out
    # bool/int/float, and numpy or torch scalars (0-d, with .item()) without importing either
    if isinstance(result, numbers.Real) or (hasattr(result, "item") and tuple(getattr(result, "shape", (0,))) == ()):
        value = float(result)
        return {"score": value, "acc": value, **_DEFAULTS}
    raise TypeError(f"reward function must return a dict with 'score' or a number, got {type(result).__name__}")


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """Score one response with the verifier registered for ``data_source`` (verl's signature)."""
    fn = _REGISTRY.get(data_source)
    if fn is None and isinstance(data_source, str):
        fn = next((f for p, f in _PREFIXES.items() if data_source.lower().startswith(p)), None)
    if fn is None:
        raise ValueError(
            f"no reward function for data_source {data_source!r}; registered: {registered_data_sources()}. "
            "To score it, write a Python file with compute_score(data_source, solution_str, ground_truth, "
            "extra_info=None) and set custom_reward_function.path=<file> (and custom_reward_function.name "
            "if the function has another name), or call mopd.rewards.register_reward"
        )
    return normalize_result(fn(solution_str, ground_truth, extra_info))


# ---------------------------------------------------------------------------------------------------
# Custom reward functions loaded from a file (verl's custom_reward_function.{path,name})

_LOADED: dict[tuple[str, str], Callable] = {}  # per process: (abs path, name) -> the user's function


def _import_function(path: str, name: str) -> Callable:
    key = (path, name)
    if key not in _LOADED:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"custom_reward_function.path: no such file: {path}")
        module_name = "_mopd_custom_reward_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"custom_reward_function.path: cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so what the file defines can be pickled by reference
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ImportError(
                f"custom_reward_function.path: importing {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        fn = getattr(module, name, None)
        if not callable(fn):
            raise AttributeError(
                f"custom_reward_function.name: no function {name!r} in custom_reward_function.path={path}"
            )
        _LOADED[key] = fn
    return _LOADED[key]


class _FileRewardFn:
    """A function loaded from a file, with verl's signature and normalised results.

    It pickles as (path, name) and re-imports the file in the receiving process, so it can be sent to
    the spawn-started workers of a ``RewardScorer`` (a function from an ad-hoc module cannot).
    """

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        self._fn = _import_function(path, name)

    def __call__(self, data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
        result = self._fn(
            data_source=data_source, solution_str=solution_str, ground_truth=ground_truth, extra_info=extra_info
        )
        return normalize_result(result)

    def __getstate__(self):
        return {"path": self.path, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["path"], state["name"])

    def __repr__(self):
        return f"<reward fn {self.name} from {self.path}>"


def load_reward_fn(path: str | None, name: str = "compute_score") -> Callable[..., dict]:
    """``custom_reward_function.path``/``.name`` -> a callable (data_source, solution_str, ground_truth, extra_info).

    ``path=None`` gives the built-in ``compute_score``.
    """
    if path is None or path == "":
        return compute_score
    return _FileRewardFn(os.path.abspath(os.path.expanduser(str(path))), name or "compute_score")


# ---------------------------------------------------------------------------------------------------
# Batch scoring, serial or in a process pool


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
    if _stdlib_math.isfinite(score):
        return result
    out = dict(result, score=0.0, nonfinite_score=repr(score))
    if not _stdlib_math.isfinite(out["acc"]):
        out["acc"] = 0.0
    return out


def summarize_health(results: Sequence[dict]) -> dict:
    """How many of a batch's results errored or had a non-finite score, and the first of each."""
    errors = [r for r in results if "verifier_error" in r]
    nonfinite = [r for r in results if "nonfinite_score" in r]
    total = max(len(results), 1)
    return {
        "num_errors": len(errors), "num_nonfinite": len(nonfinite),
        "error_fraction": len(errors) / total, "nonfinite_fraction": len(nonfinite) / total,
        "first_error": errors[0] if errors else None, "first_nonfinite": nonfinite[0] if nonfinite else None,
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
        chunk = max(1, _stdlib_math.ceil(len(items) / (self.num_workers * 4)))
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
