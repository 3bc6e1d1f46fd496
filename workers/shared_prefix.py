"""Shared-prefix teacher scoring: run each distinct teacher-prompt prefix once.

The teacher prompts of one prompt's rollouts begin alike: the chat template, the question, and often
the same successful peers. ``shared_prefix_hidden`` clusters a micro-batch's rows by common prompt
prefix (``prefix_clusters``), runs each cluster's prefix once with a KV cache, repeats the cache to the
cluster's rows, and runs every row's own rest (prompt tail + response) against it. Attention, positions
and masks are those of the plain forward, so the hidden states equal ``forward.response_hidden``'s to float rounding
(tests/workers/test_shared_prefix.py); only the no-grad teacher uses it.

Layout. Inputs are ``[left-padded prompt | right-padded response (R columns)]`` rows. The prefix pass
holds one left-padded row per cluster; the rest pass holds each row's tail followed by its R response
columns, right-padded, so valid tokens stay contiguous (what flash-attention's unpadding expects). A
prefix stops one token short of the shortest member prompt, so every row's last prompt token -- whose
hidden state scores the first response token -- is in the rest pass.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch

from workers.forward import _HeadCall, output_head


def prefix_clusters(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: its cluster ``[B]``, the cluster's shared prefix length ``[C]``, the row's first prompt
    column ``[B]``.

    Rows are sorted by their prompt tokens, so rows sharing a prefix are neighbours and the common prefix
    of a run of rows is the smallest common prefix of adjacent pairs; the runs are then cut to save the
    most tokens (a run of k rows sharing P tokens saves (k - 1) * P; dynamic programming over cut points).
    A prefix stops one token short of each member's prompt. Grouping by content, not by prompt uid:
    members of one prompt group can differ early (feedback shown or not) and agree later with others.
    """
    prompt_width = input_ids.shape[1] - response_width
    prompt_len = attention_mask[:, :prompt_width].sum(-1).tolist()
    starts = [prompt_width - n for n in prompt_len]
    rows = input_ids[:, :prompt_width].tolist()
    prompts = [row[s:] for row, s in zip(rows, starts)]
    order = sorted(range(len(prompts)), key=lambda r: prompts[r])
    adjacent = []  # usable common prefix of sorted neighbours k and k + 1
    for a, b in zip(order, order[1:]):
        cap = min(len(prompts[a]), len(prompts[b])) - 1
        n = 0
        while n < cap and prompts[a][n] == prompts[b][n]:
            n += 1
        adjacent.append(n)
    count = len(order)
    best, cut = [0] * (count + 1), [0] * (count + 1)  # best saving over the first j sorted rows
    for j in range(1, count + 1):
        best[j], cut[j] = best[j - 1], j - 1  # row j - 1 alone
        shared = None
        for i in range(j - 2, -1, -1):  # rows i .. j - 1 together
            shared = adjacent[i] if shared is None else min(shared, adjacent[i])
            if shared == 0:
                break
            if best[i] + (j - i - 1) * shared > best[j]:
                best[j], cut[j] = best[i] + (j - i - 1) * shared, i
    row_cluster = [0] * count
    prefix_len: list[int] = []
    j = count
    while j > 0:
        i = cut[j]
        members = order[i:j]
        shared = min(adjacent[i:j - 1]) if j - i > 1 else len(prompts[members[0]]) - 1
        for r in members:
            row_cluster[r] = len(prefix_len)
        prefix_len.append(max(shared, 0))
        j = i
    return (torch.tensor(row_cluster, dtype=torch.long), torch.tensor(prefix_len, dtype=torch.long),
            torch.tensor(starts, dtype=torch.long))


# The rest pass keeps every layer's K/V for its rows' prefix and rest at once (the plain forward keeps one
# layer's at a time), so it goes in row chunks whose cache stays under this many bytes.
_CACHE_BYTES = {"cpu": 512 * 1024 * 1024, "cuda": 4 * 1024 * 1024 * 1024}


def _cache_bytes_per_token(module, dtype: torch.dtype) -> int:
    cfg = module.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * heads * head_dim * torch.finfo(dtype).bits // 8


def _cache_kwarg(module) -> str:
    """transformers 5.2x names the forward's cache argument ``cache`` (``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _empty_cache(module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=module.config)
    except TypeError:  # older transformers: no per-layer types to set up
        return DynamicCache()


def _gather_rows(tensor: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """``tensor[r, cols[r, j]]`` where ``valid``, ``fill`` elsewhere."""
    out = tensor.gather(1, cols.clamp(min=0, max=tensor.shape[1] - 1))
    return out.masked_fill(~valid, fill)


def _saved_tokens(row_cluster: torch.Tensor, prefix_len: torch.Tensor) -> int:
    """Tokens the shared-prefix forward does not run: each cluster's prefix, once per member but one."""
    return int(prefix_len[row_cluster].sum()) - int(prefix_len.sum())


@dataclass
class Plan:
    """How ``shared_prefix_hidden`` runs a batch (host tensors): each row's cluster, the clusters' prefix
    lengths and first rows, the rows' first prompt columns and tail lengths (prompt after the prefix),
    and the row chunks of the rest passes."""

    row_cluster: torch.Tensor
    prefix_len: torch.Tensor
    first_row: torch.Tensor
    starts: torch.Tensor
    tails: torch.Tensor
    rest_chunks: list[list[int]]

    @property
    def forwards(self) -> int:
        return 1 + len(self.rest_chunks)


def plan(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int) -> Plan | None:
    """The plan for a batch, or ``None`` when the plain forward should run instead. Host-side only (no
    forward, no collective), so a rank can learn how many forwards it will make before making any."""
    row_cluster, prefix_len, starts = prefix_clusters(input_ids, attention_mask, response_width)
    # A cluster without a prefix (a one-token prompt) would run an all-padding prefix row; and a saving
    # under 1/8 of the tokens does not pay for the second model call.
    if int(prefix_len.min()) < 1 or 8 * _saved_tokens(row_cluster, prefix_len) < int(attention_mask.sum()):
        return None
    tails = (input_ids.shape[1] - response_width) - starts - prefix_len[row_cluster]
    clusters = row_cluster.tolist()
    first_row = torch.tensor([clusters.index(c) for c in range(len(prefix_len))], dtype=torch.long)
    param = next(module.parameters())
    per_token = _cache_bytes_per_token(module, param.dtype)
    budget = _CACHE_BYTES.get(param.device.type, _CACHE_BYTES["cuda"])
    chunks = _rest_chunks(tails.tolist(), response_width, int(prefix_len.max()), budget // per_token)
    return Plan(row_cluster, prefix_len, first_row, starts, tails, chunks)


@torch.no_grad()
def shared_prefix_hidden(module, input_ids, attention_mask, position_ids, response_mask: torch.Tensor,
                         batch_plan: Plan | None = None) -> torch.Tensor | None:
    """Final hidden states at the valid response positions ``[M, H]`` (row-major over ``response_mask``),
    as ``forward.response_hidden`` returns them, in ``batch_plan.forwards`` calls of ``module``; ``None``
    when ``plan`` says to run the plain forward."""
    device = input_ids.device
    resp = response_mask.shape[1]
    batch_plan = batch_plan or plan(module, input_ids, attention_mask, resp)
    if batch_plan is None:
        return None
    prefix_len, first_row, starts, row_cluster, tail_len = (
        t.to(device) for t in (batch_plan.prefix_len, batch_plan.first_row, batch_plan.starts,
                               batch_plan.row_cluster, batch_plan.tails))
    name, head = output_head(module)
    cache_arg = _cache_kwarg(module)

    # The prefix pass: one left-padded row per cluster (its first member's columns).
    p_width = int(prefix_len.max())
    ar = torch.arange(p_width, device=device)
    p_valid = ar.unsqueeze(0) >= (p_width - prefix_len).unsqueeze(1)
    p_cols = starts[first_row].unsqueeze(1) + ar.unsqueeze(0) - (p_width - prefix_len).unsqueeze(1)
    p_ids = _gather_rows(input_ids[first_row], p_cols, p_valid)
    p_pos = _gather_rows(position_ids[first_row], p_cols, p_valid)
    p_mask = p_valid.to(attention_mask.dtype)

    # The rest passes: each row's prompt tail, then its R response columns, right-padded; rows in order of
    # tail length, cut into chunks that bound the padding and the cache (``_rest_chunks``).
    valid = response_mask.bool()
    counts = valid.sum(-1)
    first_out = counts.cumsum(0) - counts  # where row r's scored positions start in the row-major output
    prefix_cache = _empty_cache(module)
    out = None

    def keep_nothing(hidden, weight):  # the prefix pass scores nothing: its hidden states are not needed
        return hidden[:, :0]

    try:
        setattr(module, name, _HeadCall(head, keep_nothing))
        module(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
               logits_to_keep=1, **{cache_arg: prefix_cache})
        for chunk in batch_plan.rest_chunks:
            idx = torch.tensor(chunk, device=device)
            tails = tail_len[idx]
            ar = torch.arange(int(tails.max()) + resp, device=device)
            cols = (starts[idx] + prefix_len[row_cluster[idx]]).unsqueeze(1) + ar.unsqueeze(0)
            in_rest = ar.unsqueeze(0) < (tails + resp).unsqueeze(1)
            r_ids = _gather_rows(input_ids[idx], cols, in_rest)
            r_pos = _gather_rows(position_ids[idx], cols, in_rest)
            r_mask = _gather_rows(attention_mask[idx], cols, in_rest)
            # Response token j of a row is scored by the hidden state at rest column tail - 1 + j.
            rows, j = valid[idx].nonzero(as_tuple=True)
            picked: list[torch.Tensor] = []
            cache = copy.deepcopy(prefix_cache)
            cache.reorder_cache(row_cluster[idx])  # each row's cluster prefix K/V
            setattr(module, name, _HeadCall(head, _keep(picked, rows, tails[rows] - 1 + j)))
            module(input_ids=r_ids, attention_mask=torch.cat([p_mask[row_cluster[idx]], r_mask], dim=1),
                   position_ids=r_pos, use_cache=True, logits_to_keep=0, **{cache_arg: cache})
            del cache
            if out is None:
                out = picked[0].new_empty((int(counts.sum()), picked[0].shape[-1]))
            out[first_out[idx][rows] + j] = picked[0]
    finally:
        setattr(module, name, head)
    return out


def _rest_chunks(tails: list[int], resp: int, prefix_width: int, max_cached_tokens: int,
                 waste: float = 1.25) -> list[list[int]]:
    """Rows by ascending tail length, cut where the next row would make the chunk's padded rest tokens
    exceed ``waste`` x its real ones, or its cache (prefix + rest columns) exceed ``max_cached_tokens``."""
    chunks: list[list[int]] = []
    real = 0
    for r in sorted(range(len(tails)), key=lambda r: tails[r]):
        width = tails[r] + resp  # the widest row so far: rows come in ascending tail order
        size = len(chunks[-1]) + 1 if chunks else 1
        if (chunks and size * width <= waste * (real + width)
                and size * (prefix_width + width) <= max(max_cached_tokens, prefix_width + width)):
            chunks[-1].append(r)
            real += width
        else:
            chunks.append([r])
            real = width
    return chunks


def _keep(picked: list, rows: torch.Tensor, cols: torch.Tensor):
    """A stand-in head that keeps the hidden states at (rows, cols) and returns no logits."""
    def keep(hidden, weight):
        picked.append(hidden[rows, cols])
        return hidden[:, :0]
    return keep


def shared_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int) -> tuple[int, int]:
    """(tokens the plain teacher forward runs, tokens the shared-prefix forward runs), padding excluded."""
    row_cluster, prefix_len, _ = prefix_clusters(input_ids, attention_mask, response_width)
    plain = int(attention_mask.sum())
    return plain, plain - _saved_tokens(row_cluster, prefix_len)
