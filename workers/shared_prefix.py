"""Shared-prefix teacher scoring: run each group's common teacher-prompt prefix once.

The teacher prompts of one prompt's rollouts begin alike: the chat template, the question, and often
the same successful peers (on the embedded task ~165 of ~190 tokens). ``shared_prefix_hidden`` runs
each group's longest common prompt prefix once with a KV cache, repeats the cache to the group's rows,
and runs every row's own rest (prompt tail + response) against it. Attention, positions and masks are
those of the plain forward, so the hidden states equal ``forward.response_hidden``'s to float rounding
(tests/workers/test_shared_prefix.py); only the no-grad teacher uses it.

Layout. Inputs are ``[left-padded prompt | right-padded response (R columns)]`` rows. The prefix pass
holds one left-padded row per group; the rest pass holds each row's tail followed by its R response
columns, right-padded, so valid tokens stay contiguous (what flash-attention's unpadding expects). A
prefix stops one token short of the shortest member prompt, so every row's last prompt token -- whose
hidden state scores the first response token -- is in the rest pass.
"""

from __future__ import annotations

import inspect

import torch

from workers.forward import _HeadCall, output_head


def group_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int,
                   group_of_row: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: its group index ``[B]``, the group's shared prefix length ``[G]``, the row's first prompt
    column ``[B]``. Rows with equal ``group_of_row`` keys (the prompt uid) form a group."""
    prompt_width = input_ids.shape[1] - response_width
    prompt_len = attention_mask[:, :prompt_width].sum(-1)
    starts = prompt_width - prompt_len
    keys: dict = {}
    row_group = torch.tensor([keys.setdefault(k, len(keys)) for k in group_of_row], dtype=torch.long)
    prefix_len = torch.zeros(len(keys), dtype=torch.long)
    for g in range(len(keys)):
        rows = (row_group == g).nonzero().flatten().to(input_ids.device)
        shortest = int(prompt_len[rows].min())
        cols = starts[rows].unsqueeze(1) + torch.arange(shortest, device=input_ids.device)
        tokens = input_ids[rows.unsqueeze(1), cols]  # member prompts aligned at their first token
        agree = (tokens == tokens[:1]).all(0).long().cumprod(0)
        prefix_len[g] = min(int(agree.sum()), shortest - 1)
    return row_group, prefix_len, starts.cpu()


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


@torch.no_grad()
def shared_prefix_hidden(module, input_ids, attention_mask, position_ids, response_mask: torch.Tensor,
                         group_of_row: list) -> torch.Tensor | None:
    """Final hidden states at the valid response positions ``[M, H]`` (row-major over ``response_mask``),
    as ``forward.response_hidden`` returns them; ``None`` when no row has a prefix to share (the caller
    runs the plain forward)."""
    device = input_ids.device
    batch, width = input_ids.shape
    resp = response_mask.shape[1]
    row_group, prefix_len, starts = group_prefixes(input_ids, attention_mask, resp, group_of_row)
    if int(prefix_len.min()) < 1:
        return None
    prefix_len, starts, row_group = prefix_len.to(device), starts.to(device), row_group.to(device)
    groups = prefix_len.shape[0]
    name, head = output_head(module)
    cache_arg = _cache_kwarg(module)

    # The prefix pass: one left-padded row per group (its first member's columns).
    first_row = torch.stack([(row_group == g).nonzero()[0, 0] for g in range(groups)])
    p_width = int(prefix_len.max())
    ar = torch.arange(p_width, device=device)
    p_valid = ar.unsqueeze(0) >= (p_width - prefix_len).unsqueeze(1)
    p_cols = starts[first_row].unsqueeze(1) + ar.unsqueeze(0) - (p_width - prefix_len).unsqueeze(1)
    p_ids = _gather_rows(input_ids[first_row], p_cols, p_valid)
    p_pos = _gather_rows(position_ids[first_row], p_cols, p_valid)
    p_mask = p_valid.to(attention_mask.dtype)

    # The rest pass: each row's prompt tail, then its R response columns, right-padded.
    tail_len = (width - resp) - starts - prefix_len[row_group]
    r_width = int(tail_len.max()) + resp
    ar = torch.arange(r_width, device=device)
    r_cols = (starts + prefix_len[row_group]).unsqueeze(1) + ar.unsqueeze(0)
    in_rest = ar.unsqueeze(0) < (tail_len + resp).unsqueeze(1)
    r_ids = _gather_rows(input_ids, r_cols, in_rest)
    r_pos = _gather_rows(position_ids, r_cols, in_rest)
    r_mask = _gather_rows(attention_mask, r_cols, in_rest)
    # Response token j of row r is scored by the hidden state at rest column tail_len[r] - 1 + j.
    valid = response_mask.bool()
    rows, j = valid.nonzero(as_tuple=True)
    score_cols = tail_len[rows] - 1 + j

    cache = _empty_cache(module)
    picked: list[torch.Tensor] = []

    def keep_nothing(hidden, weight):
        return hidden[:, :0]

    def keep_scored(hidden, weight):
        picked.append(hidden[rows, score_cols])
        return hidden[:, :0]

    try:
        setattr(module, name, _HeadCall(head, keep_nothing))
        module(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
               logits_to_keep=1, **{cache_arg: cache})
        cache.reorder_cache(row_group)  # the group's prefix K/V, once per member row
        setattr(module, name, _HeadCall(head, keep_scored))
        module(input_ids=r_ids, attention_mask=torch.cat([p_mask[row_group], r_mask], dim=1), position_ids=r_pos,
               use_cache=True, logits_to_keep=0, **{cache_arg: cache})
    finally:
        setattr(module, name, head)
    return picked[0]


def shared_tokens(attention_mask: torch.Tensor, response_width: int, group_of_row: list,
                  input_ids: torch.Tensor) -> tuple[int, int]:
    """(teacher tokens the plain forward runs, tokens the shared-prefix forward runs) for a batch: the
    ``perf/teacher_*`` figures."""
    row_group, prefix_len, _ = group_prefixes(input_ids, attention_mask, response_width, group_of_row)
    plain = int(attention_mask.sum())
    return plain, plain - int((prefix_len[row_group]).sum()) + int(prefix_len.sum())
