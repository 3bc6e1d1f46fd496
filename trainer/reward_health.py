"""Bad rewards made loud (the fit loop's reward stage): a verifier error or a non-finite score is printed once
per run with its traceback and counted in the metrics; a scoring where every reward errored stops the run."""

from __future__ import annotations

import sys

from mopd.common.errors import RewardError
from mopd.rewards import summarize_health


class RewardHealth:
    def __init__(self, source: str):
        self.source = source  # custom_reward_function.path, or the built-in verifiers
        self._reported = {"error": False, "nonfinite": False}  # the first of each printed once

    def check(self, results: list[dict], where: str) -> dict:
        """The health of one scoring (``mopd.rewards.summarize_health``), made loud: the first error and the first
        non-finite score printed once per run, a stop when every reward errored."""
        health = summarize_health(results)
        source = self.source
        first = health["first_error"]
        if first is not None and not self._reported["error"]:
            self._reported["error"] = True
            print(
                f"[mopd] reward error ({where}, {health['num_errors']}/{len(results)} rollouts, scored 0; "
                f"counted as reward/error_fraction; shown once per run) from {source}: "
                f"{first['verifier_error']}\n{first.get('verifier_traceback', '').rstrip()}",
                file=sys.stderr,
                flush=True,
            )
        if health["first_nonfinite"] is not None and not self._reported["nonfinite"]:
            self._reported["nonfinite"] = True
            print(
                f"[mopd] non-finite reward ({where}, {health['num_nonfinite']}/{len(results)} rollouts, score "
                f"{health['first_nonfinite']['nonfinite_score']}) from {source}: treated as a failure with "
                "score 0 (docs/verifiers.md); counted as reward/nonfinite_fraction; shown once per run",
                file=sys.stderr,
                flush=True,
            )
        if results and health["num_errors"] == len(results):
            first_line = (first["verifier_error"].splitlines() or [""])[0]  # the stop is one line
            raise RewardError(
                f"every reward of {where} errored ({len(results)}/{len(results)} rollouts) in "
                f"{source}; first: {first_line}. Fix the verifier (the traceback is printed "
                "above) or custom_reward_function.path/name"
            )
        return health
