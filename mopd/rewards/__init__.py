"""Rewards: verifiers dispatched on ``data_source`` (``registry``) and the process pool that runs them
(``scorer``). The verifiers themselves: ``code`` (with its ``sandbox``), ``math``, ``mcq``, ``tooluse``,
``reasoning_gym_scorer``; the embedded task's lives in ``mopd.embedded.embedded_task``.

This package's public names are re-exported here, so callers write ``from mopd.rewards import compute_score``.
"""

from mopd.rewards.registry import (
    compute_score,
    load_reward_fn,
    normalize_result,
    register_reward,
    registered_data_sources,
)
from mopd.rewards.scorer import RewardScorer, apply_nonfinite_rule, summarize_health

__all__ = [
    "RewardScorer",
    "apply_nonfinite_rule",
    "compute_score",
    "load_reward_fn",
    "normalize_result",
    "register_reward",
    "registered_data_sources",
    "summarize_health",
]
