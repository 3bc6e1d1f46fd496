"""What to change when a phase of the memory plan does not fit (``trainer/memory_plan.py``): candidate
changes in the order the plan prefers them (cheapest in speed first), each checked to be a valid config and
to fit; ``suggest`` returns the first that does, or the strongest of each key combined."""

from __future__ import annotations

import copy

from mopd.common.errors import ConfigError
from trainer.config_sections import load
from trainer.memory_plan import GEN_BUDGET_KEY, OFFLOAD, _Settings, plan_memory


def _with(cfg: dict, changes: dict) -> dict:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _halvings(value: int, floor: int) -> list[int]:
    out = []
    while value // 2 >= floor:
        value //= 2
        out.append(value)
    return out


def _candidate_groups(cfg: dict) -> list[list[dict]]:
    """Changes in the order the plan prefers them (cheapest in speed first); each group lists one key's
    values from the mildest."""
    s = _Settings(cfg)
    arr = "actor_rollout_ref"
    seq = s.prompt_len + s.response_len
    groups: list[list[dict]] = []
    if not s.checkpointing:
        groups.append([{f"{arr}.model.enable_gradient_checkpointing": True}])
    if s.rollout == "hf":
        budget = cfg[arr]["rollout"]["generate_max_token_len_per_gpu"]
        groups.append([{GEN_BUDGET_KEY: v} for v in _halvings(budget, seq)])
    else:
        util = cfg[arr]["rollout"]["gpu_memory_utilization"]
        groups.append(
            [
                {f"{arr}.rollout.gpu_memory_utilization": round(util - 0.05 * i, 2)}
                for i in range(1, 20)
                if util - 0.05 * i >= 0.15
            ]
        )
    if s.dynamic:
        groups.append(
            [
                {f"{arr}.rollout.log_prob_max_token_len_per_gpu": v}
                for v in _halvings(cfg[arr]["rollout"]["log_prob_max_token_len_per_gpu"], seq)
            ]
        )
        groups.append(
            [
                {f"{arr}.actor.ppo_max_token_len_per_gpu": v}
                for v in _halvings(cfg[arr]["actor"]["ppo_max_token_len_per_gpu"], seq)
            ]
        )
    else:
        groups.append(
            [
                {f"{arr}.rollout.log_prob_micro_batch_size_per_gpu": v}
                for v in _halvings(cfg[arr]["rollout"]["log_prob_micro_batch_size_per_gpu"], 1)
            ]
        )
        groups.append(
            [
                {f"{arr}.actor.ppo_micro_batch_size_per_gpu": v}
                for v in _halvings(cfg[arr]["actor"]["ppo_micro_batch_size_per_gpu"], 1)
            ]
        )
    if not s.optimizer_offload:
        groups.append([{f"{OFFLOAD}.optimizer_offload": True}])
    tbs, mini = cfg["data"]["train_batch_size"], cfg[arr]["actor"]["ppo_mini_batch_size"]
    more = [{"trainer.n_gpus_per_node": g} for g in (2, 4, 8) if g > s.per_node]
    more += [{"trainer.n_gpus_per_node": max(8, s.per_node), "trainer.nnodes": k} for k in (2, 4, 8) if k > s.nodes]

    def divides(change: dict) -> bool:
        world = change.get("trainer.n_gpus_per_node", s.per_node) * change.get("trainer.nnodes", s.nodes)
        return (tbs * s.n) % world == 0 and (mini * s.n) % world == 0 and mini * s.n // world >= 1

    groups.append([c for c in more if divides(c)])
    return [g for g in groups if g]


def suggest(cfg: dict, capacity_bytes: float, **shapes) -> dict | None:
    """The first single change (in ``_candidate_groups`` order, the mildest value of each key) under which
    every phase fits; else the strongest value of each key added in order until it fits; ``None`` if even
    all of them together do not."""
    groups = _candidate_groups(cfg)
    for group in groups:
        for change in group:
            if _fits(_with(cfg, change), capacity_bytes, shapes):
                return change
    combined: dict = {}
    for group in groups:
        combined.update(group[-1])
        if _fits(_with(cfg, combined), capacity_bytes, shapes):
            return combined
    return None


def _fits(cfg: dict, capacity_bytes: float, shapes: dict) -> bool:
    try:
        load(cfg)  # the candidate is a valid config: batch arithmetic and every other rule
    except ConfigError:
        return False
    return plan_memory(cfg, capacity_bytes, **shapes).fits


def describe_overrides(change: dict) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items())
