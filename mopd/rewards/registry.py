"""The verifier registry: ``data_source`` -> verifier, result normalisation, and custom reward files.

``compute_score(data_source, solution_str, ground_truth, extra_info)`` has verl's signature, so a user's
``custom_reward_function.path`` file written for verl works here unchanged. Every result, from a built-in
verifier or a custom one, is normalised to a dict with at least ``score`` (float, the reward), ``acc``
(float), ``pred`` (str), ``incorrect_format`` (0/1) and ``feedback`` (str, "" when none); extra keys a
verifier returns are kept (they become per-rollout extra info).

Adding a verifier: ``register_reward(["math", "gsm8k"], fn)`` with ``fn(solution_str, ground_truth,
extra_info) -> dict | float``; built-ins are registered by ``_builtin()`` through lazy imports, so importing
this module stays cheap and a verifier's own dependencies load only when a row of its data source is scored.
"""

from __future__ import annotations

import hashlib
import importlib.util
import numbers
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["compute_score", "load_reward_fn", "normalize_result", "register_reward", "registered_data_sources"]

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
    from mopd.embedded import embedded_task

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
    """HumanEval rows (``mopd.dataprep``' offline source): whatever verifier is registered for ``code``."""
    fn = _REGISTRY.get("code")
    if fn is None:
        raise ValueError("data_source 'humaneval' is scored by the 'code' verifier, and none is registered")
    return fn(solution_str, ground_truth, extra_info)


# data sources matched by prefix when no exact name is registered (the release's aime*/AIME*/hmmt* rule)
_PREFIXES: dict[str, VerifierFn] = {}


def _builtin() -> None:
    """Register the built-in verifiers (code/math/mcq/tooluse join here as they are written)."""
    register_reward("embedded_arith", _embedded_arith)  # == mopd.embedded.embedded_task.DATA_SOURCE
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
