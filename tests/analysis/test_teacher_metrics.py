"""Teacher-signal metrics against independent references on small hand-made inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mopd.analysis import metrics as M


# ----------------------------------------------------------------------------------------------------
# Independent references (brute force over pairs / textbook formulas)
# ----------------------------------------------------------------------------------------------------
def ref_ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def ref_pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return num / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def ref_pairs(s, r):
    c = d = ts = tr = both = 0
    for i, j in itertools.combinations(range(len(s)), 2):
        ds, dr = s[i] - s[j], r[i] - r[j]
        if ds == 0 and dr == 0:
            both += 1
        elif ds == 0:
            ts += 1
        elif dr == 0:
            tr += 1
        elif ds * dr > 0:
            c += 1
        else:
            d += 1
    return c, d, ts, tr, both


def ref_tau_b(s, r):
    c, d, ts, tr, both = ref_pairs(s, r)
    n0 = len(s) * (len(s) - 1) / 2
    n1 = ts + both  # pairs tied in s
    n2 = tr + both  # pairs tied in r
    return (c - d) / math.sqrt((n0 - n1) * (n0 - n2))


def ref_auc(s, y):
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


CASES = [
    # scores, rewards
    ([-0.5, -1.2, -0.3, -2.0, -0.9], [1.0, 0.0, 1.0, 0.0, 0.0]),
    ([-0.5, -0.5, -0.3, -2.0, -0.9, -0.9], [1.0, 0.0, 1.0, 0.0, 0.5, 0.5]),
    ([0.1, 0.4, 0.35, 0.8], [0.0, 0.2, 0.9, 1.0]),
    ([-3.0, -1.0, -2.0, -0.5, -0.5, -4.0, -1.5, -2.5], [0, 1, 0, 1, 0, 0, 1, 1]),
]


@pytest.mark.parametrize("scores,rewards", CASES)
def test_rank_metrics_match_references(scores, rewards):
    succ = [r >= 1.0 for r in rewards]
    m = M.prompt_metrics(scores, rewards, succ)
    assert m["spearman"] == pytest.approx(ref_pearson(ref_ranks(scores), ref_ranks(rewards)))
    assert m["spearman"] == pytest.approx(stats.spearmanr(scores, rewards).statistic)
    assert m["kendall_tau"] == pytest.approx(ref_tau_b(scores, rewards))
    c, d, *_ = ref_pairs(scores, rewards)
    assert m["goodman_kruskal_gamma"] == pytest.approx((c - d) / (c + d))
    if any(succ) and not all(succ):
        assert m["success_auc"] == pytest.approx(ref_auc(scores, succ))
        sklearn_metrics = pytest.importorskip("sklearn.metrics")
        assert m["success_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(succ, scores))
        assert m["success_point_biserial"] == pytest.approx(ref_pearson(scores, [float(v) for v in succ]))
        assert m["success_point_biserial"] == pytest.approx(np.corrcoef(scores, succ)[0, 1])


def test_hand_computed_values():
    # s: -1 -2 -3 -4 (decreasing), r: 1 0 1 0
    s, r = [-1.0, -2.0, -3.0, -4.0], [1.0, 0.0, 1.0, 0.0]
    m = M.prompt_metrics(s, r, [True, False, True, False])
    # pairs with different rewards: (0,1) ok, (0,3) ok, (1,2) wrong, (2,3) ok -> 3/4
    assert m["pairwise_accuracy"] == pytest.approx(0.75)
    # AUC: positives {-1,-3} vs negatives {-2,-4}: -1>-2, -1>-4, -3<-2, -3>-4 -> 3/4
    assert m["success_auc"] == pytest.approx(0.75)
    assert m["goodman_kruskal_gamma"] == pytest.approx((3 - 1) / 4)
    assert m["top1_hit_rate"] == 1.0
    sig = [1 / (1 + math.exp(-v)) for v in s]
    assert m["success_brier_sigmoid"] == pytest.approx(sum((p - y) ** 2 for p, y in zip(sig, [1, 0, 1, 0])) / 4)
    # minmax: 1, 2/3, 1/3, 0 vs 1 0 1 0 -> (0 + 4/9 + 4/9 + 0) / 4
    assert m["success_brier_minmax"] == pytest.approx(2 / 9)
    assert all(m["defined"].values())


def test_pairwise_accuracy_ties_in_score_count_half():
    m = M.prompt_metrics([-1.0, -1.0, -2.0], [1.0, 0.0, 0.0], [True, False, False])
    # pairs with different rewards: (0,1) tie -> 1/2, (0,2) correct -> 1 => 0.75, equal to AUC
    assert m["pairwise_accuracy"] == pytest.approx(0.75)
    assert m["success_auc"] == pytest.approx(0.75)


def test_top1_uses_first_of_tied_best_and_success_flag():
    assert M.prompt_metrics([-1.0, -1.0, -2.0], [0.0, 1.0, 0.0], [False, True, False])["top1_hit_rate"] == 0.0
    # the best-scored row has less than the max reward but is a success (reward 1 >= threshold, max 1.5)
    assert M.prompt_metrics([-1.0, -2.0], [1.0, 1.5], [True, True])["top1_hit_rate"] == 1.0


def test_degenerate_cases_are_zero_and_marked_undefined():
    all_success = M.prompt_metrics([-1.0, -2.0, -3.0], [1.0, 1.0, 1.0], [True, True, True])
    for key in (
        "spearman",
        "kendall_tau",
        "goodman_kruskal_gamma",
        "pairwise_accuracy",
        "success_auc",
        "success_point_biserial",
    ):
        assert all_success[key] == 0.0 and not all_success["defined"][key], key
    assert all_success["defined"]["success_brier_minmax"] and all_success["top1_hit_rate"] == 1.0
    constant_score = M.prompt_metrics([-1.0, -1.0, -1.0], [1.0, 0.0, 0.0], [True, False, False])
    assert constant_score["spearman"] == 0.0 and not constant_score["defined"]["spearman"]
    assert constant_score["success_auc"] == 0.5 and constant_score["defined"]["success_auc"]
    assert constant_score["success_brier_minmax"] == pytest.approx(0.25)  # all 0.5
    with pytest.raises(ValueError):
        M.prompt_metrics([-1.0], [1.0], [True])


# ----------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------
def _rows(condition, prompt, scores, rewards, bucket="medium", **extra):
    return [
        {
            "condition": condition,
            "prompt_id": prompt,
            "teacher_score": s,
            "reward": r,
            "success": r >= 1.0,
            "difficulty_bucket": bucket,
            "teacher_prompt_len": 10 + i,
            "teacher_prompt_truncated": i == 0,
            **extra,
        }
        for i, (s, r) in enumerate(zip(scores, rewards))
    ]


def _prompts(seed=0, n=12):
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(n):
        rewards = list(rng.integers(0, 2, size=6).astype(float))
        rewards[0], rewards[1] = 1.0, 0.0
        scores = list(np.round(rng.normal(size=6) + 0.8 * np.array(rewards), 3))
        out[f"p{p:02d}"] = _rows("c", f"p{p:02d}", scores, rewards, bucket="easy" if p % 3 == 0 else "medium")
    return out


def test_condition_means_equal_mean_of_scipy_per_prompt_values():
    by_prompt = _prompts()
    res = M.condition_metrics(by_prompt, num_bootstrap=0)
    sp = [
        stats.spearmanr([r["teacher_score"] for r in rows], [r["reward"] for r in rows]).statistic
        for rows in by_prompt.values()
    ]
    kt = [
        stats.kendalltau([r["teacher_score"] for r in rows], [r["reward"] for r in rows]).statistic
        for rows in by_prompt.values()
    ]
    pb = [
        stats.pointbiserialr([r["success"] for r in rows], [r["teacher_score"] for r in rows]).statistic
        for rows in by_prompt.values()
    ]
    auc = [ref_auc([r["teacher_score"] for r in rows], [r["success"] for r in rows]) for rows in by_prompt.values()]
    assert res["count_prompts"] == 12
    assert res["mean_spearman"] == pytest.approx(np.mean(sp))
    assert res["mean_kendall_tau"] == pytest.approx(np.mean(kt))
    assert res["success_point_biserial"] == pytest.approx(np.mean(pb))
    assert res["success_auc"] == pytest.approx(np.mean(auc))
    easy = [v for p, v in zip(by_prompt, sp) if by_prompt[p][0]["difficulty_bucket"] == "easy"]
    assert res["by_bucket"]["easy"]["count_prompts"] == 4
    assert res["by_bucket"]["easy"]["mean_spearman"] == pytest.approx(np.mean(easy))
    assert res["mean_prompt_length"] == pytest.approx(np.mean([10 + i for i in range(6)]))
    assert res["truncation_rate"] == pytest.approx(1 / 6)
    assert res["mean_spearman_ci"] is None and res["bootstrap_resamples"] == 0


def test_prompts_with_one_row_are_left_out():
    by_prompt = {"a": _rows("c", "a", [-1.0, -2.0], [1.0, 0.0]), "b": _rows("c", "b", [-1.0], [1.0])}
    assert M.condition_metrics(by_prompt, num_bootstrap=0)["count_prompts"] == 1


@pytest.mark.parametrize("num_bootstrap", [1, 7, 2000, 3001])
def test_bootstrap_uses_exactly_the_requested_number_of_resamples(num_bootstrap, monkeypatch):
    seen = []
    real = M.bootstrap_means

    def spy(values, defined, n, rng):
        out = real(values, defined, n, rng)
        seen.append(out.shape[0])
        return out

    monkeypatch.setattr(M, "bootstrap_means", spy)
    res = M.condition_metrics(_prompts(), num_bootstrap=num_bootstrap, seed=3)
    assert seen and all(n == num_bootstrap for n in seen)
    assert res["bootstrap_resamples"] == num_bootstrap


def test_bootstrap_ci_matches_a_manual_percentile_bootstrap():
    by_prompt = _prompts(seed=1, n=15)
    res = M.condition_metrics(by_prompt, num_bootstrap=500, seed=99)
    per_prompt = np.array([p["spearman"] for p in M.per_prompt_table(by_prompt)])
    rng = np.random.default_rng(99)
    idx = rng.integers(0, len(per_prompt), size=(500, len(per_prompt)))
    means = per_prompt[idx].mean(axis=1)
    assert res["mean_spearman_ci"] == pytest.approx([np.percentile(means, 2.5), np.percentile(means, 97.5)])
    lo, hi = res["mean_spearman_ci"]
    assert lo <= res["mean_spearman"] <= hi
    # and agrees with scipy's percentile bootstrap of the mean up to Monte Carlo error
    ref = stats.bootstrap(
        (per_prompt,), np.mean, n_resamples=4000, method="percentile", random_state=np.random.default_rng(0)
    ).confidence_interval
    wide = M.condition_metrics(by_prompt, num_bootstrap=4000, seed=5)["mean_spearman_ci"]
    assert wide[0] == pytest.approx(ref.low, abs=0.03) and wide[1] == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_is_seeded():
    a = M.condition_metrics(_prompts(), num_bootstrap=200, seed=1)["success_auc_ci"]
    b = M.condition_metrics(_prompts(), num_bootstrap=200, seed=1)["success_auc_ci"]
    c = M.condition_metrics(_prompts(), num_bootstrap=200, seed=2)["success_auc_ci"]
    assert a == b and a != c


def test_degenerate_skip_leaves_undefined_prompts_out():
    by_prompt = {"a": _rows("c", "a", [-1.0, -2.0], [1.0, 0.0]), "b": _rows("c", "b", [-1.0, -2.0], [1.0, 1.0])}
    zero = M.condition_metrics(by_prompt, num_bootstrap=50, degenerate="zero")
    skip = M.condition_metrics(by_prompt, num_bootstrap=50, degenerate="skip")
    assert zero["success_auc"] == pytest.approx(0.5) and skip["success_auc"] == pytest.approx(1.0)
    assert skip["success_auc_n_defined"] == 1 and skip["success_auc_ci"] == [1.0, 1.0]
    with pytest.raises(ValueError):
        M.condition_metrics(by_prompt, degenerate="nan")


def test_sample_sets_and_effective_rows():
    rows = (
        _rows(
            "solution", "mixed", [-1.0, -2.0, -3.0], [1.0, 0.0, 0.0], sections_used={"solution": True}, effective=True
        )
        + _rows("solution", "solved", [-1.0, -2.0], [1.0, 1.0], sections_used={"solution": True}, effective=True)
        + _rows("solution", "unsolved", [-1.0, -2.0], [0.0, 0.0], sections_used={"solution": False}, effective=False)
        + _rows("base", "mixed", [-1.0, -2.0, -3.0], [1.0, 0.0, 0.0])
        + _rows("base", "unsolved", [-1.0, -2.0], [0.0, 0.0])
    )
    sets = M.sample_set_rows(rows)
    assert len(sets["all_samples"]) == len(rows)
    assert {r["prompt_id"] for r in sets["effective_only"] if r["condition"] == "solution"} == {"mixed", "solved"}
    assert {r["prompt_id"] for r in sets["both_present_all"]} == {"mixed"}
    assert all(r["reward"] == 0.0 for r in sets["reward_zero_only"])
    assert {r["prompt_id"] for r in sets["reward_zero_effective_only"]} == {"mixed", "unsolved"}
    result = M.compute_all(rows, num_bootstrap=20)
    assert set(result["sample_sets"]) == set(M.SAMPLE_SETS)
    assert result["sample_sets"]["both_present_effective_only"]["conditions"]["solution"]["count_prompts"] == 1
    assert result["condition_sample_counts"]["solution"]["effective_only"] == 5
    paired = result["sample_sets"]["all_samples"]["paired_by_target_type"]["unknown"]
    assert paired["paired_prompt_count"] == 2  # 'solved' only has the solution condition


def test_tables_show_every_condition_with_intervals():
    rows = []
    for condition in ("base", "solution+another_solution+failure_solution", "random_peer"):
        for p in range(4):
            rows += _rows(
                condition,
                f"p{p}",
                [-1.0 - p, -2.0, -1.5 + p / 10],
                [1.0, 0.0, 0.0],
                sections_used={"solution": True, "another_solution": True, "failure_solution": True},
            )
    result = M.compute_all(rows, num_bootstrap=100)
    md, csv = M.render_tables(result, "both_present_effective_only")
    assert md.splitlines()[0].startswith("# Teacher-signal ranking metrics")
    body = [line for line in md.splitlines() if line.startswith("| ") and "condition" not in line]
    assert [line.split(" | ")[0][2:] for line in body] == [
        "base",
        "random_peer",
        "solution+another_solution+failure_solution",
    ]
    assert all(line.count("[") == 4 for line in body)
    header, *lines = csv.strip().splitlines()
    assert header.split(",")[:4] == ["condition", "count_prompts", "count_rows", "mean_spearman"]
    assert len(lines) == 3 and all(len(line.split(",")) == len(header.split(",")) for line in lines)
    with pytest.raises(ValueError):
        M.render_tables(result, "nope")


def test_table_marks_statistics_undefined_for_every_prompt():
    rows = _rows("feedback", "p", [-1.0, -2.0], [0.0, 0.0]) + _rows("base", "p", [-1.0, -2.0], [0.0, 0.0])
    result = M.compute_all(rows, num_bootstrap=10)
    md, _ = M.render_tables(result, "all_samples")
    line = next(l for l in md.splitlines() if l.startswith("| feedback |"))
    assert line == "| feedback | 1 | n/a | n/a | n/a | n/a |"


def test_validate_rows_names_the_missing_field():
    with pytest.raises(ValueError, match="teacher_score"):
        M.compute_all([{"condition": "base", "prompt_id": "p", "reward": 1.0, "success": True}])
