"""Peer selection: which rollouts of the same prompt enter each rollout's teacher context.

The rules are listed in ``docs/algorithm_core.md`` §2. Everything is deterministic given the rollout
order and the ``random.Random`` passed in; the global RNG is never used, so a run (and a resumed run
that restores the generator's state) selects the same peers.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from mopd.core.config import SelfDistillationConfig

METRIC_PREFIX = "self_distillation/"
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclass(frozen=True)
class Rollout:
    uid: str
    reward: float
    text: str
    feedback: str | None = None
    num_tokens: int | None = None  # response length in tokens; needed for peer_control_match=token


@dataclass(frozen=True)
class ControlBlock:
    index: int
    label: str  # "success" | "failure": the slot's label, which may differ from the peer's own outcome


@dataclass(frozen=True)
class PeerContext:
    primary: int | None = None
    another: int | None = None
    failure: int | None = None
    summaries: tuple[int, ...] = ()
    summary_texts: tuple[str, ...] = ()
    control_blocks: tuple[ControlBlock, ...] = ()
    use_feedback: bool = False

    @property
    def has_context(self) -> bool:
        return (
            self.primary is not None
            or self.another is not None
            or self.failure is not None
            or bool(self.summaries)
            or bool(self.control_blocks)
            or self.use_feedback
        )

    @property
    def shows_success(self) -> bool:
        return (
            self.primary is not None
            or self.another is not None
            or any(b.label == "success" for b in self.control_blocks)
        )


@dataclass
class PeerSelection:
    contexts: list[PeerContext]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def distillation_mask(self) -> list[float]:
        return [1.0 if ctx.has_context else 0.0 for ctx in self.contexts]


def strip_thinking(text: str) -> str:
    """Remove every ``<think>...</think>`` block and the whitespace after it."""
    return _THINK_BLOCK.sub("", text)


def extract_summary(text: str, tag: str) -> str | None:
    """The first non-empty ``<tag>...</tag>`` content, stripped; ``None`` when there is none."""
    match = re.search(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)
    if match is None or not match.group(1).strip():
        return None
    return match.group(1).strip()


def is_success(reward: float, config: SelfDistillationConfig) -> bool:
    return float(reward) >= config.success_reward_threshold


def peer_candidates(
    members: Sequence[int], succeeded: Sequence[bool], i: int, exclude_self: bool
) -> tuple[list[int], list[int]]:
    """Rollout ``i``'s candidate peers among ``members`` (its prompt's rollout indices, in rollout order).

    Returns (successes, failures): the successful members, without ``i`` itself when ``exclude_self``
    (``dont_reprompt_on_self_success``), and the failed members other than ``i``.
    """
    successes = [j for j in members if succeeded[j] and not (exclude_self and j == i)]
    failures = [j for j in members if not succeeded[j] and j != i]
    return successes, failures


def context_slots(
    successes: Sequence[int],
    failures: Sequence[int],
    *,
    primary: bool,
    another: bool,
    failure: bool,
    failure_always: bool,
) -> list[tuple[str, int]]:
    """The (label, reference peer) slots a normal context would fill, without randomness: the first success
    as the primary, the second as another, the first failure (``failure_always``, or when no success shows).
    Matched-budget controls replace exactly these slots; with all flags on this is the 2S1F budget."""
    slots: list[tuple[str, int]] = []
    if primary and successes:
        slots.append(("success", successes[0]))
    if another and len(successes) >= 2:
        slots.append(("success", successes[1]))
    if failure and failures and (failure_always or not successes):
        slots.append(("failure", failures[0]))
    return slots


class _Groups:
    """Success / failure indices per uid, in rollout order."""

    def __init__(self, rollouts: Sequence[Rollout], config: SelfDistillationConfig):
        self.success: dict[str, list[int]] = defaultdict(list)
        self.failure: dict[str, list[int]] = defaultdict(list)
        self.members: dict[str, list[int]] = defaultdict(list)
        self.succeeded = [is_success(r.reward, config) for r in rollouts]
        for i, rollout in enumerate(rollouts):
            self.members[rollout.uid].append(i)
            (self.success if self.succeeded[i] else self.failure)[rollout.uid].append(i)


def select_peers(rollouts: Sequence[Rollout], config: SelfDistillationConfig, rng: random.Random) -> PeerSelection:
    """Choose each rollout's peers (primary, another, failure, summaries or control blocks)."""
    if not isinstance(rng, random.Random):
        raise TypeError("select_peers needs a seeded random.Random instance (never the global RNG)")
    groups = _Groups(rollouts, config)
    stats = _Stats(config)
    contexts = []
    for i, rollout in enumerate(rollouts):
        successes, failures = peer_candidates(
            groups.members[rollout.uid], groups.succeeded, i, config.dont_reprompt_on_self_success
        )
        if config.peer_control_mode == "none":
            ctx = _normal_context(i, rollouts, groups, successes, failures, config, rng, stats)
        else:
            ctx = _control_context(i, rollouts, groups, successes, failures, config, rng, stats)
        ctx = _with_feedback(ctx, rollout, config)
        contexts.append(ctx)
    return PeerSelection(contexts, stats.finish(rollouts, groups, contexts))


def _with_feedback(ctx: PeerContext, rollout: Rollout, config: SelfDistillationConfig) -> PeerContext:
    has_feedback = config.include_environment_feedback and bool((rollout.feedback or "").strip())
    use = has_feedback and (not config.environment_feedback_only_without_solution or not ctx.shows_success)
    return PeerContext(**{**ctx.__dict__, "use_feedback": use})


# ----------------------------------------------------------------------------------------------------
# Normal mode
# ----------------------------------------------------------------------------------------------------
def _normal_context(i, rollouts, groups, successes, failures, config, rng, stats) -> PeerContext:
    primary = successes[0] if successes else None
    another = successes[1] if config.include_another_solution and len(successes) >= 2 else None
    failure = None
    if (
        config.include_failure_solution
        and failures
        and (config.failure_solution_condition == "always" or primary is None)
    ):
        failure = rng.choice(failures)
    shown = primary if config.include_primary_solution else None
    summaries, texts = (), ()
    if config.summarize_solutions:
        summaries, texts = _sample_summaries(
            i, rollouts, groups, {shown, another, failure} - {None}, config, rng, stats
        )
    return PeerContext(primary=shown, another=another, failure=failure, summaries=summaries, summary_texts=texts)


def _sample_summaries(i, rollouts, groups, shown, config, rng, stats):
    uid = rollouts[i].uid
    source = config.effective_summary_source
    pool_source = {"success": groups.success, "failure": groups.failure, "all": groups.members}[source][uid]
    pool = [j for j in pool_source if j not in shown and not (config.dont_reprompt_on_self_success and j == i)]
    stats.summary_candidates += len(pool)
    if not pool:
        return (), ()
    chosen = tuple(rng.sample(pool, min(config.summary_k, len(pool))))
    texts = []
    for j in chosen:
        tagged = extract_summary(rollouts[j].text, config.summary_tag)
        if tagged is not None:
            texts.append(tagged)
        else:
            fallback = rollouts[j].text
            if config.remove_thinking_from_demonstration:
                fallback = strip_thinking(fallback)
            texts.append(fallback[: config.summary_fallback_chars])
        stats.record_summary(groups.succeeded[j], tagged is not None)
    return chosen, tuple(texts)


# ----------------------------------------------------------------------------------------------------
# Matched-budget peer-control ablations
# ----------------------------------------------------------------------------------------------------
def _length(rollouts: Sequence[Rollout], j: int) -> int:
    if rollouts[j].num_tokens is None:
        raise ValueError(
            f"peer_control_match=token needs the response length of every rollout; rollout {j} "
            f"(uid {rollouts[j].uid!r}) has num_tokens=None"
        )
    return int(rollouts[j].num_tokens)


def _control_context(i, rollouts, groups, successes, failures, config, rng, stats) -> PeerContext:
    # The budget the normal 2S1F-style context would have used, computed without randomness.
    slots = context_slots(
        successes,
        failures,
        primary=config.include_primary_solution,
        another=config.include_another_solution,
        failure=config.include_failure_solution,
        failure_always=config.failure_solution_condition == "always",
    )
    if not slots:
        return PeerContext()
    by_token = config.peer_control_match == "token"
    uid = rollouts[i].uid
    mode = config.peer_control_mode
    if mode == "random_peer":
        pool = [j for j in groups.members[uid] if j != i]
        blocks = []
        for label, ref in slots:
            if not pool:
                break
            if by_token:
                target = _length(rollouts, ref)
                pick = min(pool, key=lambda j: (abs(_length(rollouts, j) - target), j))
            else:
                pick = rng.choice(pool)
            pool.remove(pick)
            blocks.append(ControlBlock(pick, label))
    else:
        target = sum(_length(rollouts, ref) for _, ref in slots) if by_token else len(slots)
        other_successes = [j for u, idx in groups.success.items() if u != uid for j in idx]
        other_successes.sort()
        if mode == "unrelated_prompt":
            picks = _draw_budget(other_successes, target, by_token, rollouts, rng)
        else:  # success_only_matched
            picks = _draw_budget(successes, target, by_token, rollouts, rng)
            have = sum(_length(rollouts, j) for j in picks) if by_token else len(picks)
            if have < target:
                extra = _draw_budget(other_successes, target - have, by_token, rollouts, rng)
                stats.control_topup += len(extra)
                picks += extra
        blocks = [ControlBlock(j, "success") for j in picks]
    stats.record_control(blocks)
    return PeerContext(control_blocks=tuple(blocks))


def _draw_budget(candidates, target, by_token, rollouts, rng) -> list[int]:
    """Block budget: ``target`` distinct random peers. Token budget: a random order until the sum of
    lengths reaches ``target``."""
    if not candidates or target <= 0:
        return []
    if not by_token:
        return rng.sample(candidates, min(int(target), len(candidates)))
    picks, total = [], 0
    for j in rng.sample(candidates, len(candidates)):
        if total >= target:
            break
        picks.append(j)
        total += _length(rollouts, j)
    return picks


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------
class _Stats:
    def __init__(self, config: SelfDistillationConfig):
        self.config = config
        self.summary_candidates = 0
        self.summary_sampled = {"success": 0, "failure": 0, "with_tag": 0, "fallback": 0}
        self.control_blocks = {"success": 0, "failure": 0}
        self.control_topup = 0

    def record_summary(self, peer_succeeded: bool, tagged: bool) -> None:
        self.summary_sampled["success" if peer_succeeded else "failure"] += 1
        self.summary_sampled["with_tag" if tagged else "fallback"] += 1

    def record_control(self, blocks) -> None:
        for block in blocks:
            self.control_blocks[block.label] += 1

    def finish(self, rollouts, groups: _Groups, contexts: list[PeerContext]) -> dict[str, float]:
        n = max(len(rollouts), 1)
        config = self.config
        uids = list(groups.members)
        feedback_available = sum(
            1 for r in rollouts if config.include_environment_feedback and (r.feedback or "").strip()
        )
        total_summaries = self.summary_sampled["success"] + self.summary_sampled["failure"]
        blocks = self.control_blocks["success"] + self.control_blocks["failure"]
        values = {
            "success_group_fraction": sum(1 for u in uids if groups.success[u]) / max(len(uids), 1),
            "success_sample_fraction": sum(groups.succeeded) / n,
            "feedback_available_fraction": feedback_available / n,
            "feedback_used_fraction": sum(c.use_feedback for c in contexts) / n,
            "reprompt_sample_fraction": sum(c.has_context for c in contexts) / n,
            "another_solution_fraction": sum(c.another is not None for c in contexts) / n,
            "failure_solution_fraction": sum(c.failure is not None for c in contexts) / n,
            "summary_sample_fraction": sum(bool(c.summaries) for c in contexts) / n,
            "summary_candidate_count": self.summary_candidates,
            "summary_tag_available_count": sum(
                extract_summary(r.text, config.summary_tag) is not None for r in rollouts
            )
            if config.summarize_solutions
            else 0,
            "summary_sampled_total_count": total_summaries,
            "summary_sampled_success_count": self.summary_sampled["success"],
            "summary_sampled_failure_count": self.summary_sampled["failure"],
            "summary_sampled_with_tag_count": self.summary_sampled["with_tag"],
            "summary_sampled_fallback_count": self.summary_sampled["fallback"],
            "summary_sampled_with_tag_fraction": self.summary_sampled["with_tag"] / max(total_summaries, 1),
            "summary_sampled_fallback_fraction": self.summary_sampled["fallback"] / max(total_summaries, 1),
            "peer_control_active": float(config.peer_control_mode != "none"),
            "peer_control_block_total": blocks,
            "peer_control_success_block_total": self.control_blocks["success"],
            "peer_control_failure_block_total": self.control_blocks["failure"],
            "peer_control_blocks_per_sample": blocks / n,
            "peer_control_topup_count": self.control_topup,
        }
        return {METRIC_PREFIX + k: float(v) for k, v in values.items()}


class UidSuccessTracker:
    """Cumulative per-prompt success across steps: how many prompts were ever solved."""

    def __init__(self) -> None:
        self.ever_success: dict[str, bool] = {}

    def update(self, uids: Sequence[str], successes: Sequence[bool]) -> dict[str, float]:
        for uid, ok in zip(uids, successes):
            self.ever_success[str(uid)] = self.ever_success.get(str(uid), False) or bool(ok)
        seen = len(self.ever_success)
        ever = sum(self.ever_success.values())
        return {
            METRIC_PREFIX + "uid_seen_count": float(seen),
            METRIC_PREFIX + "uid_ever_success_count": float(ever),
            METRIC_PREFIX + "uid_never_success_count": float(seen - ever),
            METRIC_PREFIX + "uid_ever_success_fraction": ever / seen if seen else 0.0,
        }

    def state_dict(self) -> dict:
        return {"ever_success": dict(self.ever_success)}

    def load_state_dict(self, state: dict) -> None:
        self.ever_success = dict(state["ever_success"])
