"""workers.prefix_plan: the tree of shared prefixes and the cutting into forwards, each against a brute
force over every choice (the forwards themselves: tests/workers/test_shared_prefix.py)."""

from __future__ import annotations

import pytest
import torch

from tests.workers.test_shared_prefix import _group_prompts, _prompts, _teacher_batch
from workers import prefix_plan
from workers.prefix_plan import _chunks, _run_tokens, _sorted_trie, prefix_tree, shared_tokens


def _best_chunks_cost(widths: list[int], per_forward: int) -> int:
    """Brute force: the cheapest partition of the widths into chunks (each padded to its widest)."""
    best = None

    def walk(items, cost):
        nonlocal best
        if not items:
            best = cost if best is None else min(best, cost)
            return
        first, rest = items[0], items[1:]
        for mask in range(1 << len(rest)):  # every subset of the rest joins the first's chunk
            chunk = [first] + [rest[i] for i in range(len(rest)) if mask >> i & 1]
            left = [rest[i] for i in range(len(rest)) if not mask >> i & 1]
            walk(left, cost + per_forward + len(chunk) * max(chunk))

    walk(sorted(widths), 0)
    return best


@pytest.mark.parametrize("per_forward", [0, 20, 200])
def test_chunks_cover_every_segment_once_at_the_least_cost(per_forward):
    widths = [12, 170, 15, 11, 160, 14, 90, 13]
    chunks = _chunks(widths, [0] * len(widths), 10**9, per_forward)
    assert sorted(i for c in chunks for i in c) == list(range(len(widths)))
    cost = sum(per_forward + len(c) * max(widths[i] for i in c) for c in chunks)
    assert cost == _best_chunks_cost(widths, per_forward)
    if per_forward == 0:
        assert len(chunks) == len(set(widths))  # no padding at all
    if per_forward == 200:
        assert len(chunks) <= 2


def test_chunks_keep_their_keys_and_values_within_the_budget():
    # 10 segments of 170 columns after 200 cached ones: at most 3 per forward under 3 * 370 tokens
    chunks = _chunks([170] * 10, [200] * 10, 3 * 370, 10**6)
    assert max(map(len, chunks)) == 3 and sum(map(len, chunks)) == 10


def _trie_nodes(item, out):
    """(shared length, rows below) of every internal node of ``_sorted_trie``'s result; returns the rows."""
    if isinstance(item, int):
        return [item]
    rows = [r for child in item[1] for r in _trie_nodes(child, out)]
    out.append((item[0], rows))
    return rows


def _common_prefix(prompts, rows):
    n = 0
    while all(n < len(prompts[r]) - 1 and prompts[r][n] == prompts[rows[0]][n] for r in rows):
        n += 1
    return n


def _brute_force_tokens(prompts, max_depth: int, node_tokens: int) -> int:
    """The least tokens over every set of trie nodes with at most ``max_depth`` kept above any row: the
    reference for prefix_tree's dynamic programming."""
    nodes: list = []
    _trie_nodes(_sorted_trie(prompts), nodes)
    nodes = [n for n in nodes if n[0] > 0]
    best = None
    for mask in range(1 << len(nodes)):
        kept = [nodes[i] for i in range(len(nodes)) if mask >> i & 1]
        total, ok = node_tokens * len(kept), True
        for length, rows in kept:  # each kept node runs its tokens past its deepest kept ancestor
            above = [n for n in kept if n[0] < length and set(rows) <= set(n[1])]
            total += length - max((n[0] for n in above), default=0)
            ok &= len(above) + 1 <= max_depth
        for r, p in enumerate(prompts):
            total += len(p) - max((n[0] for n in kept if r in n[1]), default=0)
        if ok and (best is None or total < best):
            best = total
    return best


def test_sorted_trie_nodes_are_the_common_prefixes_of_their_rows():
    prompts = _prompts() + _group_prompts(1)
    nodes: list = []
    rows = _trie_nodes(_sorted_trie(prompts), nodes)
    assert sorted(rows) == list(range(len(prompts)))
    for length, below in nodes:
        assert length == _common_prefix(prompts, below)  # one token short of each row at most


@pytest.mark.parametrize("max_depth", [1, 2, 3])
@pytest.mark.parametrize("node_tokens", [0, 16])
def test_prefix_tree_runs_the_fewest_tokens_within_its_depth(monkeypatch, max_depth, node_tokens):
    monkeypatch.setattr(prefix_plan, "_NODE_TOKENS", node_tokens)
    for prompts in (_prompts(), _group_prompts(0), _group_prompts(5)):
        tree = prefix_tree(prompts, max_depth)
        assert max(tree.depth(), default=-1) < max_depth
        for node, length in enumerate(tree.length):  # a node's prefix is common to every row below it
            below = [r for r in range(len(prompts)) if _ancestors(tree, tree.row_parent[r]) & {node}]
            assert len(below) >= 2 and length <= _common_prefix(prompts, below)
            assert length > tree.prefix(tree.parent[node])
        ran = _run_tokens(tree, prompts, list(range(len(prompts))), [0] * len(prompts)) + node_tokens * len(tree.length)
        assert ran == _brute_force_tokens(prompts, max_depth, node_tokens)


def _ancestors(tree, node: int) -> set[int]:
    out = set()
    while node >= 0:
        out.add(node)
        node = tree.parent[node]
    return out


def test_prefix_tree_runs_each_distinct_prefix_once():
    """Rows of different prompt uids, or whose contexts differ right after the question, share by content:
    rows under their common peers, those under their common question."""
    g = torch.Generator().manual_seed(1)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    head, peers = tok(30), tok(60)
    x = tok(5)
    prompts = [head + peers + tok(3) for _ in range(3)] + [head + x + peers + tok(2) for _ in range(3)]
    tree = prefix_tree(prompts)
    lengths = sorted(tree.prefix(tree.row_parent[r]) for r in range(6))
    assert lengths == [90] * 3 + [95] * 3
    top = {tree.parent[tree.row_parent[r]] for r in range(6)}
    assert len(top) == 1 and tree.length[top.pop()] == 30  # the two peer nodes under the shared head
    ids, mask, _, response_mask = _teacher_batch(prompts, [1, 3, 2, 2, 1, 4], response_width=4)
    plain, shared = shared_tokens(ids, mask, response_mask)
    # the head once, each peer block once, every row's own tail, and of each response the tokens before its
    # last (the hidden state of the token before a response token scores it)
    assert plain == sum(map(len, prompts)) + 13 and shared == 30 + 60 + 65 + 3 * 3 + 3 * 2 + (0 + 2 + 1 + 1 + 0 + 3)


def test_a_trie_as_deep_as_the_batch_is_planned():
    """Prompts each a prefix of the next make a trie with one level per row: deeper than Python's default
    recursion limit, which prefix_tree lifts for the call only."""
    import sys

    prompts = [list(range(3, n + 5)) for n in range(600)]
    limit = sys.getrecursionlimit()
    tree = prefix_tree(prompts)
    assert sys.getrecursionlimit() == limit
    assert tree.length and max(tree.depth()) < prefix_plan._MAX_DEPTH
    assert all(tree.prefix(tree.row_parent[r]) < len(p) for r, p in enumerate(prompts))
