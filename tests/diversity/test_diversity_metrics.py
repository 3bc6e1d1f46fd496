"""Each diversity metric against an independent reference on small hand-made inputs, and edge cases."""

from __future__ import annotations

import difflib
import itertools
import math
import statistics
from collections import Counter

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from mopd.diversity import metrics as M
from mopd.diversity.io import Response
from mopd.diversity.pipeline import _stats, diversity_metric_names, prompt_metrics

# ----------------------------------------------------------------------------------------- tokenisation


def test_tokenize_identifiers_digits_symbols():
    assert M.tokenize("def foo_1(x): return x**2+10") == [
        "def",
        "foo_1",
        "(",
        "x",
        ")",
        ":",
        "return",
        "x",
        "*",
        "*",
        "2",
        "+",
        "10",
    ]
    assert M.tokenize("  \n\t ") == []
    assert M.tokenize("") == []
    assert M.tokenize(None) == []
    assert M.tokenize("12ab _x  é3") == ["12", "ab", "_x", "é3"]


def test_code_view_last_fence_unclosed_and_plain():
    two = "intro\n```python\nx = 1\n```\nmore\n```py\ny = 2\n```\nbye"
    assert M.code_view(two) == "y = 2\n"
    assert M.code_view("```\nz = 3\n```") == "z = 3\n"
    assert M.code_view("a\n```python\nx = 1\n```\nthen ```python\nw = 4") == "w = 4"  # truncated last block
    assert M.code_view("```python\nonly_open = 1") == "only_open = 1"
    assert M.code_view("no fences here") == "no fences here"
    assert M.code_view("") == ""


def test_normalize_code_ignores_comments_and_layout():
    a = "def f(x):\n    # add one\n    return x+1\n"
    b = "def f(x):\n\n    return x + 1   # inline\n"
    c = "def f(x):\n    return x + 2\n"
    assert M.normalize_code(a) == M.normalize_code(b) == "def f ( x ) : return x + 1"
    assert M.normalize_code(a) != M.normalize_code(c)
    assert M.normalize_code("s = '# not a comment'") != M.normalize_code("s = ''")
    # not Python: // and /* */ and # comments dropped by pattern
    assert M.normalize_code("int f(){ // c\n return 1; /* x */ }") == M.normalize_code("int f() {return 1;}")


# ---------------------------------------------------------------------------------------- distinct-n


def test_distinct_n_by_hand():
    texts = ["a b a", "a b c"]
    # unigrams a b a a b c -> 3 unique / 6; bigrams (a b)(b a)(a b)(b c) -> 3 / 4 (none across texts)
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    # ("a","c") would only exist across the boundary of "b a" | "c"; it is not counted
    assert M.distinct_n(["b a", "c"], 2) == 1.0
    assert M.distinct_n(["x"], 2) is None  # no bigram at all
    assert M.distinct_n([], 1) is None
    assert M.distinct_n(["", "  "], 1) is None
    assert M.distinct_n(["same text", "same text"], 1) == pytest.approx(2 / 4)


def test_unique_ratio_by_hand():
    assert M.unique_ratio(["a", "b", "a", "c"]) == 0.75
    assert M.unique_ratio(["a"]) == 1.0
    assert M.unique_ratio(["x"] * 5) == pytest.approx(0.2)
    assert M.unique_ratio([]) is None


# --------------------------------------------------------------------------------------------- pass@k


def _pass_at_k_brute_force(n: int, c: int, k: int) -> float:
    labels = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_matches_codex_numerically_stable_form():
    # Chen et al. (2021): 1 - prod(1 - k / arange(n - c + 1, n + 1))
    for n, c, k in [(200, 3, 1), (200, 3, 10), (200, 3, 100), (50, 0, 5), (50, 50, 5), (16, 7, 8)]:
        ref = 1.0 if n - c < k else 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
        assert M.pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)


def test_pass_at_k_edges():
    assert M.pass_at_k(4, 1, 1) == 0.25
    assert M.pass_at_k(4, 0, 4) == 0.0
    assert M.pass_at_k(4, 4, 1) == 1.0
    assert M.pass_at_k(4, 2, 8) is None  # k > n is not estimable
    assert M.pass_at_k(0, 0, 1) is None
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 0)


# ---------------------------------------------------------------------------------------------- BLEU


def test_bleu4_by_hand_documents_the_smoothing():
    hyp, ref = "a b c d e".split(), "a b c d f".split()
    # p1 = 4/5 (unsmoothed); p2..p4 = 3/4, 2/3, 1/2 -> add one: 4/5, 3/4, 2/3; equal lengths -> BP = 1
    expected = math.exp(0.25 * (math.log(4 / 5) + math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)))
    assert M.bleu4(hyp, [ref]) == pytest.approx(expected, rel=1e-12)
    # brevity penalty: 5-token hypothesis against the closest reference (7 tokens, not 10): exp(1 - 7/5)
    hyp = "a b c d x".split()
    got = M.bleu4(hyp, ["a b c d y z w".split(), "a b c d e f g h i j".split()])
    p = [4 / 5, (3 + 1) / (4 + 1), (2 + 1) / (3 + 1), (1 + 1) / (2 + 1)]
    assert got == pytest.approx(math.exp(1 - 7 / 5) * math.exp(0.25 * sum(math.log(x) for x in p)), rel=1e-12)
    # a 3-token hypothesis weighs p1..p3 by 1/3 (auto_reweigh): a prefix of the reference scores BP only
    assert M.bleu4("a b c".split(), ["a b c d e f".split()]) == pytest.approx(math.exp(1 - 6 / 3), rel=1e-12)
    assert M.bleu4(["57"], [["57"]]) == 1.0 and M.bleu4(["57"], [["58"]]) == 0.0


def test_self_bleu4_equals_nltk_called_directly():
    texts = [
        "def f(x): return x + 1",
        "def g(y): return y * 2 + 1",
        "x = [i for i in range(10)]",
        "def f(x): return x + 1  # same",
        "f(x)",
    ]
    toks = [M.tokenize(t) for t in texts]
    smooth = SmoothingFunction().method2
    direct = [
        sentence_bleu(
            [toks[j] for j in range(len(toks)) if j != i],
            toks[i],
            weights=(0.25,) * 4,
            smoothing_function=smooth,
            auto_reweigh=True,
        )
        for i in range(len(toks))
    ]
    assert M.self_bleu4(texts) == pytest.approx(sum(direct) / len(direct), rel=1e-12)


def test_self_bleu4_edges():
    assert M.self_bleu4(["only one"]) is None
    assert M.self_bleu4([]) is None
    assert M.self_bleu4(["same tokens here ok"] * 3) == pytest.approx(1.0)
    assert M.self_bleu4(["aa bb cc dd", "ee ff gg hh"]) == 0.0  # no shared unigram
    assert M.self_bleu4(["", ""]) is None  # no hypothesis with a token
    # an empty response is a reference but not a hypothesis
    assert M.self_bleu4(["a b c d", "a b c d", ""]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- pairwise distance


def test_pairwise_text_distance_by_hand():
    # "abcd"/"abce": 3 matching chars -> ratio 2*3/8 = 0.75; nothing shared with "wxyz"
    assert M.pairwise_text_distance(["abcd", "abce", "wxyz"]) == pytest.approx((0.25 + 1.0 + 1.0) / 3)
    texts = ["def f(x):\n    return x", "def g(y):\n    return y * 2", "print(1)"]
    ref = statistics.mean(1 - difflib.SequenceMatcher(None, a, b).ratio() for a, b in itertools.combinations(texts, 2))
    assert M.pairwise_text_distance(texts) == pytest.approx(ref)


def test_pairwise_text_distance_edges():
    assert M.pairwise_text_distance(["one"]) is None
    assert M.pairwise_text_distance([]) is None
    assert M.pairwise_text_distance(["same"] * 4) == 0.0
    assert M.pairwise_text_distance(["", ""]) == 0.0  # difflib: two empty strings are identical (ratio 1)


# --------------------------------------------------------------------------------------- AST Jaccard


def test_ast_node_counts_by_hand():
    assert M.ast_node_counts("x = 1") == Counter(Module=1, Assign=1, Name=1, Store=1, Constant=1)
    assert M.ast_node_counts("x = y") == Counter(Module=1, Assign=1, Name=2, Store=1, Load=1)
    assert M.ast_node_counts("def (") is None


def test_ast_jaccard_by_hand():
    # min: Module 1 + Assign 1 + Name 1 + Store 1 = 4; max: Module 1 Assign 1 Name 2 Store 1 Constant 1 Load 1 = 7
    d, ok, bad = M.ast_node_jaccard_distance(["x = 1", "x = y"])
    assert (d, ok, bad) == (pytest.approx(3 / 7), 2, 0)
    # the unparsable one is skipped and counted
    d, ok, bad = M.ast_node_jaccard_distance(["x = 1", "x = y", "def (", "return )"])
    assert (d, ok, bad) == (pytest.approx(3 / 7), 2, 2)
    # three codes: mean over the three pairs; "x = 1" vs "y = 2" has the same node types -> 0
    d, _, _ = M.ast_node_jaccard_distance(["x = 1", "y = 2", "x = y"])
    assert d == pytest.approx((0 + 3 / 7 + 3 / 7) / 3)


def test_ast_jaccard_edges():
    assert M.ast_node_jaccard_distance(["x = 1"]) == (None, 1, 0)
    assert M.ast_node_jaccard_distance(["x = 1", "def ("]) == (None, 1, 1)
    assert M.ast_node_jaccard_distance([]) == (None, 0, 0)
    assert M.ast_node_jaccard_distance(["a = f(1)"] * 3)[0] == 0.0
    assert M.weighted_jaccard_distance(Counter(), Counter()) == 0.0
    assert M.weighted_jaccard_distance(Counter(A=2), Counter(B=1)) == 1.0


# ---------------------------------------------------------------------------------- group + summary


def _group(texts, successes):
    return [Response("p", f"p_r{i}", "prompt", t, float(s), bool(s)) for i, (t, s) in enumerate(zip(texts, successes))]


def test_prompt_metrics_code_by_hand():
    texts = ["```python\nx = 1\n```", "```python\nx = 1  # same\n```", "```python\nx = y\n```", "no code ("]
    row = prompt_metrics(_group(texts, [1, 1, 0, 0]), "code", [1, 2, 4, 8])
    assert row["n_responses"] == 4 and row["n_success"] == 2 and row["success_rate"] == 0.5
    assert row["unique_response_ratio"] == 1.0
    assert row["unique_code_ratio"] == 0.75  # "x = 1" twice after normalisation
    assert row["ast_parsable"] == 3 and row["ast_unparsable"] == 1
    assert row["ast_node_jaccard_distance"] == pytest.approx((0 + 3 / 7 + 3 / 7) / 3)
    assert row["pass@1"] == 0.5 and row["pass@2"] == pytest.approx(1 - 1 / 6) and row["pass@4"] == 1.0
    assert row["pass@8"] is None
    # success-only: the two "x = 1" variants
    assert row["success_unique_code_ratio"] == 0.5
    assert row["success_ast_node_jaccard_distance"] == 0.0
    assert row["success_unique_response_ratio"] == 1.0
    views = ["x = 1\n", "x = 1  # same\n"]
    assert row["success_pairwise_text_distance"] == pytest.approx(M.pairwise_text_distance(views))
    assert row["success_distinct1"] == pytest.approx(M.distinct_n(views, 1))


def test_prompt_metrics_text_task_and_too_few_successes():
    row = prompt_metrics(_group(["12", "13", "12"], [1, 0, 0]), "text", [1, 2])
    assert "unique_code_ratio" not in row and "ast_node_jaccard_distance" not in row
    assert row["unique_response_ratio"] == pytest.approx(2 / 3)
    assert row["distinct1"] == pytest.approx(2 / 3)
    assert all(row[f"success_{m}"] is None for m in ("self_bleu4", "pairwise_text_distance", "distinct2"))
    assert row["pass@1"] == pytest.approx(1 / 3) and row["pass@2"] == pytest.approx(2 / 3)
    assert set(diversity_metric_names("text")) <= set(row)


def test_prompt_metrics_one_response_and_all_identical():
    one = prompt_metrics(_group(["x = 1"], [1]), "code", [1, 2])
    assert one["self_bleu4"] is None and one["pairwise_text_distance"] is None
    assert one["ast_node_jaccard_distance"] is None and one["pass@1"] == 1.0 and one["pass@2"] is None
    same = prompt_metrics(_group(["```python\nreturn_value = 1\n```"] * 4, [1, 1, 1, 1]), "code", [4])
    assert same["self_bleu4"] == pytest.approx(1.0) and same["pairwise_text_distance"] == 0.0
    assert same["unique_response_ratio"] == 0.25 and same["unique_code_ratio"] == 0.25
    assert same["ast_node_jaccard_distance"] == 0.0 and same["success_self_bleu4"] == pytest.approx(1.0)


def test_prompt_metrics_empty_responses():
    row = prompt_metrics(_group(["", ""], [0, 0]), "code", [1])
    assert row["self_bleu4"] is None and row["distinct1"] is None and row["pairwise_text_distance"] == 0.0
    assert row["ast_node_jaccard_distance"] == 0.0  # two empty modules parse and are equal
    assert row["pass@1"] == 0.0


def test_stats_population_std_and_interval():
    vals = [0.1, 0.4, 0.4, 0.9, None]
    s = _stats(vals, num_bootstrap=500)
    assert s["count"] == 4
    assert s["mean"] == pytest.approx(statistics.mean([0.1, 0.4, 0.4, 0.9]))
    assert s["std"] == pytest.approx(statistics.pstdev([0.1, 0.4, 0.4, 0.9]))
    lo, hi = s["ci95"]
    assert 0.1 <= lo <= s["mean"] <= hi <= 0.9
    assert _stats([None]) == {"mean": None, "std": None, "count": 0, "ci95": None}
    assert _stats([0.3])["ci95"] is None and _stats([0.3])["std"] == 0.0


def test_prompt_metrics_equal_the_metric_functions_on_each_subset():
    rng = np.random.default_rng(5)
    pool = [
        "x = 1\n",
        "x = 1  # c\n",
        "def f(a):\n    return a * 2\n",
        "for i in range(3):\n    print(i)\n",
        "def f(a) return",
        "y = [v for v in z]\n",
        "",
    ]
    for _trial in range(6):
        n = int(rng.integers(2, 9))
        codes = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
        succ = [int(rng.integers(2)) for _ in range(n)]
        texts = [f"Answer {i}:\n```python\n{c}```" for i, c in enumerate(codes)]
        row = prompt_metrics(_group(texts, succ), "code", [1, n])
        for prefix, idx in (("", range(n)), ("success_", [i for i in range(n) if succ[i]])):
            views = [codes[i] for i in idx]
            if prefix and len(views) < 2:
                assert row["success_self_bleu4"] is None
                continue
            assert row[prefix + "self_bleu4"] == M.self_bleu4(views)
            assert row[prefix + "pairwise_text_distance"] == pytest.approx(M.pairwise_text_distance(views))
            assert row[prefix + "distinct2"] == M.distinct_n(views, 2)
            assert row[prefix + "unique_response_ratio"] == M.unique_ratio([texts[i].strip() for i in idx])
            assert row[prefix + "unique_code_ratio"] == M.unique_ratio([M.normalize_code(v) for v in views])
            ast_d = M.ast_node_jaccard_distance(views)[0]
            assert row[prefix + "ast_node_jaccard_distance"] == (None if ast_d is None else pytest.approx(ast_d))
        assert row[f"pass@{n}"] == M.pass_at_k(n, sum(succ), n)
