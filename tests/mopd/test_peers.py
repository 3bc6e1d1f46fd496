"""Table-driven tests for ``mopd.core.peers`` (peer selection), written from ``docs/algorithm_core.md`` §1-§2.

Every expectation below is derived by hand from the written contract (definitions of ``S_i`` / ``F_i``,
the normal-mode rules 1-5, the peer-control budget rules, the metric names).  Where §2 is silent on a
detail (e.g. what a metric counts) the doc's own rule applies: unmarked behaviour follows the public
MOPD release, so metrics are computed as the release computes them.  Cases are chosen so that the
expected values do not depend on anything the doc leaves open (e.g. the order of independent draws).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from mopd.core.config import SelfDistillationConfig
from mopd.core.peers import (
    Rollout,
    UidSuccessTracker,
    extract_summary,
    select_peers,
    strip_thinking,
)

P = "self_distillation/"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def S(uid: str, text: str | None = None, *, feedback=None, n=None, reward: float = 1.0) -> Rollout:
    """A successful rollout (reward 1.0 >= the default threshold 1.0)."""
    return Rollout(
        uid=uid, reward=reward, text=text if text is not None else f"success of {uid}", feedback=feedback, num_tokens=n
    )


def F(uid: str, text: str | None = None, *, feedback=None, n=None, reward: float = 0.0) -> Rollout:
    """A failed rollout (reward 0.0)."""
    return Rollout(
        uid=uid, reward=reward, text=text if text is not None else f"failure of {uid}", feedback=feedback, num_tokens=n
    )


def cfg(**kw) -> SelfDistillationConfig:
    return SelfDistillationConfig(**kw)


def is_success(r: Rollout, c: SelfDistillationConfig) -> bool:
    return r.reward >= c.success_reward_threshold


def S_i(rollouts, i, c):
    u = rollouts[i].uid
    return [
        j
        for j, r in enumerate(rollouts)
        if r.uid == u and is_success(r, c) and not (c.dont_reprompt_on_self_success and j == i)
    ]


def F_i(rollouts, i, c):
    u = rollouts[i].uid
    return [j for j, r in enumerate(rollouts) if r.uid == u and not is_success(r, c) and j != i]


def budget_slots(rollouts, i, c):
    """Normal-mode slots of §2 'Peer-control ablations': (success slot peers, failure slot peers)."""
    s, f = S_i(rollouts, i, c), F_i(rollouts, i, c)
    succ = []
    if c.include_primary_solution and s:
        succ.append(s[0])
    if c.include_another_solution and len(s) >= 2:
        succ.append(s[1])
    fail = []
    if c.include_failure_solution and f and (c.failure_solution_condition == "always" or not s):
        fail.append(f[0])
    return succ, fail


def other_uid_successes(rollouts, i, c):
    u = rollouts[i].uid
    return [j for j, r in enumerate(rollouts) if r.uid != u and is_success(r, c)]


def blocks_of(ctx):
    return [(b.index, b.label) for b in ctx.control_blocks]


def ctx_key(ctx):
    return (
        ctx.primary,
        ctx.another,
        ctx.failure,
        tuple(ctx.summaries),
        tuple(ctx.summary_texts),
        tuple((b.index, b.label) for b in ctx.control_blocks),
        ctx.use_feedback,
        ctx.has_context,
    )


def run(rollouts, config, seed: int = 0):
    """select_peers + the invariants every selection must satisfy."""
    rollouts = list(rollouts)
    sel = select_peers(rollouts, config, random.Random(seed))
    assert len(sel.contexts) == len(rollouts)
    assert len(sel.distillation_mask) == len(rollouts)
    for key, value in sel.metrics.items():
        assert key.startswith(P), key
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    for i, ctx in enumerate(sel.contexts):
        expected_ctx = any(
            [
                ctx.primary is not None,
                ctx.another is not None,
                ctx.failure is not None,
                len(ctx.summaries) > 0,
                len(ctx.control_blocks) > 0,
                bool(ctx.use_feedback),
            ]
        )
        assert ctx.has_context == expected_ctx, (i, ctx)
        assert sel.distillation_mask[i] == (1.0 if ctx.has_context else 0.0), (i, sel.distillation_mask)
        assert len(ctx.summary_texts) == len(ctx.summaries)
        u = rollouts[i].uid
        # the failure peer is never the rollout itself and always a failure of the same uid
        if ctx.failure is not None:
            assert ctx.failure != i
            assert rollouts[ctx.failure].uid == u
            assert not is_success(rollouts[ctx.failure], config)
        for peer in (ctx.primary, ctx.another):
            if peer is not None:
                assert rollouts[peer].uid == u
                assert is_success(rollouts[peer], config)
                if config.dont_reprompt_on_self_success:
                    assert peer != i
        for j in ctx.summaries:
            assert rollouts[j].uid == u
            assert j not in (ctx.primary, ctx.another, ctx.failure)
        assert len(set(ctx.summaries)) == len(ctx.summaries)
    return sel


# ------------------------------------------------------------------------------------------------
# strip_thinking / extract_summary
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("<think>abc</think>\n\nAnswer", "Answer", id="block_and_following_whitespace"),
        pytest.param("<think>\nline1\nline2\n</think>\nOK", "OK", id="multiline_block"),
        pytest.param("pre <think>x</think>  mid <think>y\nz</think>\tend", "pre mid end", id="every_block"),
        pytest.param("<think>a</think>X<think>b</think>Y", "XY", id="non_greedy"),
        pytest.param("<think>only</think>", "", id="only_thinking"),
        pytest.param("no thinking here\n", "no thinking here\n", id="untouched"),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


@pytest.mark.parametrize(
    "text, tag, expected",
    [
        pytest.param("foo <summary>  A plan \n</summary> bar", "summary", "A plan", id="stripped"),
        pytest.param("<summary>first</summary> <summary>second</summary>", "summary", "first", id="first_tag"),
        pytest.param("<summary>multi\nline</summary>", "summary", "multi\nline", id="multiline"),
        pytest.param("no tags at all", "summary", None, id="missing"),
        pytest.param("<summary>unclosed", "summary", None, id="unclosed"),
        pytest.param("<gist>g</gist><summary>s</summary>", "gist", "g", id="custom_tag"),
        pytest.param("<summary>s</summary>", "gist", None, id="other_tag_only"),
    ],
)
def test_extract_summary(text, tag, expected):
    assert extract_summary(text, tag) == expected


def test_rollout_is_frozen():
    r = Rollout("u", 1.0, "t")
    assert r.feedback is None and r.num_tokens is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.reward = 0.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# normal mode: primary / another / failure
# ------------------------------------------------------------------------------------------------
# Expected per rollout: (primary, another, failure) where failure is None (must be None) or a set of
# allowed indices (the draw is random).
G5 = [S("A"), F("A"), S("A"), F("A"), S("A")]  # successes 0,2,4 ; failures 1,3

NORMAL_CASES = [
    pytest.param(
        [S("A")] * 4, dict(), [(1, None, None), (0, None, None), (0, None, None), (0, None, None)], id="all_succeed"
    ),
    pytest.param(
        [S("A")] * 4,
        dict(include_another_solution=True),
        [(1, 2, None), (0, 2, None), (0, 1, None), (0, 1, None)],
        id="all_succeed_another",
    ),
    pytest.param(
        [F("A")] * 3,
        dict(include_another_solution=True, include_failure_solution=True),
        [(None, None, {1, 2}), (None, None, {0, 2}), (None, None, {0, 1})],
        id="all_fail",
    ),
    pytest.param([F("A")] * 3, dict(), [(None, None, None)] * 3, id="all_fail_no_failure_peer"),
    pytest.param(
        [F("A"), S("A"), F("A")],
        dict(include_another_solution=True, include_failure_solution=True),
        [(1, None, None), (None, None, {0, 2}), (1, None, None)],
        id="exactly_one_success",
    ),
    pytest.param(
        [F("A"), S("B"), S("A"), F("B"), S("A"), S("B")],
        dict(include_another_solution=True),
        [(2, 4, None), (5, None, None), (4, None, None), (1, 5, None), (2, None, None), (1, None, None)],
        id="two_groups_interleaved",
    ),
    pytest.param(
        [S("B"), S("A"), S("B"), S("A")],
        dict(),
        [(2, None, None), (3, None, None), (0, None, None), (1, None, None)],
        id="interleaved_first_success_in_rollout_order",
    ),
    pytest.param(
        [S("A"), F("A"), S("A")],
        dict(include_another_solution=True, dont_reprompt_on_self_success=True),
        [(2, None, None), (0, 2, None), (0, None, None)],
        id="self_exclusion_on",
    ),
    pytest.param(
        [S("A"), F("A"), S("A")],
        dict(include_another_solution=True, dont_reprompt_on_self_success=False),
        [(0, 2, None), (0, 2, None), (0, 2, None)],
        id="self_exclusion_off_own_primary",
    ),
    pytest.param(
        [S("A")], dict(dont_reprompt_on_self_success=False), [(0, None, None)], id="self_exclusion_off_lone_success"
    ),
    pytest.param(
        [S("A")], dict(dont_reprompt_on_self_success=True), [(None, None, None)], id="self_exclusion_on_lone_success"
    ),
    pytest.param(
        [S("A"), F("A")],
        dict(dont_reprompt_on_self_success=False, include_failure_solution=True),
        [(0, None, None), (0, None, None)],
        id="self_success_suppresses_when_no_solution_failure",
    ),
    # include combinations on G5
    pytest.param(
        G5, dict(), [(2, None, None), (0, None, None), (0, None, None), (0, None, None), (0, None, None)], id="combo_P"
    ),
    pytest.param(
        G5,
        dict(include_another_solution=True),
        [(2, 4, None), (0, 2, None), (0, 4, None), (0, 2, None), (0, 2, None)],
        id="combo_PA",
    ),
    pytest.param(
        G5,
        dict(include_primary_solution=False, include_another_solution=True),
        [(None, 4, None), (None, 2, None), (None, 4, None), (None, 2, None), (None, 2, None)],
        id="combo_A_only",
    ),
    pytest.param(
        G5,
        dict(include_another_solution=True, include_failure_solution=True),
        [(2, 4, None), (0, 2, None), (0, 4, None), (0, 2, None), (0, 2, None)],
        id="combo_PAF_when_no_solution",
    ),
    pytest.param(
        G5,
        dict(include_failure_solution=True, failure_solution_condition="always"),
        [(2, None, {1, 3}), (0, None, {3}), (0, None, {1, 3}), (0, None, {1}), (0, None, {1, 3})],
        id="combo_PF_always",
    ),
    pytest.param(
        G5,
        dict(include_primary_solution=False, include_failure_solution=True),
        [(None, None, None)] * 5,
        id="combo_F_when_no_solution_but_S_nonempty",
    ),
    pytest.param(
        G5,
        dict(include_primary_solution=False, include_failure_solution=True, failure_solution_condition="always"),
        [(None, None, {1, 3}), (None, None, {3}), (None, None, {1, 3}), (None, None, {1}), (None, None, {1, 3})],
        id="combo_F_always",
    ),
    pytest.param(G5, dict(include_primary_solution=False), [(None, None, None)] * 5, id="combo_none"),
    pytest.param(
        [F("A"), F("A"), S("A")],
        dict(include_failure_solution=True),
        [(2, None, None), (2, None, None), (None, None, {0, 1})],
        id="when_no_solution_lone_success",
    ),
    pytest.param(
        [F("A"), F("A"), S("A")],
        dict(include_failure_solution=True, failure_solution_condition="always"),
        [(2, None, {1}), (2, None, {0}), (None, None, {0, 1})],
        id="always_lone_success",
    ),
    # success_reward_threshold boundary: reward == threshold is a success
    pytest.param(
        [S("A", reward=0.5), F("A", reward=0.4999), S("A", reward=0.75), F("A", reward=0.0)],
        dict(success_reward_threshold=0.5, include_another_solution=True, include_failure_solution=True),
        [(2, None, None), (0, 2, None), (0, None, None), (0, 2, None)],
        id="threshold_equal_is_success",
    ),
    pytest.param(
        [F("A", reward=0.999999), S("A", reward=1.0)],
        dict(include_failure_solution=True),
        [(1, None, None), (None, None, {0})],
        id="threshold_just_below_is_failure",
    ),
    pytest.param(
        [S("A", reward=0.0), F("A", reward=-1.0)],
        dict(success_reward_threshold=-0.5, include_failure_solution=True),
        [(None, None, {1}), (0, None, None)],
        id="threshold_negative",
    ),
    pytest.param(
        [S("A", reward=1.0), S("A", reward=1.0)],
        dict(success_reward_threshold=1.5),
        [(None, None, None), (None, None, None)],
        id="threshold_above_all_rewards",
    ),
]


@pytest.mark.parametrize("rollouts, kwargs, expected", NORMAL_CASES)
def test_normal_mode_table(rollouts, kwargs, expected):
    c = cfg(include_environment_feedback=False, **kwargs)
    for seed in range(6):  # the failure draw is random: every seed must respect the expectation
        sel = run(rollouts, c, seed)
        got = [(ctx.primary, ctx.another, ctx.failure) for ctx in sel.contexts]
        for i, ((p, a, f), ctx) in enumerate(zip(expected, sel.contexts)):
            assert (ctx.primary, ctx.another) == (p, a), (i, got)
            if f is None:
                assert ctx.failure is None, (i, got)
            else:
                assert ctx.failure in f, (i, got)
            assert ctx.summaries == () and ctx.control_blocks == ()
            assert ctx.has_context == (p is not None or a is not None or f is not None)


def test_no_context_fields_are_empty():
    rollouts = [S("A"), F("B"), S("C", feedback="   ")]
    c = cfg(include_another_solution=True, include_failure_solution=True, summarize_solutions=True)
    sel = run(rollouts, c)
    assert sel.distillation_mask == [0.0, 0.0, 0.0]
    for ctx in sel.contexts:
        assert ctx.primary is None and ctx.another is None and ctx.failure is None
        assert tuple(ctx.summaries) == () and tuple(ctx.summary_texts) == ()
        assert tuple(ctx.control_blocks) == ()
        assert ctx.use_feedback is False
        assert ctx.has_context is False
    assert sel.metrics[P + "reprompt_sample_fraction"] == 0.0


def test_context_field_types():
    sel = run(
        [S("A", "<summary>x</summary>"), S("A", "<summary>y</summary>"), S("A")],
        cfg(summarize_solutions=True, summary_k=5),
    )
    ctx = sel.contexts[0]
    assert isinstance(ctx.summaries, tuple) and isinstance(ctx.summary_texts, tuple)
    assert isinstance(ctx.control_blocks, tuple)
    assert isinstance(sel.distillation_mask, list) and all(isinstance(m, float) for m in sel.distillation_mask)


# ------------------------------------------------------------------------------------------------
# failure draw: seeded generator only
# ------------------------------------------------------------------------------------------------
ALL_FAIL4 = [F("A"), F("A"), F("A"), F("A")]


def test_failure_draw_is_rng_choice_in_rollout_order():
    """Only failure draws happen here, so the generator is consumed exactly as rule 3 says."""
    c = cfg(include_failure_solution=True)
    for seed in range(25):
        sel = run(ALL_FAIL4, c, seed)
        ref = random.Random(seed)
        expected = [ref.choice(F_i(ALL_FAIL4, i, c)) for i in range(4)]
        assert [ctx.failure for ctx in sel.contexts] == expected, seed


def test_failure_draw_reproducible_and_varies_with_seed():
    c = cfg(include_failure_solution=True, failure_solution_condition="always")
    rollouts = [F("A"), S("A"), F("A"), F("A"), S("B"), F("B")]
    picks = {i: set() for i in range(len(rollouts))}
    outcomes = set()
    for seed in range(200):
        a = run(rollouts, c, seed)
        b = run(rollouts, c, seed)
        assert [ctx_key(x) for x in a.contexts] == [ctx_key(x) for x in b.contexts]
        for i, ctx in enumerate(a.contexts):
            picks[i].add(ctx.failure)
        outcomes.add(tuple(ctx.failure for ctx in a.contexts))
    for i in range(len(rollouts)):  # every eligible failure is picked at least once
        eligible = set(F_i(rollouts, i, c)) or {None}
        assert picks[i] == eligible, (i, picks[i])
    assert len(outcomes) > 1


@pytest.mark.parametrize(
    "rollouts, kwargs",
    [
        pytest.param(
            [S("A"), S("A"), F("A")],
            dict(include_failure_solution=True),
            id="failure_on_but_every_rollout_has_a_success",
        ),
        pytest.param(
            [F("A"), S("B")],
            dict(include_failure_solution=True, failure_solution_condition="always"),
            id="failure_on_but_no_other_failure",
        ),
        pytest.param([S("A"), S("B"), F("C")], dict(summarize_solutions=True, summary_k=3), id="summary_pools_empty"),
        pytest.param(
            [S("A"), S("A")],
            dict(summarize_solutions=True, include_another_solution=False),
            id="summary_pool_empty_after_primary",
        ),
        pytest.param([S("A"), F("B"), S("C")], dict(peer_control_mode="unrelated_prompt"), id="control_no_slots"),
        pytest.param(
            [S("A"), F("A"), F("B")],
            dict(peer_control_mode="random_peer", include_primary_solution=False),
            id="control_random_peer_no_slots",
        ),
        pytest.param([S("A"), S("A"), F("A")], dict(), id="defaults"),
    ],
)
def test_generator_untouched_when_no_draw_is_needed(rollouts, kwargs):
    rng = random.Random(1234)
    before = rng.getstate()
    sel = select_peers(list(rollouts), cfg(**kwargs), rng)
    assert rng.getstate() == before
    assert len(sel.contexts) == len(rollouts)


def _exercising_configs():
    return [
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            summarize_solutions=True,
            summary_k=2,
            summary_source="all",
        ),
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            peer_control_mode="random_peer",
        ),
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            peer_control_mode="unrelated_prompt",
            peer_control_match="token",
        ),
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            peer_control_mode="unrelated_prompt",
            peer_control_match="block",
        ),
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            peer_control_mode="success_only_matched",
            peer_control_match="token",
        ),
        cfg(
            include_another_solution=True,
            include_failure_solution=True,
            failure_solution_condition="always",
            peer_control_mode="success_only_matched",
            peer_control_match="block",
        ),
    ]


MIXED = [
    S("A", "<summary>a0</summary>", n=5),
    F("A", "f1", n=6),
    S("A", "s2", n=7),
    F("A", "f3", n=8),
    F("A", "<summary>a4</summary>", n=9),
    S("B", "b5", n=3),
    S("B", "b6", n=4),
    F("B", "b7", n=2),
    S("C", "c8", n=11),
    F("C", "c9", n=1),
]


def test_global_random_module_never_used(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the global random module was used")

    for name in (
        "choice",
        "choices",
        "sample",
        "shuffle",
        "random",
        "randrange",
        "randint",
        "uniform",
        "getrandbits",
        "seed",
    ):
        monkeypatch.setattr(random, name, boom)
    for c in _exercising_configs():
        sel = select_peers(list(MIXED), c, random.Random(7))
        assert sum(sel.distillation_mask) > 0


def test_global_random_state_irrelevant_and_untouched():
    for c in _exercising_configs():
        random.seed(1)
        state = random.getstate()
        a = select_peers(list(MIXED), c, random.Random(99))
        assert random.getstate() == state  # never touched
        random.seed(2)
        for _ in range(17):
            random.random()
        b = select_peers(list(MIXED), c, random.Random(99))
        assert [ctx_key(x) for x in a.contexts] == [ctx_key(x) for x in b.contexts]
        assert a.metrics == b.metrics


# ------------------------------------------------------------------------------------------------
# environment feedback
# ------------------------------------------------------------------------------------------------
FB = [
    S("A", feedback="fb0"),
    F("A", feedback="fb1"),
    F("A", feedback="   \n\t"),
    F("A"),
    F("B", feedback="fb4"),
    F("B", feedback=""),
]


@pytest.mark.parametrize(
    "kwargs, expected_use, expected_mask",
    [
        pytest.param(
            dict(), [True, False, False, False, True, False], [1, 1, 1, 1, 1, 0], id="default_only_without_solution"
        ),
        pytest.param(
            dict(environment_feedback_only_without_solution=False),
            [True, True, False, False, True, False],
            [1, 1, 1, 1, 1, 0],
            id="only_without_solution_off",
        ),
        pytest.param(dict(include_environment_feedback=False), [False] * 6, [0, 1, 1, 1, 0, 0], id="feedback_disabled"),
        pytest.param(
            dict(include_primary_solution=False),
            [True, True, False, False, True, False],
            [1, 1, 0, 0, 1, 0],
            id="no_success_shown_when_primary_off",
        ),
        pytest.param(
            dict(include_primary_solution=False, environment_feedback_only_without_solution=False),
            [True, True, False, False, True, False],
            [1, 1, 0, 0, 1, 0],
            id="primary_off_always",
        ),
    ],
)
def test_environment_feedback(kwargs, expected_use, expected_mask):
    sel = run(FB, cfg(**kwargs))
    assert [ctx.use_feedback for ctx in sel.contexts] == expected_use
    assert sel.distillation_mask == [float(m) for m in expected_mask]
    n = len(FB)
    assert sel.metrics[P + "feedback_used_fraction"] == pytest.approx(sum(expected_use) / n)
    if kwargs.get("include_environment_feedback", True):
        # blank / empty / missing feedback is not available: only fb0, fb1, fb4 are
        assert sel.metrics[P + "feedback_available_fraction"] == pytest.approx(3 / n)


def test_feedback_another_solution_counts_as_shown_success():
    """Rule 5: with only_without_solution, feedback is used only when *no success is shown*;
    a second successful peer shown in full is a shown success."""
    rollouts = [S("A"), S("A"), F("A", feedback="you were wrong")]
    sel = run(rollouts, cfg(include_primary_solution=False, include_another_solution=True))
    ctx = sel.contexts[2]
    assert ctx.primary is None and ctx.another == 1
    assert ctx.use_feedback is False


def test_feedback_only_context():
    sel = run([F("A", feedback="compile error")], cfg())
    ctx = sel.contexts[0]
    assert ctx.use_feedback is True and ctx.has_context is True
    assert (ctx.primary, ctx.another, ctx.failure) == (None, None, None)
    assert sel.distillation_mask == [1.0]


# ------------------------------------------------------------------------------------------------
# summaries
# ------------------------------------------------------------------------------------------------
SFSF = [
    S("A", "<summary>s0</summary>"),
    F("A", "<summary>f1</summary>"),
    S("A", "<summary>s2</summary>"),
    F("A", "<summary>f3</summary>"),
]
SSSS = [S("A", f"<summary>t{j}</summary>") for j in range(4)]

SUMMARY_POOL_CASES = [
    pytest.param(
        SFSF,
        dict(include_primary_solution=False, summary_source="success"),
        [{2}, {0, 2}, {0}, {0, 2}],
        id="source_success",
    ),
    pytest.param(
        SFSF,
        dict(include_primary_solution=False, summary_source="all"),
        [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}],
        id="source_all",
    ),
    pytest.param(
        SFSF,
        dict(include_primary_solution=False, summary_source="failure"),
        [{1, 3}, {3}, {1, 3}, {1}],
        id="source_failure",
    ),
    pytest.param(
        SFSF,
        dict(include_primary_solution=False, summary_source="success", summary_from_all=True),
        [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}],
        id="summary_from_all_overrides_success",
    ),
    pytest.param(
        SFSF,
        dict(include_primary_solution=False, summary_source="failure", summary_from_all=True),
        [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}],
        id="summary_from_all_overrides_failure",
    ),
    pytest.param(SFSF, dict(summary_source="all"), [{1, 3}, {2, 3}, {1, 3}, {1, 2}], id="pool_excludes_primary"),
    pytest.param(
        SSSS, dict(include_another_solution=True), [{3}, {3}, {3}, {2}], id="pool_excludes_primary_and_another"
    ),
    pytest.param(
        SSSS,
        dict(dont_reprompt_on_self_success=False),
        [{1, 2, 3}, {1, 2, 3}, {1, 2, 3}, {1, 2, 3}],
        id="self_not_excluded_when_self_reprompt_allowed",
    ),
    pytest.param(
        [S("A", "<summary>x</summary>"), S("B"), S("A"), S("B"), F("A")],
        dict(include_primary_solution=False, summary_source="all"),
        [{2, 4}, {3}, {0, 4}, {1}, {0, 2}],
        id="pool_same_uid_only",
    ),
    pytest.param(
        [S("A"), S("A"), F("A")], dict(summary_source="all", summary_k=10), [{2}, {2}, {1}], id="k_larger_than_pool"
    ),
    pytest.param([S("A"), F("B")], dict(summary_source="all"), [set(), set()], id="empty_pools"),
]


@pytest.mark.parametrize("rollouts, kwargs, expected", SUMMARY_POOL_CASES)
def test_summary_pool(rollouts, kwargs, expected):
    kwargs = {"summary_k": 10, **kwargs}
    c = cfg(summarize_solutions=True, include_environment_feedback=False, **kwargs)
    for seed in range(4):
        sel = run(rollouts, c, seed)
        for i, (ctx, exp) in enumerate(zip(sel.contexts, expected)):
            assert set(ctx.summaries) == exp, (i, ctx.summaries)
            assert len(ctx.summaries) == min(c.summary_k, len(exp))
            if not c.dont_reprompt_on_self_success:
                continue
            assert i not in ctx.summaries


def test_summary_pool_excludes_failure_peer():
    rollouts = [F("A", "<summary>0</summary>"), F("A", "<summary>1</summary>"), F("A", "<summary>2</summary>")]
    c = cfg(summarize_solutions=True, summary_k=10, summary_source="failure", include_failure_solution=True)
    seen = set()
    for seed in range(30):
        sel = run(rollouts, c, seed)
        for i, ctx in enumerate(sel.contexts):
            assert ctx.failure is not None
            assert set(ctx.summaries) == set(F_i(rollouts, i, c)) - {ctx.failure}
            assert len(ctx.summaries) == 1
            assert ctx.summary_texts == (str(ctx.summaries[0]),)
            seen.add((i, ctx.failure))
    assert len(seen) == 6  # both choices occurred for every rollout


def test_summary_k_smaller_than_pool():
    rollouts = [S("A", f"<summary>t{j}</summary>") for j in range(6)]
    c = cfg(summarize_solutions=True, summary_k=2)
    chosen = set()
    for seed in range(40):
        sel = run(rollouts, c, seed)
        for i, ctx in enumerate(sel.contexts):
            pool = set(S_i(rollouts, i, c)) - {ctx.primary}
            assert len(ctx.summaries) == 2 and set(ctx.summaries) <= pool
            assert ctx.summary_texts == tuple(f"t{j}" for j in ctx.summaries)
        chosen.add(sel.contexts[0].summaries)
    assert len(chosen) > 3  # the draw depends on the seed


def test_summary_draw_is_rng_sample_in_rollout_order():
    """Only summary draws happen (no failure peer), so the generator is consumed as rule 4 says."""
    rollouts = [S("A", f"<summary>t{j}</summary>") for j in range(5)] + [F("A", "<summary>bad</summary>")]
    c = cfg(summarize_solutions=True, summary_k=2, summary_source="all")
    for seed in range(15):
        sel = run(rollouts, c, seed)
        ref = random.Random(seed)
        for i, ctx in enumerate(sel.contexts):
            primary = S_i(rollouts, i, c)[0]
            assert ctx.primary == primary
            pool = [j for j in range(len(rollouts)) if j != i and j != primary]
            expected = tuple(ref.sample(pool, min(2, len(pool))))
            assert tuple(ctx.summaries) == expected, (seed, i)
            texts = tuple("bad" if j == 5 else f"t{j}" for j in expected)
            assert tuple(ctx.summary_texts) == texts


@pytest.mark.parametrize(
    "peer_text, kwargs, expected",
    [
        pytest.param(
            "intro <summary>  Use induction on n.  </summary> tail", dict(), "Use induction on n.", id="tag_present"
        ),
        pytest.param("<summary>one</summary><summary>two</summary>", dict(), "one", id="first_tag"),
        pytest.param("abcdefghijklmnop", dict(summary_fallback_chars=5), "abcde", id="fallback_first_n"),
        pytest.param("short", dict(summary_fallback_chars=300), "short", id="fallback_shorter_than_n"),
        pytest.param("x" * 400, dict(), "x" * 300, id="fallback_default_300"),
        pytest.param(
            "head <summary>   </summary> rest", dict(summary_fallback_chars=9), "head <sum", id="blank_tag_falls_back"
        ),
        pytest.param(
            "<gist>the gist</gist> <summary>no</summary>", dict(summary_tag="gist"), "the gist", id="custom_tag"
        ),
        pytest.param(
            "<summary>no</summary> body",
            dict(summary_tag="gist", summary_fallback_chars=7),
            "<summary"[:7],
            id="custom_tag_missing_falls_back",
        ),
        pytest.param(
            "<think>plan it</think>\n  Visible answer text",
            dict(summary_fallback_chars=7),
            "<think>",
            id="fallback_keeps_thinking_by_default",
        ),
        pytest.param(
            "<think>plan it</think>\n  Visible answer text",
            dict(summary_fallback_chars=7, remove_thinking_from_demonstration=True),
            "Visible",
            id="fallback_think_stripped",
        ),
        pytest.param(
            "<think>a</think>Ans<think>b</think> wer and more",
            dict(summary_fallback_chars=6, remove_thinking_from_demonstration=True),
            "Answer",
            id="fallback_think_stripped_every_block",
        ),
    ],
)
@pytest.mark.parametrize("peer_success", [True, False], ids=["success_peer", "failed_peer"])
def test_summary_text(peer_text, kwargs, expected, peer_success):
    peer = S("A", peer_text) if peer_success else F("A", peer_text)
    rollouts = [F("A", "me"), peer]
    c = cfg(
        summarize_solutions=True,
        include_primary_solution=False,
        summary_source="all",
        include_environment_feedback=False,
        **kwargs,
    )
    sel = run(rollouts, c)
    ctx = sel.contexts[0]
    assert ctx.summaries == (1,)
    assert ctx.summary_texts == (expected,)
    m = sel.metrics
    # rollout 0 samples the peer; rollout 1 samples rollout 0 (a failure)
    assert m[P + "summary_sampled_total_count"] == 2
    assert m[P + "summary_sampled_success_count"] == (1 if peer_success else 0)
    assert m[P + "summary_sampled_failure_count"] == (1 if peer_success else 2)


def test_summary_failed_peers_flagged_in_metrics():
    """The failed-item template is used for failed peers: counted in summary_sampled_failure_count."""
    rollouts = [S("A", "<summary>s</summary>"), F("A", "<summary>f</summary>"), F("A", "raw text")]
    c = cfg(summarize_solutions=True, include_primary_solution=False, summary_source="all", summary_k=10)
    sel = run(rollouts, c)
    m = sel.metrics
    # i0: {1,2} (2 failed), i1: {0,2} (1 success, 1 failed), i2: {0,1} (1 success, 1 failed)
    assert m[P + "summary_sampled_total_count"] == 6
    assert m[P + "summary_sampled_success_count"] == 2
    assert m[P + "summary_sampled_failure_count"] == 4
    assert m[P + "summary_sampled_with_tag_count"] == 4
    assert m[P + "summary_sampled_fallback_count"] == 2
    texts = {j: t for ctx in sel.contexts for j, t in zip(ctx.summaries, ctx.summary_texts)}
    assert texts == {0: "s", 1: "f", 2: "raw text"}


def test_remove_thinking_does_not_touch_tag_text_and_only_affects_fallback():
    peer_tag = "<think>hidden</think> <summary>kept</summary>"
    peer_raw = "<think>hidden</think>\nshown"
    rollouts = [F("A", "me"), S("A", peer_tag), F("A", peer_raw)]
    for remove, raw_expected in ((False, peer_raw), (True, "shown")):
        c = cfg(
            summarize_solutions=True,
            include_primary_solution=False,
            summary_source="all",
            summary_k=5,
            remove_thinking_from_demonstration=remove,
        )
        ctx = run(rollouts, c).contexts[0]
        texts = dict(zip(ctx.summaries, ctx.summary_texts))
        assert texts == {1: "kept", 2: raw_expected}


# ------------------------------------------------------------------------------------------------
# peer-control ablations
# ------------------------------------------------------------------------------------------------
RP_GROUP = [
    S("A", n=10),
    S("A", n=20),
    F("A", n=30),
    F("A", n=40),
    S("A", n=50),
    S("B", n=60),
    F("C", n=5),
    F("C", n=6),
]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(), id="P"),
        pytest.param(dict(include_another_solution=True), id="PA"),
        pytest.param(dict(include_another_solution=True, include_failure_solution=True), id="PAF_when_no_solution"),
        pytest.param(
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            id="PAF_always",
        ),
        pytest.param(
            dict(include_primary_solution=False, include_failure_solution=True, failure_solution_condition="always"),
            id="F_always",
        ),
    ],
)
def test_random_peer_block(kwargs):
    c = cfg(
        peer_control_mode="random_peer",
        peer_control_match="block",
        include_environment_feedback=False,
        summarize_solutions=True,
        **kwargs,
    )
    firsts = set()
    for seed in range(40):
        sel = run(RP_GROUP, c, seed)
        for i, ctx in enumerate(sel.contexts):
            succ, fail = budget_slots(RP_GROUP, i, c)
            idx = [b.index for b in ctx.control_blocks]
            labels = [b.label for b in ctx.control_blocks]
            assert len(idx) == len(succ) + len(fail), (i, idx)  # same number of blocks as the normal mode
            assert labels == ["success"] * len(succ) + ["failure"] * len(fail)  # slot labels
            assert len(set(idx)) == len(idx)
            for j in idx:
                assert j != i and RP_GROUP[j].uid == RP_GROUP[i].uid
            assert ctx.summaries == ()  # summaries are not used by the ablations
            assert ctx.has_context == bool(idx)
        if sel.contexts[0].control_blocks:
            firsts.add(sel.contexts[0].control_blocks[0].index)
    if budget_slots(RP_GROUP, 0, c)[0]:
        assert firsts == {1, 2, 3, 4}  # the peer is drawn at random from all others of the group


@pytest.mark.parametrize(
    "rollouts, kwargs, expected",
    [
        pytest.param(
            [S("A", n=100), F("A", n=5), S("A", n=5), S("A", n=7)],
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            [
                [(1, "success"), (3, "success"), (2, "failure")],
                [(0, "success"), (2, "success")],
                [(0, "success"), (3, "success"), (1, "failure")],
                [(0, "success"), (1, "success"), (2, "failure")],
            ],
            id="closest_length_ties_to_earliest_labels_from_slots",
        ),
        pytest.param(
            [S("A", n=10), S("A", n=20), F("A", n=30), F("A", n=40), S("A", n=50), S("B", n=60)],
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            [
                [(1, "success"), (4, "success"), (2, "failure")],
                [(0, "success"), (4, "success"), (2, "failure")],
                [(0, "success"), (1, "success"), (3, "failure")],
                [(0, "success"), (1, "success"), (2, "failure")],
                [(0, "success"), (1, "success"), (2, "failure")],
                [],
            ],
            id="exact_lengths",
        ),
        pytest.param(
            [F("A", n=9), F("A", n=3), F("A", n=4), F("A", n=8)],
            dict(include_failure_solution=True),
            # slot = len(F_i[0]); closest remaining peer
            [[(1, "failure")], [(0, "failure")], [(0, "failure")], [(0, "failure")]],
            id="failure_slot_only",
        ),
    ],
)
def test_random_peer_token_is_deterministic(rollouts, kwargs, expected):
    c = cfg(peer_control_mode="random_peer", peer_control_match="token", include_environment_feedback=False, **kwargs)
    for seed in range(3):
        rng = random.Random(seed)
        before = rng.getstate()
        sel = select_peers(list(rollouts), c, rng)
        assert [blocks_of(ctx) for ctx in sel.contexts] == expected
        assert rng.getstate() == before  # token matching for random_peer uses no randomness
        assert sel.distillation_mask == [1.0 if e else 0.0 for e in expected]


UP_GROUP = [S("A"), S("A"), F("A"), S("B"), F("B"), S("C"), S("C"), F("D")]


@pytest.mark.parametrize(
    "rollouts, kwargs",
    [
        pytest.param(UP_GROUP, dict(), id="P"),
        pytest.param(UP_GROUP, dict(include_another_solution=True), id="PA"),
        pytest.param(
            UP_GROUP,
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            id="PAF_always",
        ),
        pytest.param(
            [S("A"), S("A"), S("A"), S("B"), F("A")],
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            id="fewer_candidates_than_blocks",
        ),
    ],
)
def test_unrelated_prompt_block(rollouts, kwargs):
    c = cfg(
        peer_control_mode="unrelated_prompt", peer_control_match="block", include_environment_feedback=False, **kwargs
    )
    draws = set()
    for seed in range(30):
        sel = run(rollouts, c, seed)
        for i, ctx in enumerate(sel.contexts):
            succ, fail = budget_slots(rollouts, i, c)
            n_blocks = len(succ) + len(fail)
            cands = other_uid_successes(rollouts, i, c)
            idx = [b.index for b in ctx.control_blocks]
            assert len(idx) == min(n_blocks, len(cands)), (i, idx)
            assert all(b.label == "success" for b in ctx.control_blocks)
            assert len(set(idx)) == len(idx) and set(idx) <= set(cands)
        draws.add(tuple(tuple(blocks_of(ctx)) for ctx in sel.contexts))
    if rollouts is UP_GROUP:
        assert len(draws) > 1  # several candidates per draw: the result depends on the seed


def test_unrelated_prompt_block_single_draw_matches_rng_sample():
    """Only rollout 1 has a slot (primary of uid A); candidates are the other uids' successes."""
    rollouts = [S("A"), F("A"), S("B"), S("C"), S("D"), S("E")]
    c = cfg(peer_control_mode="unrelated_prompt", include_environment_feedback=False)
    for seed in range(20):
        sel = run(rollouts, c, seed)
        expected = random.Random(seed).sample([2, 3, 4, 5], 1)
        assert blocks_of(sel.contexts[1]) == [(expected[0], "success")]
        assert [bool(ctx.control_blocks) for ctx in sel.contexts] == [False, True, False, False, False, False]


UT_GROUPS = [
    [S("A", n=10), S("A", n=30), F("A", n=5), S("B", n=7), S("B", n=8), S("B", n=9), S("B", n=20), F("C", n=3)],
    [S("A", n=50), S("A", n=60), F("A", n=1), S("B", n=5), S("B", n=6)],  # candidates too short for A
]


@pytest.mark.parametrize("rollouts", [pytest.param(g, id=f"group{k}") for k, g in enumerate(UT_GROUPS)])
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(), id="P"),
        pytest.param(dict(include_another_solution=True), id="PA"),
        pytest.param(
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            id="PAF_always",
        ),
    ],
)
def test_unrelated_prompt_token(rollouts, kwargs):
    c = cfg(
        peer_control_mode="unrelated_prompt", peer_control_match="token", include_environment_feedback=False, **kwargs
    )
    for seed in range(25):
        sel = run(rollouts, c, seed)
        for i, ctx in enumerate(sel.contexts):
            succ, fail = budget_slots(rollouts, i, c)
            target = sum(rollouts[j].num_tokens for j in succ + fail)
            cands = other_uid_successes(rollouts, i, c)
            idx = [b.index for b in ctx.control_blocks]
            assert all(b.label == "success" for b in ctx.control_blocks)
            assert len(set(idx)) == len(idx) and set(idx) <= set(cands)
            lens = [rollouts[j].num_tokens for j in idx]
            if not succ and not fail:
                assert idx == []
            elif sum(rollouts[j].num_tokens for j in cands) >= target:
                assert sum(lens) >= target, (i, idx, target)  # reaches the target token sum ...
                assert sum(lens[:-1]) < target, (i, idx, target)  # ... and stops as soon as it does
            else:
                assert set(idx) == set(cands)  # every candidate taken, still short


SO_BLOCK = [S("A"), S("A"), F("A"), F("A"), S("B"), S("B"), S("B")]


def test_success_only_matched_block_with_topup():
    c = cfg(
        peer_control_mode="success_only_matched",
        peer_control_match="block",
        include_another_solution=True,
        include_failure_solution=True,
        failure_solution_condition="always",
        include_environment_feedback=False,
    )
    expected_n = [2, 2, 3, 3, 2, 2, 2]
    for seed in range(30):
        sel = run(SO_BLOCK, c, seed)
        for i, ctx in enumerate(sel.contexts):
            succ, fail = budget_slots(SO_BLOCK, i, c)
            assert len(succ) + len(fail) == expected_n[i]
            own = S_i(SO_BLOCK, i, c)
            others = other_uid_successes(SO_BLOCK, i, c)
            idx = [b.index for b in ctx.control_blocks]
            assert len(idx) == expected_n[i], (i, idx)
            assert all(b.label == "success" for b in ctx.control_blocks)
            assert len(set(idx)) == len(idx)
            k = min(expected_n[i], len(own))
            assert set(idx[:k]) <= set(own), (i, idx)  # own-uid successes first
            assert set(idx[k:]) <= set(others), (i, idx)  # then topped up from other uids
        m = sel.metrics
        assert m[P + "peer_control_active"] == 1.0
        assert m[P + "peer_control_block_total"] == 16
        assert m[P + "peer_control_success_block_total"] == 16
        assert m[P + "peer_control_failure_block_total"] == 0
        assert m[P + "peer_control_blocks_per_sample"] == pytest.approx(16 / 7)
        assert m[P + "peer_control_topup_count"] == 4
        assert m[P + "reprompt_sample_fraction"] == 1.0


def test_success_only_matched_block_no_topup_needed():
    rollouts = [S("A"), S("A"), S("A"), F("A"), S("B"), S("B")]
    c = cfg(peer_control_mode="success_only_matched", include_another_solution=True, include_environment_feedback=False)
    for seed in range(10):
        sel = run(rollouts, c, seed)
        for i, ctx in enumerate(sel.contexts):
            own = S_i(rollouts, i, c)
            succ, fail = budget_slots(rollouts, i, c)
            idx = [b.index for b in ctx.control_blocks]
            assert len(idx) == len(succ) + len(fail)
            assert set(idx) <= set(own)
        assert sel.metrics[P + "peer_control_topup_count"] == 0


SO_TOKEN = [S("A", n=10), S("A", n=12), F("A", n=50), S("B", n=5), S("B", n=6), S("B", n=7), S("B", n=40), F("C", n=2)]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(include_failure_solution=True, failure_solution_condition="always"), id="PF_always"),
        pytest.param(dict(include_another_solution=True), id="PA"),
        pytest.param(
            dict(include_another_solution=True, include_failure_solution=True, failure_solution_condition="always"),
            id="PAF_always",
        ),
    ],
)
def test_success_only_matched_token(kwargs):
    c = cfg(
        peer_control_mode="success_only_matched",
        peer_control_match="token",
        include_environment_feedback=False,
        **kwargs,
    )
    for seed in range(25):
        sel = run(SO_TOKEN, c, seed)
        topped_blocks = topped_samples = 0
        for i, ctx in enumerate(sel.contexts):
            succ, fail = budget_slots(SO_TOKEN, i, c)
            target = sum(SO_TOKEN[j].num_tokens for j in succ + fail)
            own = S_i(SO_TOKEN, i, c)
            others = other_uid_successes(SO_TOKEN, i, c)
            idx = [b.index for b in ctx.control_blocks]
            assert all(b.label == "success" for b in ctx.control_blocks)
            assert len(set(idx)) == len(idx)
            lens = [SO_TOKEN[j].num_tokens for j in idx]
            if not succ and not fail:
                assert idx == []
                continue
            k = sum(1 for j in idx if j in own)
            assert set(idx[:k]) <= set(own) and set(idx[k:]) <= set(others), (i, idx)
            own_total = sum(SO_TOKEN[j].num_tokens for j in own)
            if own_total >= target:
                assert k == len(idx)  # no top-up
            else:
                assert set(idx[:k]) == set(own)  # all own successes used before topping up
                topped_blocks += len(idx) - k
                topped_samples += 1 if len(idx) > k else 0
            if own_total + sum(SO_TOKEN[j].num_tokens for j in others) >= target:
                assert sum(lens) >= target and sum(lens[:-1]) < target, (i, idx, target)
            else:
                assert set(idx) == set(own) | set(others)
        assert sel.metrics[P + "peer_control_topup_count"] in (topped_blocks, topped_samples)
        if "include_failure_solution" in kwargs:
            assert topped_samples >= 2  # rollouts 0 and 1 need other uids' successes (target 62 / 60)


@pytest.mark.parametrize("mode", ["random_peer", "unrelated_prompt", "success_only_matched"])
@pytest.mark.parametrize("match", ["block", "token"])
def test_control_no_slots_means_no_context(mode, match):
    rollouts = [S("A", n=3), F("B", n=4), F("B", n=5), S("C", n=6)]
    # only the primary slot is on; no rollout has another success of its uid -> no slots anywhere
    c = cfg(
        peer_control_mode=mode, peer_control_match=match, include_environment_feedback=False, summarize_solutions=True
    )
    rng = random.Random(5)
    before = rng.getstate()
    sel = select_peers(rollouts, c, rng)
    assert rng.getstate() == before
    assert sel.distillation_mask == [0.0] * 4
    for ctx in sel.contexts:
        assert ctx.control_blocks == () and ctx.summaries == () and not ctx.has_context
    assert sel.metrics[P + "peer_control_active"] == 1.0
    assert sel.metrics[P + "peer_control_block_total"] == 0


def test_random_peer_metrics():
    rollouts = [S("A"), S("A"), F("A"), F("A"), S("A"), S("B")]
    c = cfg(
        peer_control_mode="random_peer",
        include_another_solution=True,
        include_failure_solution=True,
        failure_solution_condition="always",
        include_environment_feedback=False,
    )
    sel = run(rollouts, c, 3)
    m = sel.metrics
    assert m[P + "peer_control_active"] == 1.0
    assert m[P + "peer_control_block_total"] == 15
    assert m[P + "peer_control_success_block_total"] == 10
    assert m[P + "peer_control_failure_block_total"] == 5
    assert m[P + "peer_control_blocks_per_sample"] == pytest.approx(15 / 6)
    assert m[P + "peer_control_topup_count"] == 0
    assert m[P + "reprompt_sample_fraction"] == pytest.approx(5 / 6)
    assert sel.distillation_mask == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------------
# metrics on hand-computed examples
# ------------------------------------------------------------------------------------------------
DOC_METRICS = [
    "success_group_fraction",
    "success_sample_fraction",
    "feedback_available_fraction",
    "feedback_used_fraction",
    "reprompt_sample_fraction",
    "another_solution_fraction",
    "failure_solution_fraction",
    "summary_sample_fraction",
    "summary_candidate_count",
    "summary_tag_available_count",
    "summary_sampled_total_count",
    "summary_sampled_success_count",
    "summary_sampled_failure_count",
    "summary_sampled_with_tag_count",
    "summary_sampled_fallback_count",
    "summary_sampled_with_tag_fraction",
    "summary_sampled_fallback_fraction",
    "peer_control_active",
    "peer_control_block_total",
    "peer_control_success_block_total",
    "peer_control_failure_block_total",
    "peer_control_blocks_per_sample",
    "peer_control_topup_count",
]

METRIC_BATCH = [
    S("A"),  # 0
    F("B", feedback="wrong"),  # 1
    F("A", feedback="err A2"),  # 2
    F("B", feedback="  "),  # 3  blank -> not available
    S("A"),  # 4
    S("C"),  # 5  lone success: no context
    S("A", feedback="x"),  # 6
]


def test_metrics_hand_computed_normal_mode():
    c = cfg(include_another_solution=True, include_failure_solution=True)
    sel = run(METRIC_BATCH, c, 11)
    got = [(ctx.primary, ctx.another, ctx.failure, ctx.use_feedback) for ctx in sel.contexts]
    assert got == [
        (4, 6, None, False),
        (None, None, 3, True),
        (0, 4, None, False),
        (None, None, 1, False),
        (0, 6, None, False),
        (None, None, None, False),
        (0, 4, None, False),
    ]
    assert sel.distillation_mask == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    m = sel.metrics
    for name in DOC_METRICS:
        assert P + name in m, name
    expected = {
        "success_group_fraction": 2 / 3,  # A and C have a success, B does not
        "success_sample_fraction": 4 / 7,  # 0, 2, 4, 6 are shown a success
        "feedback_available_fraction": 3 / 7,  # 1, 2, 6 (3 is blank)
        "feedback_used_fraction": 1 / 7,  # only 1 (2 and 6 are shown a success)
        "reprompt_sample_fraction": 6 / 7,
        "another_solution_fraction": 4 / 7,
        "failure_solution_fraction": 2 / 7,  # 1 and 3
        "summary_sample_fraction": 0.0,
        "summary_sampled_total_count": 0.0,
        "peer_control_active": 0.0,
        "peer_control_block_total": 0.0,
        "peer_control_topup_count": 0.0,
    }
    for name, value in expected.items():
        assert m[P + name] == pytest.approx(value), name


def test_metrics_hand_computed_summaries():
    rollouts = [
        S("A", "<summary>alpha</summary> sol0"),  # 0
        F("A", "no tag failure text"),  # 1
        S("A", "<summary>gamma</summary>"),  # 2
        F("A", "<summary>delta</summary> wrong"),  # 3
        F("B", "plain"),  # 4
    ]
    c = cfg(summarize_solutions=True, summary_k=2, summary_source="all")
    sel = run(rollouts, c, 4)
    expected_sets = [{1, 3}, {2, 3}, {1, 3}, {1, 2}, set()]
    assert [set(ctx.summaries) for ctx in sel.contexts] == expected_sets
    names = {1: "no tag failure text", 2: "gamma", 3: "delta"}
    for ctx in sel.contexts:
        assert ctx.summary_texts == tuple(names[j] for j in ctx.summaries)
    m = sel.metrics
    expected = {
        "summary_sample_fraction": 4 / 5,
        "summary_sampled_total_count": 8,
        "summary_sampled_success_count": 2,
        "summary_sampled_failure_count": 6,
        "summary_sampled_with_tag_count": 5,
        "summary_sampled_fallback_count": 3,
        "summary_sampled_with_tag_fraction": 5 / 8,
        "summary_sampled_fallback_fraction": 3 / 8,
        "reprompt_sample_fraction": 4 / 5,
        "success_group_fraction": 1 / 2,
    }
    for name, value in expected.items():
        assert m[P + name] == pytest.approx(value), name
    assert sel.distillation_mask == [1.0, 1.0, 1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------------
# UidSuccessTracker
# ------------------------------------------------------------------------------------------------
TRACKER_STEPS = [
    (["a", "a", "b"], [False, True, False], (2, 1, 1, 1 / 2)),
    (["b", "c"], [False, False], (3, 1, 2, 1 / 3)),
    (["b", "a"], [True, False], (3, 2, 1, 2 / 3)),
    (["d"], [True], (4, 3, 1, 3 / 4)),
]


def _tracker_tuple(m):
    return (
        m[P + "uid_seen_count"],
        m[P + "uid_ever_success_count"],
        m[P + "uid_never_success_count"],
        m[P + "uid_ever_success_fraction"],
    )


def test_uid_success_tracker_cumulative():
    tracker = UidSuccessTracker()
    for uids, successes, expected in TRACKER_STEPS:
        got = _tracker_tuple(tracker.update(uids, successes))
        assert got[:3] == expected[:3]
        assert got[3] == pytest.approx(expected[3])


@pytest.mark.parametrize("split", [1, 2, 3])
def test_uid_success_tracker_checkpoint(split):
    tracker = UidSuccessTracker()
    for uids, successes, _ in TRACKER_STEPS[:split]:
        tracker.update(uids, successes)
    restored = UidSuccessTracker()
    restored.load_state_dict(tracker.state_dict())
    fresh = UidSuccessTracker()
    fresh.update(["zzz"], [True])  # state that load_state_dict must replace
    fresh.load_state_dict(tracker.state_dict())
    for uids, successes, expected in TRACKER_STEPS[split:]:
        a = _tracker_tuple(tracker.update(uids, successes))
        b = _tracker_tuple(restored.update(uids, successes))
        d = _tracker_tuple(fresh.update(uids, successes))
        assert a == b == d
        assert a[:3] == expected[:3]


def test_peer_slot_rules_are_public_and_match_the_2s1f_budget():
    from mopd.core.peers import context_slots, peer_candidates

    succeeded = [True, False, True, True, False]
    assert peer_candidates(range(5), succeeded, 2, exclude_self=True) == ([0, 3], [1, 4])
    assert peer_candidates(range(5), succeeded, 2, exclude_self=False) == ([0, 2, 3], [1, 4])
    assert peer_candidates([1, 4], succeeded, 1, exclude_self=True) == ([], [4])
    full = dict(primary=True, another=True, failure=True)
    assert context_slots([0, 3], [1, 4], failure_always=True, **full) == [
        ("success", 0),
        ("success", 3),
        ("failure", 1),
    ]
    assert context_slots([0], [1], failure_always=False, **full) == [("success", 0)]  # when_no_solution
    assert context_slots([], [1], failure_always=False, **full) == [("failure", 1)]
    assert context_slots([0, 3], [], primary=True, another=False, failure=True, failure_always=True) == [("success", 0)]
