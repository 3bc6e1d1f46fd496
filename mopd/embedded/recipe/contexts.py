"""Simulated rollout groups -> teacher prompts (phases 1-3 of the warm start and the held-out evaluation).

A group of ``GROUP_SIZE`` simulated rollouts (the correct answer or a plausible wrong one) goes through
``mopd.core.peers.select_peers`` and ``mopd.core.reprompt.render_teacher_messages`` exactly as training renders it;
the methods' contexts are the configurations their YAML/launch flags give ``mopd.core.peers``.
"""

from __future__ import annotations

import random

import torch

from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import Rollout, select_peers
from mopd.core.reprompt import render_teacher_messages
from mopd.embedded.embedded_task import compute_score, prompt_messages

GROUP_SIZE = 8


def peer_config() -> SelfDistillationConfig:
    """MOPD's 2-successes-1-failure context (trainer/config/mopd.yaml)."""
    return SelfDistillationConfig(
        include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"
    )


# The teacher contexts the methods render, as their YAML/launch flags configure mopd.core.peers: SDPO
# (sdpo.yaml: one success; the rollout's own feedback when no success is shown), MOPD 2S1F (mopd.yaml) and
# positive-only (mopd.yaml with INCLUDE_FAILURE_SOLUTION=False). The SFT mixture draws from all three, plus
# failure-only prompts (a failed peer, no feedback), so the base reads every context a method shows it.
def method_configs() -> dict[str, SelfDistillationConfig]:
    return {
        "sdpo": SelfDistillationConfig(),
        "mopd": peer_config(),
        "mopd_pos": SelfDistillationConfig(
            include_another_solution=True, include_failure_solution=False, failure_solution_condition="always"
        ),
    }


FAILURE_ONLY_FRACTION = 0.20  # of the context examples: a failed peer only (MOPD's all-failed group, no feedback)
NO_SUCCESS_FRACTION = 0.40  # of the other context examples: a group without a success (feedback, failed peer)


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
    """A plausible wrong answer, like the ones a weak student produces."""
    s = a + b
    while True:
        kind = rng.random()
        if kind < 0.30:
            w = s + rng.choice([-1, 1, -2, 2])
        elif kind < 0.50:
            w = s + rng.choice([-10, 10, -9, 9, -11, 11])
        elif kind < 0.60:  # forgot the carry
            w = (a // 10 + b // 10) * 10 + (a + b) % 10
        elif kind < 0.70:  # digits swapped
            w = int(str(s)[::-1])
        elif kind < 0.80:  # one operand misread
            w = s + rng.choice([-1, 1]) * rng.randint(1, 9) * rng.choice([1, 10])
        else:
            w = rng.randint(20, 198)
        if w != s and w >= 0:
            return str(w)


def context_messages(
    problem: dict,
    rng: random.Random,
    cfg: SelfDistillationConfig,
    *,
    n_correct: int | None = None,
    with_feedback: bool | None = None,
    require_success: bool = False,
) -> list[dict]:
    """Teacher messages for one simulated rollout of a simulated group of ``GROUP_SIZE`` rollouts.

    ``require_success``: only a rollout whose context shows a correct peer (phase 1 of the SFT).
    """
    return context_example(
        problem, rng, cfg, n_correct=n_correct, with_feedback=with_feedback, require_success=require_success
    )[0]


def context_example(
    problem: dict,
    rng: random.Random,
    cfg: SelfDistillationConfig,
    *,
    n_correct: int | None = None,
    with_feedback: bool | None = None,
    require_success: bool = False,
) -> tuple[list[dict], bool, set[str]]:
    """``context_messages`` plus what the context shows: whether a correct peer, and the wrong answers
    it names (the failed peer's, and the rollout's own when its verifier feedback is attached)."""
    answer = problem["answer"]
    while True:
        k = rng.randint(0, GROUP_SIZE) if n_correct is None else n_correct
        texts = [answer] * k + [wrong_answer(problem["a"], problem["b"], rng) for _ in range(GROUP_SIZE - k)]
        rng.shuffle(texts)
        feedback = rng.random() < 0.5 if with_feedback is None else with_feedback
        rollouts = []
        for text in texts:
            score = compute_score(text, answer)
            rollouts.append(
                Rollout(uid="u", reward=score["score"], text=text, feedback=score["feedback"] if feedback else None)
            )
        selection = select_peers(rollouts, cfg, rng)
        candidates = [
            i
            for i, ctx in enumerate(selection.contexts)
            if ctx.has_context and (ctx.shows_success or not require_success)
        ]
        if candidates:
            break
    i = rng.choice(candidates)
    ctx = selection.contexts[i]
    feedback = rollouts[i].feedback if ctx.use_feedback else None
    msgs, _ = render_teacher_messages(prompt_messages(problem), ctx, rollouts, feedback, cfg)
    named_wrong = {rollouts[ctx.failure].text} if ctx.failure is not None else set()
    if feedback and rollouts[i].reward <= 0:
        named_wrong.add(rollouts[i].text)
    return msgs, ctx.shows_success, named_wrong


def mixture_context_example(problem: dict, rng: random.Random) -> tuple[list[dict], bool, set[str]]:
    """One phase-3 teacher prompt from the method mixture (uniform over SDPO, MOPD 2S1F, positive-only;
    ``FAILURE_ONLY_FRACTION`` failure-only), as ``context_example`` returns it."""
    configs = method_configs()
    if rng.random() < FAILURE_ONLY_FRACTION:
        return context_example(problem, rng, configs["mopd"], n_correct=0, with_feedback=False)
    # Training always attaches the verifier's feedback; groups without a success are over-weighted (the
    # base fails every rollout of ~16% of the problems, and there SDPO's teacher sees only the feedback).
    k = 0 if rng.random() < NO_SUCCESS_FRACTION else rng.randint(1, GROUP_SIZE)
    return context_example(problem, rng, configs[rng.choice(sorted(configs))], n_correct=k, with_feedback=True)


def eval_group_messages(
    problem: dict, rng: random.Random, cfg: SelfDistillationConfig, n_correct: int, feedback: bool
) -> list[dict]:
    """Held-out teacher prompt of a *failed* rollout (rollout 0) in a group of ``GROUP_SIZE`` with
    ``n_correct`` successes, rendered with ``cfg`` (feedback: the verifier's feedback is attached)."""
    answer, (a, b) = problem["answer"], (problem["a"], problem["b"])
    others = [answer] * n_correct + [wrong_answer(a, b, rng) for _ in range(GROUP_SIZE - 1 - n_correct)]
    rng.shuffle(others)
    rollouts = []
    for text in [wrong_answer(a, b, rng)] + others:
        score = compute_score(text, answer)
        rollouts.append(
            Rollout(uid="u", reward=score["score"], text=text, feedback=score["feedback"] if feedback else None)
        )
    ctx = select_peers(rollouts, cfg, rng).contexts[0]
    msgs, _ = render_teacher_messages(
        prompt_messages(problem), ctx, rollouts, rollouts[0].feedback if ctx.use_feedback else None, cfg
    )
    return msgs


# name -> (method config, successes in the group, feedback attached, what the context shows)
EVAL_CONTEXTS = {
    "sdpo_one_success": ("sdpo", 1, True, "one correct peer (SDPO)"),
    "sdpo_feedback_only": ("sdpo", 0, True, "the rollout's own feedback only (SDPO, no success in the group)"),
    "mopd_2s1f": ("mopd", 3, True, "two correct peers and one failed peer (MOPD)"),
    "mopd_no_success": ("mopd", 0, True, "one failed peer and the own feedback (MOPD, no success)"),
    "positive_only_2s": ("mopd_pos", 3, True, "two correct peers (positive-only)"),
    "failure_only": ("mopd", 0, False, "one failed peer only"),
}


def eval_context_messages(problem: dict, rng: random.Random, cfg: SelfDistillationConfig) -> list[dict]:
    """Held-out teacher prompt of a failed rollout: one or two correct peers and one failed peer."""
    answer, (a, b) = problem["answer"], (problem["a"], problem["b"])
    peers = [answer] * rng.choice([1, 2]) + [wrong_answer(a, b, rng)]
    rng.shuffle(peers)
    texts = [wrong_answer(a, b, rng)] + peers  # rollout 0 is the one being re-prompted
    rollouts = [Rollout(uid="u", reward=compute_score(t, answer)["score"], text=t) for t in texts]
    ctx = select_peers(rollouts, cfg, rng).contexts[0]
    assert ctx.primary is not None and ctx.failure is not None
    msgs, _ = render_teacher_messages(prompt_messages(problem), ctx, rollouts, None, cfg)
    return msgs


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_examples(tokenizer, prompts: list[str], answers: list[str]):
    """Right-padded ``input_ids`` and ``labels`` (-100 except the answer tokens and ``<|im_end|>``)."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([a + tokenizer.eos_token for a in answers], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) for p, a in zip(p_ids, a_ids))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), -100, dtype=torch.long)
    for r, (p, a) in enumerate(zip(p_ids, a_ids)):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
    return ids, labels
