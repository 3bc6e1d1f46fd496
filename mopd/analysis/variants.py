"""Teacher contexts for the teacher-signal study: one row per (condition, candidate response).

Every context is rendered exactly as training renders a teacher prompt: a :class:`mopd.core.peers.PeerContext`
(which peers, which summaries, feedback or not) goes through :func:`mopd.core.reprompt.render_teacher_messages`
with a :class:`mopd.core.config.SelfDistillationConfig` (the training templates unless the variant config gives
others), so the messages are the system prompt verbatim + the reprompt user message.

Peers come from the candidate's own prompt group, in ``response_index`` order (numeric ``_r{k}``), never
the candidate itself (the study's deterministic version of the training rules, as in the release):

- primary = first success; another = next success; failure = first failure (shown whenever the condition
  asks for it: ``failure_solution_condition=always``).
- summaries (``summary_*_k2``): the first k=2 peers of the pool (successes, or all for ``summary_all``)
  without the primary; used only when the candidate has a primary (as in the release). Text = the peer's
  first ``<summary>`` or its first 300 characters; the failed-item template for a failed peer.
- feedback: the candidate's **own** verifier feedback (``include_environment_feedback``); the
  ``environment_feedback_only_without_solution`` switch (off by default, as in the release) follows the training rule.
- ``random_summary_control``: k summaries of *other* prompts' successes, drawn with a generator seeded by
  sha1(condition|prompt_id|response_id) (gated on a primary like the matched summary conditions).
- ``random_peer``: the 2S1F slot structure of this candidate (#success slots = primary + another present,
  #failure slots = failure present) filled by a seeded shuffle (seed = sha1(prompt_id|response_id)) of the
  other same-prompt responses; every block keeps its **slot's** label, whatever the peer's outcome.
- ``verifier_score_ordered``: the top-N other responses by (reward desc, response_index), N = the same slot
  count, each rendered by its **true** label.
- ``base``: the student's own prompt; ``base_raw``: the same text scored as raw text without the chat
  template (the release's scoring; see ``docs/analysis.md``); ``base_reprompt``: the reprompt template with
  every section empty.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mopd.analysis.conditions import (  # noqa: F401  (re-exported)
    CONDITION_NAMES,
    DEFAULT_GLOBAL,
    DEFAULT_VARIANTS,
    REQUIRED_SECTIONS,
    SECTION_KEYS,
    TWO_S_ONE_F,
)
from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import ControlBlock, PeerContext, Rollout, context_slots, peer_candidates
from mopd.core.reprompt import TeacherSections, render_teacher_messages

__all__ = [
    "CONDITION_NAMES",
    "DEFAULT_GLOBAL",
    "DEFAULT_VARIANTS",
    "REQUIRED_SECTIONS",
    "SECTION_KEYS",
    "TWO_S_ONE_F",
    "build_context",
    "build_variant_rows",
    "context_spans",
    "load_variant_config",
    "pieces_from_spans",
    "render",
    "sections_used",
    "stable_variant_id",
    "teacher_config",
]

_KNOWN_KEYS = {
    "name",
    "include_primary_solution",
    "include_another_solution",
    "include_failure_solution",
    "include_environment_feedback",
    "summarize_solutions",
    "summary_from_all",
    "summary_k",
    "summary_control",
    "peer_control",
    "force_reprompt",
    "force_raw_prompt",
    "score_format",
    "required_sections",
    "dont_reprompt_on_self_success",
    "environment_feedback_only_without_solution",
}

# The training config's names (actor_rollout_ref.actor.self_distillation.*) are the canonical ones here; a
# variant file in the release's analysis format may use its own names for the same sections.
_RELEASE_NAMES = {
    "include_solution": "include_primary_solution",
    "include_feedback": "include_environment_feedback",
    "include_summary": "summarize_solutions",
    "feedback_only_without_solution": "environment_feedback_only_without_solution",
}


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------
def load_variant_config(path: str | Path | None) -> dict[str, Any]:
    """``{"global": {...}, "variants": [...], "teacher_config": {...}}`` from JSON or YAML; built-in default
    (the release's conditions) when ``path`` is None. ``teacher_config`` holds
    ``actor_rollout_ref.actor.self_distillation`` fields (templates, remove_thinking_from_demonstration...)."""
    if path is None:
        return {"global": dict(DEFAULT_GLOBAL), "variants": [dict(v) for v in DEFAULT_VARIANTS], "teacher_config": {}}
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"--variant-config {path}: expected a mapping with 'variants'")
    config.setdefault("global", dict(DEFAULT_GLOBAL))
    config.setdefault("variants", [dict(v) for v in DEFAULT_VARIANTS])
    config.setdefault("teacher_config", {})
    names = set()
    for i, variant in enumerate(config["variants"]):
        if isinstance(variant, str):  # a bare name selects the built-in definition
            known = {v["name"]: v for v in DEFAULT_VARIANTS}
            if variant not in known:
                raise ValueError(f"--variant-config {path}: unknown condition {variant!r}; built-in: {CONDITION_NAMES}")
            config["variants"][i] = variant = dict(known[variant])
        for alias, key in _RELEASE_NAMES.items():  # the release's analysis names for the same sections
            if alias in variant:
                value = variant.pop(alias)
                if key in variant and variant[key] != value:
                    raise ValueError(f"--variant-config {path}: variant #{i} sets both {alias} and {key} differently")
                variant[key] = value
        unknown = set(variant) - _KNOWN_KEYS
        if "name" not in variant or unknown:
            raise ValueError(
                f"--variant-config {path}: variant #{i} needs a 'name' and only the keys "
                f"{sorted(_KNOWN_KEYS)} (unknown: {sorted(unknown)})"
            )
        if variant["name"] in names:
            raise ValueError(f"--variant-config {path}: condition {variant['name']!r} is defined twice")
        names.add(variant["name"])
        if variant.get("peer_control") not in (None, "random", "score_ordered"):
            raise ValueError(
                f"--variant-config {path}: {variant['name']}: peer_control must be random or score_ordered"
            )
        if variant.get("summary_control") not in (None, "random_other_prompt"):
            raise ValueError(f"--variant-config {path}: {variant['name']}: summary_control must be random_other_prompt")
    return config


def teacher_config(overrides: dict[str, Any] | None, success_threshold: float) -> SelfDistillationConfig:
    values = {"success_reward_threshold": float(success_threshold), **dict(overrides or {})}
    return SelfDistillationConfig.from_dict(values, prefix="variant_config.teacher_config")


def stable_variant_id(condition: str, prompt_id: str, response_id: str) -> str:
    return hashlib.sha1(f"{condition}|{prompt_id}|{response_id}".encode()).hexdigest()[:20]


def seeded_rng(*parts: str) -> random.Random:
    return random.Random(int(hashlib.sha1("|".join(parts).encode("utf-8")).hexdigest(), 16) % (2**32))


# ----------------------------------------------------------------------------------------------------
# Peer choice (indices into the prompt's group, ordered by response_index)
# ----------------------------------------------------------------------------------------------------
def _two_s_one_f_slots(successes: Sequence[int], failures: Sequence[int]) -> tuple[int, int]:
    """(success slots, failure slots) of the 2S1F budget, by the trainer's rule (mopd.core.peers.context_slots)."""
    slots = context_slots(successes, failures, primary=True, another=True, failure=True, failure_always=True)
    return sum(label == "success" for label, _ in slots), sum(label == "failure" for label, _ in slots)


def build_context(
    variant: dict, group: Sequence[dict], i: int, glob: dict, all_successes: Sequence[dict]
) -> tuple[PeerContext, list[dict], dict]:
    """The PeerContext of candidate ``group[i]`` under ``variant``.

    ``all_successes``: every prompt's successful candidates (the pool of ``random_summary_control``).
    Returns (context, extra rollouts appended after the group — borrowed other-prompt summaries —, info)."""
    name = variant["name"]
    exclude_self = bool(variant.get("dont_reprompt_on_self_success", glob.get("dont_reprompt_on_self_success", True)))
    fb_only_without = bool(
        variant.get(
            "environment_feedback_only_without_solution", glob.get("environment_feedback_only_without_solution", False)
        )
    )
    k = int(variant.get("summary_k", glob.get("summary_k", 2)))
    candidate = group[i]
    successes, failures = peer_candidates(range(len(group)), [bool(r["success"]) for r in group], i, exclude_self)
    primary_candidate = successes[0] if successes else None
    info: dict[str, Any] = {
        "primary_solution_response_id": group[primary_candidate]["response_id"]
        if primary_candidate is not None
        else None,
        "summary_sources": [],
    }
    extra: list[dict] = []

    peer_control = variant.get("peer_control")
    if peer_control:
        n_success, n_failure = _two_s_one_f_slots(successes, failures)
        others = [j for j in range(len(group)) if j != i]
        if peer_control == "random":
            order = list(others)
            seeded_rng(candidate["prompt_id"], candidate["response_id"]).shuffle(order)
            picked = order[: n_success + n_failure]
            blocks = [ControlBlock(j, "success") for j in picked[:n_success]]
            blocks += [ControlBlock(j, "failure") for j in picked[n_success:]]
        else:  # score_ordered: best first, rendered by true label
            ranked = sorted(others, key=lambda j: (-float(group[j]["reward"]), group[j]["response_index"]))
            picked = ranked[: n_success + n_failure]
            blocks = [ControlBlock(j, "success" if group[j]["success"] else "failure") for j in picked]
            blocks = [b for b in blocks if b.label == "success"] + [b for b in blocks if b.label == "failure"]
        return PeerContext(control_blocks=tuple(blocks)), extra, info

    primary = primary_candidate if variant.get("include_primary_solution") else None
    another = None
    if variant.get("include_another_solution"):
        rest = [j for j in successes if j != primary_candidate]
        another = rest[0] if rest else None
    failure = failures[0] if variant.get("include_failure_solution") and failures else None

    summaries: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()
    if variant.get("summarize_solutions") and primary_candidate is not None:
        if variant.get("summary_control") == "random_other_prompt":
            rng = seeded_rng(name, candidate["prompt_id"], candidate["response_id"])
            extra = [dict(row) for row in _sample_other_prompts(all_successes, candidate["prompt_id"], k, rng)]
            summaries = tuple(len(group) + n for n in range(len(extra)))
            texts = tuple(row["summary_text_effective"] for row in extra)
        else:
            pool = [
                j
                for j in range(len(group))
                if j != primary_candidate
                and not (exclude_self and j == i)
                and (variant.get("summary_from_all") or group[j]["success"])
            ]
            summaries = tuple(pool[:k])
            texts = tuple(group[j]["summary_text_effective"] for j in summaries)
        everyone = list(group) + extra
        info["summary_sources"] = [
            {
                "source_response_id": everyone[j]["response_id"],
                "source_prompt_id": everyone[j]["prompt_id"],
                "success": everyone[j]["success"],
                "summary_has_tag": everyone[j]["summary_has_tag"],
                "summary_is_fallback": everyone[j]["summary_is_fallback"],
            }
            for j in summaries
        ]

    use_feedback = False
    if variant.get("include_environment_feedback") and candidate.get("has_feedback"):
        shows_success = primary is not None or another is not None
        use_feedback = not fb_only_without or not shows_success
    ctx = PeerContext(
        primary=primary,
        another=another,
        failure=failure,
        summaries=summaries,
        summary_texts=texts,
        use_feedback=use_feedback,
    )
    return ctx, extra, info


def _sample_other_prompts(pool: Sequence[dict], prompt_id: str, k: int, rng: random.Random) -> list[dict]:
    """``k`` distinct rows of ``pool`` (all prompts' successes) not from ``prompt_id``, uniformly at random."""
    picked: list[int] = []
    attempts = 0
    while len(picked) < k and attempts < 50 * (k + 1):
        attempts += 1
        j = rng.randrange(len(pool)) if pool else None
        if j is None:
            break
        if pool[j]["prompt_id"] != prompt_id and j not in picked:
            picked.append(j)
    if len(picked) < k:  # the prompt's own rows dominate the pool: draw from the filtered list instead
        others = [j for j in range(len(pool)) if pool[j]["prompt_id"] != prompt_id and j not in picked]
        picked += rng.sample(others, min(k - len(picked), len(others)))
    return [pool[j] for j in picked]


def sections_used(ctx: PeerContext) -> dict[str, bool]:
    success_blocks = [b for b in ctx.control_blocks if b.label == "success"]
    return {
        "solution": ctx.primary is not None or bool(success_blocks),
        "another_solution": ctx.another is not None or len(success_blocks) >= 2,
        "failure_solution": ctx.failure is not None or any(b.label == "failure" for b in ctx.control_blocks),
        "feedback": ctx.use_feedback,
        "summary": bool(ctx.summaries),
    }


def evidence_ids(ctx: PeerContext, everyone: Sequence[dict]) -> list[str]:
    ids = []
    for j in (ctx.primary, ctx.another, ctx.failure):
        if j is not None:
            ids.append(f"{everyone[j]['response_id']}::response_full")
    ids += [f"{everyone[b.index]['response_id']}::response_full" for b in ctx.control_blocks]
    ids += [f"{everyone[j]['response_id']}::summary" for j in ctx.summaries]
    return ids


def _rollouts(rows: Iterable[dict]) -> list[Rollout]:
    return [
        Rollout(
            uid=r["prompt_id"],
            reward=float(r["reward"]),
            text=r["response_text"],
            feedback=r.get("feedback_text") or None,
        )
        for r in rows
    ]


def render(
    variant: dict, ctx: PeerContext, everyone: Sequence[dict], candidate: dict, config: SelfDistillationConfig
) -> tuple[list[dict], list[list]]:
    """Teacher messages and the user message's pieces ``[text, is_peer_context]`` (training's renderer)."""
    prompt_messages = candidate["prompt_messages"]
    rollouts = _rollouts(everyone)
    own_feedback = candidate.get("feedback_text") or None
    if variant.get("force_reprompt") and not ctx.has_context:
        # The empty shell: the reprompt template with every section empty (base_reprompt).
        sections = TeacherSections()
        content = config.reprompt_template.format(prompt=prompt_messages[-1]["content"], **sections.__dict__)
        messages = [dict(m) for m in prompt_messages[:-1]] + [{**dict(prompt_messages[-1]), "content": content}]
        return messages, [[content, False]]
    if variant.get("force_raw_prompt"):
        ctx = PeerContext()
    messages, pieces = render_teacher_messages(prompt_messages, ctx, rollouts, own_feedback, config)
    return messages, [[text, bool(is_ctx)] for text, is_ctx in pieces]


# ----------------------------------------------------------------------------------------------------
# All rows
# ----------------------------------------------------------------------------------------------------
def group_candidates(candidates: Sequence[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in candidates:
        grouped[row["prompt_id"]].append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: (int(r.get("response_index", _index_of(r["response_id"]))), r["response_id"]))
    return dict(grouped)


def _index_of(response_id: str) -> int:
    tail = response_id.rsplit("_r", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def build_variant_rows(
    candidates: Sequence[dict], variant_config: dict | None = None, evidence: Sequence[dict] | None = None
) -> list[dict]:
    """One row per (condition, candidate), conditions in config order, candidates in file order."""
    variant_config = variant_config or load_variant_config(None)
    glob = {**DEFAULT_GLOBAL, **variant_config.get("global", {})}
    if not candidates:
        return []
    thresholds = {float(c.get("success_threshold", 1.0)) for c in candidates}
    config = teacher_config(variant_config.get("teacher_config"), min(thresholds))
    grouped = group_candidates(candidates)
    position = {(r["prompt_id"], r["response_id"]): j for rows in grouped.values() for j, r in enumerate(rows)}
    all_successes = [r for _, rows in sorted(grouped.items()) for r in rows if r["success"]]
    evidence_known = {e["evidence_id"] for e in evidence} if evidence is not None else None

    out = []
    for variant in variant_config["variants"]:
        name = variant["name"]
        required = tuple(variant.get("required_sections", REQUIRED_SECTIONS.get(name, _implied_sections(variant))))
        for candidate in candidates:
            pid = candidate["prompt_id"]
            group = grouped[pid]
            i = position[(pid, candidate["response_id"])]
            ctx, extra, info = build_context(variant, group, i, glob, all_successes)
            everyone = list(group) + extra
            messages, pieces = render(variant, ctx, everyone, candidate, config)
            used = sections_used(ctx)
            ids = evidence_ids(ctx, everyone)
            if used["feedback"]:
                ids.append(f"{candidate['response_id']}::feedback")
            if evidence_known is not None:
                missing = [e for e in ids if e not in evidence_known]
                if missing:
                    raise ValueError(
                        f"{name} for {candidate['response_id']}: evidence {missing[:3]} is not in "
                        "the evidence file (were candidates and evidence made by the same run?)"
                    )
            content = messages[-1]["content"]
            out.append(
                {
                    "variant_id": stable_variant_id(name, pid, candidate["response_id"]),
                    "condition": name,
                    "prompt_id": pid,
                    "response_id": candidate["response_id"],
                    "uid": candidate.get("uid", pid),
                    "reward": candidate["reward"],
                    "success": candidate["success"],
                    "difficulty_bucket": candidate.get("difficulty_bucket", "unknown"),
                    "variant_spec": _spec(variant, glob),
                    "score_format": variant.get("score_format", "default"),
                    "required_sections": list(required),
                    "sections_used": used,
                    "effective": all(used[s] for s in required),
                    "evidence_ids": ids,
                    "primary_solution_response_id": info["primary_solution_response_id"],
                    "summary_sources": info["summary_sources"],
                    "teacher_messages": messages,
                    "peer_context_spans": context_spans(pieces),
                    "chat_template_kwargs": candidate.get("chat_template_kwargs") or {},
                    "student_input_text": candidate.get("student_input_text") if name == "base" else None,
                    "assembled_context_text": content,
                    "assembled_context_length_chars": len(content),
                }
            )
    return out


def _implied_sections(variant: dict) -> tuple[str, ...]:
    if variant.get("peer_control"):
        return ("solution",)
    flags = [
        ("include_primary_solution", "solution"),
        ("include_another_solution", "another_solution"),
        ("include_failure_solution", "failure_solution"),
        ("include_environment_feedback", "feedback"),
        ("summarize_solutions", "summary"),
    ]
    return tuple(section for key, section in flags if variant.get(key))


def context_spans(pieces: Sequence[Sequence]) -> list[list[int]]:
    """``[start, end]`` character spans of the peer context inside the teacher's user message."""
    spans, at = [], 0
    for text, is_ctx in pieces:
        if is_ctx:
            spans.append([at, at + len(text)])
        at += len(text)
    return spans


def pieces_from_spans(content: str, spans: Sequence[Sequence[int]]) -> list[tuple[str, bool]]:
    """The inverse of :func:`context_spans`: ``(text, is_peer_context)`` pieces of ``content``."""
    pieces, at = [], 0
    for start, end in spans:
        if start > at:
            pieces.append((content[at:start], False))
        pieces.append((content[start:end], True))
        at = end
    if at < len(content):
        pieces.append((content[at:], False))
    return pieces


def _spec(variant: dict, glob: dict) -> dict:
    flags = (
        "include_primary_solution",
        "include_another_solution",
        "include_failure_solution",
        "include_environment_feedback",
        "summarize_solutions",
        "summary_from_all",
        "force_reprompt",
        "force_raw_prompt",
    )
    return {
        **{key: bool(variant.get(key, False)) for key in flags},
        "summary_k": int(variant.get("summary_k", glob.get("summary_k", 2))),
        "summary_control": variant.get("summary_control"),
        "peer_control": variant.get("peer_control"),
        "score_format": variant.get("score_format", "default"),
        "dont_reprompt_on_self_success": bool(
            variant.get("dont_reprompt_on_self_success", glob.get("dont_reprompt_on_self_success", True))
        ),
        "environment_feedback_only_without_solution": bool(
            variant.get(
                "environment_feedback_only_without_solution",
                glob.get("environment_feedback_only_without_solution", False),
            )
        ),
    }
