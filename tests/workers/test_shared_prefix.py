"""workers.shared_prefix: scoring each shared teacher-prompt prefix once, as a tree of prefixes, gives the
plain forward's hidden states (float64 1e-10: only summation order differs; float32 2e-5).
"""

from __future__ import annotations

import pytest
import torch

from workers import forward, model_utils
from workers import shared_prefix
from workers.shared_prefix import _chunks, _run_tokens, _sorted_trie, prefix_tree, shared_prefix_hidden, shared_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dtype, attn="sdpa"):
    return model_utils.load_causal_lm(model_utils.resolve_model_path("embedded"), dtype=dtype,
                                      attn_implementation=attn)


def _teacher_batch(prompts: list[list[int]], response_lengths: list[int], response_width: int, seed: int = 0):
    """``[left-padded prompt | right-padded response]`` rows from token lists, as build_teacher_inputs lays
    them out."""
    g = torch.Generator().manual_seed(seed)
    width = max(map(len, prompts))
    b = len(prompts)
    prompt = torch.zeros(b, width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt)
    for i, p in enumerate(prompts):
        prompt[i, width - len(p):] = torch.tensor(p)
        prompt_mask[i, width - len(p):] = 1
    response_mask = (torch.arange(response_width) < torch.tensor(response_lengths).unsqueeze(1)).long()
    responses = torch.randint(3, 264, (b, response_width), generator=g) * response_mask
    mask = torch.cat([prompt_mask, response_mask], 1)
    return torch.cat([prompt, responses], 1), mask, (mask.cumsum(1) - 1).clamp(min=0), response_mask


def _prompts(seed: int = 0):
    """Prompts that share prefixes at several depths (a, then a + c), differ after them with different
    lengths, one identical to another, one sharing nothing."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    a, b, c = tok(30), tok(12), tok(8)
    prompts = [a + c + tok(9), a + tok(4), b + tok(20), a + c + tok(9)[:2], tok(17), b + tok(3), a[:25] + tok(6)]
    prompts.append(list(prompts[0]))
    return prompts


def _group_prompts(seed: int = 0):
    """MOPD-like teacher prompts: a chat template, then per group a question, then two of the group's
    peer responses in an order that depends on the row, then the row's own closing tokens."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 264, (n,), generator=g).tolist()  # noqa: E731
    template, prompts = tok(6), []
    for _ in range(2):
        question, peers = tok(9), [tok(20 + i) for i in range(3)]
        for first, second in [(0, 1), (0, 1), (0, 2), (1, 2)]:
            prompts.append(template + question + peers[first] + peers[second] + tok(2))
    return prompts


@pytest.mark.parametrize("prompts,depths", [(_prompts(), 2), (_group_prompts(), 2)], ids=["mixed", "groups"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_shared_prefix_hidden_equals_the_plain_forward(dtype, tol, prompts, depths):
    model = _model(dtype)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    plain = forward.response_hidden(model, ids, mask, pos, response_mask)
    batch_plan = shared_prefix.plan(model, ids, mask, response_mask)
    assert len(batch_plan.depths) == depths  # nodes under nodes: shared peers under a question
    shared = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    assert shared is not None and shared.shape == plain.shape == (int(response_mask.sum()), model.config.hidden_size)
    torch.testing.assert_close(shared, plain, rtol=0, atol=tol)
    # and the model is left as it was (its head restored)
    assert forward.output_head(model)[1] is model.get_output_embeddings()


def test_one_segment_per_forward_gives_the_same_hidden_states(monkeypatch):
    """Under a small K/V budget every forward runs one segment (each row with its own copy of its parent's
    keys/values); the output is the same, in the same row-major order."""
    model = _model(torch.float64)
    prompts = _prompts(seed=5)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [3, 2, 5, 1, 4, 5, 2, 3], response_width=5, seed=5)
    whole = shared_prefix_hidden(model, ids, mask, pos, response_mask)
    monkeypatch.setitem(shared_prefix._CACHE_BYTES, "cpu", 1)
    batch_plan = shared_prefix.plan(model, ids, mask, response_mask)
    assert all(len(c) == 1 for chunks in batch_plan.depths for c in chunks)
    assert all(len(c) == 1 for c in batch_plan.row_chunks)
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan), whole,
                               rtol=0, atol=1e-10)


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


def test_shared_prefix_hidden_with_eager_attention():
    model, reference = _model(torch.float32, "eager"), _model(torch.float32)
    prompts = _prompts(seed=3)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 4, 4, 1, 3, 4, 4, 2], response_width=4, seed=3)
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask),
                               forward.response_hidden(reference, ids, mask, pos, response_mask), rtol=0, atol=2e-5)


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
    monkeypatch.setattr(shared_prefix, "_NODE_TOKENS", node_tokens)
    for prompts in (_prompts(), _group_prompts(0), _group_prompts(5)):
        tree = prefix_tree(prompts, max_depth)
        assert max(tree.depth(), default=-1) < max_depth
        for node, length in enumerate(tree.length):  # a node's prefix is common to every row below it
            below = [r for r in range(len(prompts)) if _ancestors(tree, tree.row_parent[r]) & {node}]
            assert len(below) >= 2 and length <= _common_prefix(prompts, below)
            assert length > tree.prefix(tree.parent[node])
        ran = _run_tokens(tree, prompts) + node_tokens * len(tree.length)
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
    ids, mask, _, response_mask = _teacher_batch(prompts, [1, 3, 0, 2, 1, 4], response_width=4)
    plain, shared = shared_tokens(ids, mask, response_mask)
    # the head once, each peer block once, every row's own tail, and of each response the tokens before its
    # last (the hidden state of the token before a response token scores it)
    assert plain == sum(map(len, prompts)) + 11 and shared == 30 + 60 + 65 + 3 * 3 + 3 * 2 + (0 + 2 + 0 + 1 + 0 + 3)


def test_a_one_token_prompt_runs_whole_beside_shared_ones():
    model = _model(torch.float64)
    prompts = _prompts(seed=4)[:4] + [[5]]
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2, 2, 1, 2, 2], response_width=2, seed=4)
    batch_plan = shared_prefix.plan(model, ids, mask, response_mask)
    assert batch_plan is not None and batch_plan.tree.row_parent[4] == -1
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask),
                               forward.response_hidden(model, ids, mask, pos, response_mask), rtol=0, atol=1e-10)


def test_little_to_share_falls_back_to_the_plain_forward():
    model = _model(torch.float64)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 264, (20,), generator=g).tolist() for _ in range(4)]
    prompts[1][:2] = prompts[0][:2]  # 2 shared tokens of 84: not worth a second call
    ids, mask, pos, response_mask = _teacher_batch(prompts, [2] * 4, response_width=2)
    assert shared_prefix_hidden(model, ids, mask, pos, response_mask) is None


@pytest.mark.parametrize("attn,tol", [("sdpa", 1e-10), ("eager", 2e-5)])  # eager: a float32 softmax
def test_siblings_packed_into_one_forward_row_give_the_same_hidden_states(attn, tol, monkeypatch):
    """Rows under one parent with short tails share a forward row under a 4D mask (each sees the parent and
    itself, not its siblings); the result equals the plain forward and the one-row-per-row pass."""
    model, reference = _model(torch.float64, attn), _model(torch.float64)  # (eager's own plain forward: NaN
    prompts = _group_prompts(0)                                            # at left padding in float64)
    ids, mask, pos, response_mask = _teacher_batch(prompts, [5, 1, 7, 3, 7, 0, 6, 2], response_width=7)
    batch_plan = shared_prefix.plan(model, ids, mask, response_mask)
    segment = [(batch_plan.starts[r] + batch_plan.tree.prefix(batch_plan.tree.row_parent[r]),
                ids.shape[1] - 7 + batch_plan.scored[r]) for r in range(len(prompts))]
    packs = [p for c in batch_plan.row_chunks for p in shared_prefix._sibling_packs(batch_plan.tree, c, segment, True)]
    assert any(len(p) > 1 for p in packs)
    packed = shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan)
    torch.testing.assert_close(packed, forward.response_hidden(reference, ids, mask, pos, response_mask),
                               rtol=0, atol=tol)
    monkeypatch.setattr(shared_prefix, "_takes_4d_masks", lambda module: False)  # as under flash-attention
    torch.testing.assert_close(shared_prefix_hidden(model, ids, mask, pos, response_mask, batch_plan), packed,
                               rtol=0, atol=tol)


def test_sibling_packs_keep_long_tails_and_orphans_apart():
    tree = shared_prefix.Tree(length=[100], row=[0], parent=[-1], row_parent=[0, 0, 0, -1, 0])
    segment = [(0, 4), (0, 5), (0, 30), (0, 3), (0, 2)]
    # rows 0, 1, 4 under the node: 11 columns, within a quarter of its 100; row 3 has no parent
    assert shared_prefix._sibling_packs(tree, [0, 1, 3, 4], segment, True) == [[0, 1, 4], [3]]
    # with row 2 the siblings hold 41 columns: more than a quarter, each runs alone
    assert shared_prefix._sibling_packs(tree, [0, 1, 2, 3, 4], segment, True) == [[0], [1], [2], [4], [3]]
    assert shared_prefix._sibling_packs(tree, [0, 1, 3, 4], segment, False) == [[0], [1], [3], [4]]
