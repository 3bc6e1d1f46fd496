"""The host-side plan of the shared-prefix teacher forward (``workers.shared_prefix``): which prompt
prefixes to run once, and how to cut the work into forwards.

The teacher prompts of one prompt's rollouts begin alike: the chat template, the question, then often
the same successful peers. ``prefix_tree`` arranges a batch's prompts into a tree whose nodes are shared
prefixes (a node's prefix extends its parent's): the compressed trie of the sorted prompts, with the
nodes worth keeping chosen by dynamic programming within a depth limit. ``plan`` adds the forwards: each
depth's node segments, then the rows' tails and responses, cut into chunks by dynamic programming over
their widths. Nothing here runs a model or a collective, so a rank can learn how many forwards it will
make before making any (FSDP2: every forward all-gathers).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

# Kept prefixes above any row, at most (each depth is another forward): typically rows under their shared
# peers, those under their question; a third level (the chat template) saves little. On an embedded MOPD
# mini-batch (docs/performance.md) a third level ran fewer tokens but no faster.
_MAX_DEPTH = 2
# What keeping a node costs beyond its tokens (a row in a forward, its keys/values copied to its
# children), in tokens: a node must save more than this.
_NODE_TOKENS = 16
# A forward keeps every layer's K/V for its rows' parents and segments at once (the plain forward keeps
# one layer's at a time), so each runs a chunk of segments whose K/V stays under this many bytes.
_CACHE_BYTES = {"cpu": 512 * 1024 * 1024, "cuda": 4 * 1024 * 1024 * 1024}
# A forward's fixed cost counted in tokens, against which padding is weighed when cutting chunks: Python,
# kernel launches and (FSDP2) the weights' all-gather; a GPU runs far more tokens in that time.
_FORWARD_TOKENS = {"cpu": 128, "cuda": 1024}


def _sorted_trie(prompts: list[list[int]]) -> tuple:
    """The compressed trie of the prompts, each usable up to one token short of its end: a node is
    ``(shared length, children)``, a leaf a row index. Sorted, prompts sharing a prefix are neighbours and
    a run's common prefix is the smallest common prefix of its adjacent pairs, so the trie splits the
    sorted order at its smallest adjacent common prefix, recursively."""
    order = sorted(range(len(prompts)), key=lambda r: prompts[r])
    adjacent = []  # usable common prefix of sorted neighbours k and k + 1
    for a, b in zip(order, order[1:]):
        cap = min(len(prompts[a]), len(prompts[b])) - 1
        n = 0
        while n < cap and prompts[a][n] == prompts[b][n]:
            n += 1
        adjacent.append(n)

    def build(lo: int, hi: int):
        if hi - lo == 1:
            return order[lo]
        shared = min(adjacent[lo : hi - 1])
        cuts = [lo] + [i + 1 for i in range(lo, hi - 1) if adjacent[i] == shared] + [hi]
        return shared, [build(a, b) for a, b in zip(cuts, cuts[1:])]

    return build(0, len(order))


@dataclass
class Tree:
    """Shared prefixes of a batch's prompts. Node n is the first ``length[n]`` prompt tokens of row
    ``row[n]`` (and of every row below it); ``parent`` is a node id or -1, for nodes and for rows. A
    node's parent has a smaller id."""

    length: list[int]
    row: list[int]
    parent: list[int]
    row_parent: list[int]

    def depth(self) -> list[int]:
        depth: list[int] = []
        for p in self.parent:
            depth.append(depth[p] + 1 if p >= 0 else 0)
        return depth

    def prefix(self, node: int) -> int:
        return self.length[node] if node >= 0 else 0


def prefix_tree(prompts: list[list[int]], max_depth: int | None = None) -> Tree:
    """The prefixes worth running once: the trie's nodes that save the most tokens with at most
    ``max_depth`` nodes above any row (each depth is another forward). Keeping a node of prefix L under a
    kept prefix P runs its L - P tokens once instead of once per child; dynamic programming over the trie
    chooses, for every node, keep or dissolve (its children then run those tokens themselves). The rows
    of a group share their successful peers, the group its question; by content, not by prompt uid: rows
    of one group can differ early (feedback shown or not) and agree later with others."""
    max_depth = _MAX_DEPTH if max_depth is None else max_depth
    with _recursion_for(len(prompts)):
        return _prefix_tree(prompts, max_depth)


@contextlib.contextmanager
def _recursion_for(rows: int):
    """The trie can be as deep as there are rows (prompts each a prefix of the next), and building,
    costing and placing it recurse a few frames per level: lift Python's limit for that, then restore it."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * rows + 200))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _prefix_tree(prompts: list[list[int]], max_depth: int) -> Tree:
    trie = _sorted_trie(prompts)
    memo: dict = {}
    below: dict[int, tuple[int, int]] = {}  # per trie node: (rows below, their prompt tokens)

    def count(item) -> tuple[int, int]:
        if isinstance(item, int):
            return 1, len(prompts[item])
        rows, tokens = map(sum, zip(*(count(c) for c in item[1])))
        below[id(item)] = rows, tokens
        return rows, tokens

    count(trie)

    def cost(item, levels: int, above: int) -> tuple[int, bool]:
        """(tokens the subtree runs under a kept prefix of ``above`` tokens, whether to keep ``item``)."""
        if isinstance(item, int):
            return len(prompts[item]) - above, False
        if levels == 0:  # nothing more can be kept: every row below runs all past ``above``
            rows, tokens = below[id(item)]
            return tokens - rows * above, False
        key = (id(item), levels, above)
        if key not in memo:
            shared, children = item
            dissolve = sum(cost(c, levels, above)[0] for c in children)
            keep = (
                shared - above + _NODE_TOKENS + sum(cost(c, levels - 1, shared)[0] for c in children)
                if levels > 0 and shared > above
                else dissolve + 1
            )
            memo[key] = (keep, True) if keep < dissolve else (dissolve, False)
        return memo[key]

    tree = Tree([], [], [], [-1] * len(prompts))

    def place(item, levels: int, above: int, parent: int) -> int:
        """Record the kept nodes of ``item``'s subtree under ``parent``; returns a row of the subtree."""
        if isinstance(item, int):
            tree.row_parent[item] = parent
            return item
        shared, children = item
        if not cost(item, levels, above)[1]:  # dissolved: its children hang from its parent
            return [place(c, levels, above, parent) for c in children][0]
        node = len(tree.length)  # ids in placing order: a parent before its children
        tree.length.append(shared)
        tree.parent.append(parent)
        tree.row.append(-1)
        rows_below = [place(c, levels - 1, shared, node) for c in children]
        tree.row[node] = rows_below[0]  # any row below holds the node's tokens
        return tree.row[node]

    place(trie, max_depth, 0, -1)
    return tree


@dataclass
class Plan:
    """How ``shared_prefix_hidden`` runs a batch (host-side): the tree, each row's first prompt column and
    response columns to run (``_response_run``), ``same_as`` the row whose forward gives each row its hidden
    states (itself, or an identical row: ``_identical_rows``), and the forwards: ``depths[d]`` lists chunks
    of node ids (one forward each), ``row_chunks`` chunks of rows; ``tokens`` the tokens they run (padding
    excluded)."""

    tree: Tree
    starts: list[int]
    scored: list[int]
    same_as: list[int]
    depths: list[list[list[int]]]
    row_chunks: list[list[int]]
    tokens: int

    @property
    def forwards(self) -> int:
        return sum(len(chunks) for chunks in self.depths) + len(self.row_chunks)


def tokens_run(batch_plan: Plan | None, attention_mask: torch.Tensor) -> int:
    """Tokens a forward of the batch runs, padding excluded: the plan's, or every valid token's (plain)."""
    return batch_plan.tokens if batch_plan is not None else int(attention_mask.sum())


def _prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int):
    prompt_width = input_ids.shape[1] - response_width
    starts = [prompt_width - n for n in attention_mask[:, :prompt_width].sum(-1).tolist()]
    return [row[s:prompt_width] for row, s in zip(input_ids[:, :prompt_width].tolist(), starts)], starts


def _run_tokens(tree: Tree, prompts: list[list[int]], rows: list[int], response_run: list[int]) -> int:
    """Tokens the tree's forwards run: each node's segment once, each of ``rows`` its prompt tail and its
    response columns (``_response_run``)."""
    nodes = sum(tree.length[n] - tree.prefix(tree.parent[n]) for n in range(len(tree.length)))
    return nodes + sum(len(prompts[r]) - tree.prefix(tree.row_parent[r]) + response_run[r] for r in rows)


def _response_run(response_mask: torch.Tensor) -> list[int]:
    """Per row, the response columns it runs: response token j is scored by the hidden state of the token
    before it, so a row whose last scored token is j runs columns 0 .. j - 1 of its response (and its
    prompt tail); -1: nothing to score, the row does not run."""
    last = response_mask.shape[1] - 1 - response_mask.flip(1).to(torch.long).argmax(1)
    return last.masked_fill(~response_mask.bool().any(1), -1).tolist()


def _identical_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    prompts: list[list[int]],
    response_run: list[int],
) -> list[int]:
    """Per row, the first row that runs the same inputs: the same prompt and the same response columns
    before its last scored token (ids and mask). That row's forward holds its hidden states at every
    position it scores, so it need not run (rollouts of one prompt often answer alike, and their teacher
    prompts agree when their peers do). The last scored token itself is not an input: rows that differ
    only there share. Positions follow from the mask, as everywhere in the shared-prefix forward."""
    prompt_width = input_ids.shape[1] - response_mask.shape[1]
    ids = input_ids[:, prompt_width:].tolist()
    mask = attention_mask[:, prompt_width:].tolist()
    first: dict[tuple, int] = {}
    same_as = []
    for r, (prompt, run) in enumerate(zip(prompts, response_run)):
        key = (tuple(prompt), tuple(ids[r][:run]), tuple(mask[r][:run]))
        same_as.append(first.setdefault(key, r) if run >= 0 else r)
    return same_as


def _layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
    """(prompts, their first columns, response columns run, ``same_as``, the rows that run, the tree over
    them): the tree is built from the rows that run, so an identical row neither runs nor sways its nodes."""
    prompts, starts = _prompts(input_ids, attention_mask, response_mask.shape[1])
    scored = _response_run(response_mask)
    same_as = _identical_rows(input_ids, attention_mask, response_mask, prompts, scored)
    runs = [r for r in range(len(prompts)) if scored[r] >= 0 and same_as[r] == r]
    tree = prefix_tree([prompts[r] for r in runs]) if runs else Tree([], [], [], [])
    row_parent = [-1] * len(prompts)
    for i, r in enumerate(runs):
        row_parent[r] = tree.row_parent[i]
    tree = Tree(tree.length, [runs[i] for i in tree.row], tree.parent, row_parent)
    return prompts, starts, scored, same_as, runs, tree


def plan(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> Plan | None:
    """The plan for a batch, or ``None`` when the plain forward should run instead (a saving under 1/8 of
    the tokens does not pay for the extra model calls). Host-side only (no forward, no collective), so a
    rank can learn how many forwards it will make before making any."""
    prompts, starts, scored, same_as, rows, tree = _layout(input_ids, attention_mask, response_mask)
    total, tokens = int(attention_mask.sum()), _run_tokens(tree, prompts, rows, scored)
    if not rows or 8 * (total - tokens) < total:
        return None
    param = next(module.parameters())
    budget = _CACHE_BYTES.get(param.device.type, _CACHE_BYTES["cuda"]) // _cache_bytes_per_token(
        module, compute_dtype(module)
    )
    per_forward = _FORWARD_TOKENS.get(param.device.type, _FORWARD_TOKENS["cuda"])
    depth = tree.depth()
    depths = []
    for d in range(max(depth, default=-1) + 1):
        nodes = [n for n in range(len(depth)) if depth[n] == d]
        own = [tree.length[n] - tree.prefix(tree.parent[n]) for n in nodes]
        above = [tree.prefix(tree.parent[n]) for n in nodes]
        depths.append([[nodes[i] for i in chunk] for chunk in _chunks(own, above, budget, per_forward)])
    # A row runs its prompt tail and its response up to the last scored token's predecessor; a row with
    # nothing to score, or identical to an earlier one, does not run.
    widths = [len(prompts[r]) - tree.prefix(tree.row_parent[r]) + scored[r] for r in rows]
    above = [tree.prefix(tree.row_parent[r]) for r in rows]
    row_chunks = [[rows[i] for i in chunk] for chunk in _chunks(widths, above, budget, per_forward)]
    return Plan(tree, starts, scored, same_as, depths, row_chunks, tokens)


def _chunks(widths: list[int], above: list[int], max_cached_tokens: int, forward_tokens: int) -> list[list[int]]:
    """Segments (``widths[i]`` columns after ``above[i]`` cached ones) cut into chunks, one forward each:
    contiguous runs of the segments in ascending width (each runs right-padded to its widest), chosen by
    dynamic programming to run the fewest padded columns plus ``forward_tokens`` per forward, with each
    chunk's K/V (widest parent + widest segment, per member) within ``max_cached_tokens``."""
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    cost, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        top = 0
        for i in range(j - 1, -1, -1):  # order[i:j] in one forward; its widest segment is order[j - 1]
            top = max(top, above[order[i]])
            size, width = j - i, widths[order[j - 1]]
            if size > 1 and size * (top + width) > max_cached_tokens:
                break
            if cost[i] + forward_tokens + size * width < cost[j]:
                cost[j], cut[j] = cost[i] + forward_tokens + size * width, i
    chunks = []
    j = len(order)
    while j > 0:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]


def compute_dtype(module) -> torch.dtype:
    """The dtype the forward (and so the KV cache) runs in: FSDP2's mixed-precision ``param_dtype`` (bf16 over
    float32 masters), else the parameters' own dtype. Sizing the cache budget from the float32 masters
    would halve the tokens it holds."""
    param_dtype = None
    state = getattr(module, "_get_fsdp_state", None)
    if state is not None:  # FSDP2 keeps the policy on its state (no public getter in torch 2.13)
        param_dtype = getattr(getattr(state(), "_mp_policy", None), "param_dtype", None)
    return param_dtype or next(module.parameters()).dtype


def _cache_bytes_per_token(module, dtype: torch.dtype) -> int:
    cfg = module.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * heads * head_dim * torch.finfo(dtype).bits // 8


def shared_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[int, int]:
    """(tokens the plain teacher forward runs, tokens the shared-prefix forward runs), padding excluded."""
    prompts, _, scored, _, rows, tree = _layout(input_ids, attention_mask, response_mask)
    return int(attention_mask.sum()), _run_tokens(tree, prompts, rows, scored)
