"""Shared-prefix forwards: run each distinct prompt prefix once, as a tree of prefixes (the teacher's
peer-context prompts, and the student's prompt under its rollouts).

``shared_prefix_hidden`` runs the plan of ``workers.prefix_plan`` depth by depth: every node of the
prefix tree runs only its own segment (its prefix minus its parent's) against its parent's keys/values,
and every row finally runs its prompt tail and its response (as far as it is scored) against its deepest
node's. Attention, positions and masks are those of the plain forward, so the hidden states equal
``forward.response_hidden``'s to float rounding (tests/workers/test_shared_prefix.py), and so do the
gradients of the student's loss through it (tests/workers/test_actor_loss.py).

Layout. Inputs are ``[left-padded prompt | right-padded response (R columns)]`` rows, so a node's segment
and a row's tail + response are each one contiguous column range of a row. Each forward runs a chunk of
segments right-padded after their parents' keys/values (left-padded), so a row's valid keys and queries
are contiguous (what flash-attention's unpadding expects). A node stops at least one token short of each
member's prompt, so every row's last prompt token -- whose hidden state scores the first response token
-- is in the rows' pass. Where the attention takes a 4D mask (sdpa, eager), rows under one parent whose
tails are short share one forward row, each segment masked to its parent and itself
(``_sibling_packs``): the parent's keys/values are then copied once for them, not once per row. A row
with the same inputs as an earlier one (``Plan.same_as``) does not run: its scored positions are read from
that row's forward, each at its own output index (so ``fn`` sees its own labels there).
"""

from __future__ import annotations

import torch

from workers import forward, model_utils, packed_attention, prefix_plan
from workers.forward import _HeadCall, output_head
from workers.prefix_plan import Plan, Tree, plan


class _KV:
    """The keys/values of a chunk of nodes after their forward, left-padded per row (``width`` columns),
    with the mask of their valid columns."""

    def __init__(self, cache, mask: torch.Tensor):
        # After the forward a row holds [left-padded parent | right-padded segment]; rotating each row right
        # by its segment padding makes it [padding | parent | segment]: left-padded, valid columns contiguous.
        width = mask.shape[1]
        pad = width - 1 - torch.where(mask.bool(), torch.arange(width, device=mask.device), -1).max(-1).values
        keep = int(mask.sum(-1).max())
        cols = ((torch.arange(width, device=mask.device) - pad.unsqueeze(1)) % width)[:, width - keep :]
        self.mask = mask.gather(1, cols)
        self.layers = []
        for keys, values in model_utils.cache_layers(cache):
            index = cols[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            self.layers.append((keys.gather(2, index), values.gather(2, index)))


def _parent_cache(module, stored: dict[int, tuple[_KV, int]], parents: list[int], mask_dtype: torch.dtype):
    """A cache holding each parent's keys/values, left-padded to the widest (a parent -1: none), and its
    ``[rows, width]`` mask."""
    cache = model_utils.new_cache(module)
    groups: dict[int, tuple[_KV, list[int], list[int]]] = {}  # per stored chunk: (K/V, rows here, rows there)
    for j, p in enumerate(parents):
        if p >= 0:
            kv, i = stored[p]
            entry = groups.setdefault(id(kv), (kv, [], []))
            entry[1].append(j)
            entry[2].append(i)
    if not groups:
        return cache, None
    width = max(kv.mask.shape[1] for kv, _, _ in groups.values())
    anchor = next(iter(groups.values()))[0]
    device = anchor.mask.device
    picks = [
        (kv, torch.tensor(here, device=device), torch.tensor(there, device=device))
        for kv, here, there in groups.values()
    ]
    orphans = torch.tensor([j for j, p in enumerate(parents) if p < 0], device=device, dtype=torch.long)
    mask = anchor.mask.new_zeros((len(parents), width), dtype=mask_dtype)
    for kv, here, there in picks:
        mask[here, width - kv.mask.shape[1] :] = kv.mask[there].to(mask_dtype)
    for layer in range(len(anchor.layers)):
        if len(picks) == 1 and not len(orphans):  # one source, rows in order: a single gather
            k, v = (t.index_select(0, picks[0][2]) for t in anchor.layers[layer])
        else:  # masked columns hold zeros, not whatever memory held (0 x NaN would leak through softmax)
            keys = anchor.layers[layer][0]
            k = keys.new_empty((len(parents), keys.shape[1], width, keys.shape[3]))
            v = torch.empty_like(k)
            k[orphans], v[orphans] = 0, 0
            for kv, here, there in picks:
                pad = width - kv.mask.shape[1]
                k[here, :, :pad], v[here, :, :pad] = 0, 0
                k[here, :, pad:], v[here, :, pad:] = kv.layers[layer][0][there], kv.layers[layer][1][there]
        cache.update(k, v, layer)
    return cache, mask


@torch.no_grad()
def shared_prefix_hidden(
    module, input_ids, attention_mask, position_ids, response_mask: torch.Tensor, batch_plan: Plan | None = None
) -> torch.Tensor | None:
    """Final hidden states at the valid response positions ``[M, H]`` (row-major over ``response_mask``),
    as ``forward.response_hidden`` returns them, in ``batch_plan.forwards`` calls of ``module``; ``None``
    when ``plan`` says to run the plain forward."""
    return shared_prefix_head(
        module, input_ids, attention_mask, position_ids, response_mask, lambda hidden, weight, where: hidden, batch_plan
    )


def shared_prefix_head(
    module, input_ids, attention_mask, position_ids, response_mask: torch.Tensor, fn, batch_plan: Plan | None = None
) -> torch.Tensor | None:
    """``fn(hidden [m, H], weight [V, H], where [m]) -> [m, K]`` on the valid response positions, as
    ``forward.response_head`` computes it, assembled into ``[M, K]`` (row-major over ``response_mask``;
    ``where``: the positions' indices there); ``None`` when ``plan`` says to run the plain forward.

    ``fn`` runs inside each forward of the rows' pass, where FSDP2 has gathered the head weight, and the
    result is differentiable: the gradient of each row flows into its prefixes' keys/values (the
    student's loss uses it so). Transformers drops the cache under gradient checkpointing, so the
    module must not checkpoint while gradients are recorded."""
    checkpointing = [m for m in module.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if checkpointing and torch.is_grad_enabled():
        raise ValueError(
            f"{type(module).__name__}: the shared-prefix forward needs the KV cache, which "
            "gradient checkpointing drops; turn one of them off"
        )
    # Without gradients there is nothing to replay, but transformers before 5.2x drops the cache of a
    # checkpointing module in training mode all the same (the trust-region teacher runs the student so):
    # checkpointing is switched off for this pass.
    for m in checkpointing:
        m.gradient_checkpointing = False
    try:
        return _shared_prefix_head(module, input_ids, attention_mask, position_ids, response_mask, fn, batch_plan)
    finally:
        for m in checkpointing:
            m.gradient_checkpointing = True


def _shared_prefix_head(module, input_ids, attention_mask, position_ids, response_mask, fn, batch_plan):
    device = input_ids.device
    resp = response_mask.shape[1]
    prompt_width = input_ids.shape[1] - resp
    batch_plan = batch_plan or plan(module, input_ids, attention_mask, response_mask)
    if batch_plan is None:
        return None
    tree, starts = batch_plan.tree, batch_plan.starts
    name, head = output_head(module)
    cache_arg = model_utils.cache_kwarg(module)
    stored: dict[int, tuple[_KV, int]] = {}  # node -> (its chunk's keys/values, its row there)

    def run(rows: list[int], first: list[int], ends: list[int], parents: list[int], fn, keep_cache: bool):
        """One forward: row ``rows[i]``'s columns ``first[i]:ends[i]``, right-padded, after ``parents[i]``'s
        cached keys/values."""
        cache, p_mask = _parent_cache(module, stored, parents, attention_mask.dtype)
        index = torch.tensor(rows, device=device)
        first_t = torch.tensor(first, device=device)
        lengths = torch.tensor(ends, device=device) - first_t
        ar = torch.arange(int(lengths.max()), device=device)
        cols = first_t.unsqueeze(1) + ar.unsqueeze(0)
        inside = ar.unsqueeze(0) < lengths.unsqueeze(1)
        ids, pos, mask = (_gather_rows(t[index], cols, inside) for t in (input_ids, position_ids, attention_mask))
        if p_mask is not None:
            mask = torch.cat([p_mask, mask], dim=1)
        setattr(module, name, _HeadCall(head, fn))
        out = module(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1 if keep_cache else 0,
            **{cache_arg: cache},
        )
        return out.logits, (_KV(cache, mask) if keep_cache else None)

    def run_packed(packs: list[list[int]], fn):
        """One forward whose row i runs the segments of the rows ``packs[i]`` one after another, after
        their common parent's cached keys/values, each segment seeing the parent and itself only."""
        cache, p_mask = _parent_cache(
            module, stored, [tree.row_parent[pack[0]] for pack in packs], attention_mask.dtype
        )
        width = max(sum(segment[r][1] - segment[r][0] for r in pack) for pack in packs)
        src_row = torch.zeros((len(packs), width), dtype=torch.long)
        src_col = torch.zeros_like(src_row)
        owner = torch.full_like(src_row, -1)  # which segment of the forward row a column holds; -1 padding
        for i, pack in enumerate(packs):
            at = 0
            for k, r in enumerate(pack):
                first, end = segment[r]
                src_row[i, at : at + end - first], src_col[i, at : at + end - first] = r, torch.arange(first, end)
                owner[i, at : at + end - first] = k
                at += end - first
        src_row, src_col, owner = src_row.to(device), src_col.to(device), owner.to(device)
        real = owner >= 0
        ids = input_ids[src_row, src_col].masked_fill(~real, 0)
        pos = position_ids[src_row, src_col].masked_fill(~real, 0)
        ar = torch.arange(width, device=device)
        allowed = (owner.unsqueeze(2) == owner.unsqueeze(1)) & (ar.view(1, -1, 1) >= ar.view(1, 1, -1))
        if p_mask is not None:
            allowed = torch.cat([p_mask.bool().unsqueeze(1).expand(-1, width, -1), allowed], dim=2)
        setattr(module, name, _HeadCall(head, fn))
        return module(
            input_ids=ids,
            attention_mask=_as_4d_mask(module, allowed.unsqueeze(1)),
            position_ids=pos,
            use_cache=True,
            logits_to_keep=0,
            **{cache_arg: cache},
        ).logits

    def anchor(hidden, weight):
        # A prefix scores nothing, but its forward's output joins the result as a zero: FSDP2 gathers a
        # layer's weights for backward when the gradient reaches that layer's output, and the rows reach
        # the last layer's only through its keys/values.
        return hidden[:, -1:, :1] * 0

    valid = response_mask.bool()
    counts = valid.sum(-1)
    # Where each scored position goes in the row-major ``[M, H]`` output.
    out_index = (counts.cumsum(0) - counts).unsqueeze(1) + valid.long().cumsum(1) - 1
    # Each row's columns in the rows' pass: its prompt tail, then its response up to its last scored token.
    segment = [
        (starts[r] + tree.prefix(tree.row_parent[r]), prompt_width + batch_plan.scored[r]) for r in range(len(starts))
    ]
    copies: dict[int, list[int]] = {}  # a row that runs -> the identical rows that take its hidden states
    for r, source in enumerate(batch_plan.same_as):
        if source != r:
            copies.setdefault(source, []).append(r)
    out, zero = None, 0
    try:
        for chunks in batch_plan.depths:
            for chunk in chunks:
                parents = [tree.parent[n] for n in chunk]
                rows = [tree.row[n] for n in chunk]
                nothing, kv = run(
                    rows,
                    [starts[r] + tree.prefix(p) for r, p in zip(rows, parents)],
                    [starts[r] + tree.length[n] for r, n in zip(rows, chunk)],
                    parents,
                    anchor,
                    True,
                )
                stored.update({n: (kv, i) for i, n in enumerate(chunk)})
                zero = zero + nothing.sum()
        packed = _takes_4d_masks(module)
        for chunk in batch_plan.row_chunks:
            packs = _sibling_packs(tree, chunk, segment, packed)
            rows, cols, where = _scored_positions(packs, segment, prompt_width, valid, out_index, copies)

            def scored(hidden, weight):  # fn at the chunk's scored positions
                return fn(hidden[rows, cols], weight, where)

            if all(len(pack) == 1 for pack in packs):
                singles = [pack[0] for pack in packs]
                values, _ = run(
                    singles,
                    [segment[r][0] for r in singles],
                    [segment[r][1] for r in singles],
                    [tree.row_parent[r] for r in singles],
                    scored,
                    False,
                )
            else:
                values = run_packed(packs, scored)
            if out is None:
                out = values.new_empty((int(counts.sum()), values.shape[-1]))
            out[where] = values
    finally:
        setattr(module, name, head)
    return out + zero if torch.is_grad_enabled() else out


def response_head(
    module,
    input_ids,
    attention_mask,
    position_ids,
    response_mask: torch.Tensor,
    fn,
    remove_padding: bool = False,
    share: bool = True,
    tokens_run: list[int] | None = None,
) -> torch.Tensor:
    """``forward.response_head``, through the shared-prefix forward when ``share`` and the plan says it
    pays (``fn(hidden, weight, where=None)``: ``where`` as for ``shared_prefix_head``). ``tokens_run``:
    appended the tokens the forward runs, padding excluded (what the model FLOPs of a step count)."""
    batch_plan = plan(module, input_ids, attention_mask, response_mask) if share else None
    if tokens_run is not None:
        tokens_run.append(prefix_plan.tokens_run(batch_plan, attention_mask))
    if batch_plan is not None:
        return shared_prefix_head(module, input_ids, attention_mask, position_ids, response_mask, fn, batch_plan)
    return forward.response_head(module, input_ids, attention_mask, position_ids, response_mask, fn, remove_padding)


def _gather_rows(tensor: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """``tensor[r, cols[r, j]]`` where ``valid``, ``fill`` elsewhere."""
    out = tensor.gather(1, cols.clamp(min=0, max=tensor.shape[1] - 1))
    return out.masked_fill(~valid, fill)


def _takes_4d_masks(module) -> bool:
    """sdpa and eager attention take a 4D mask as given; flash-attention (varlen) and flex do not."""
    return packed_attention.is_sdpa(module) or module.config._attn_implementation == "eager"


def _as_4d_mask(module, allowed: torch.Tensor) -> torch.Tensor:
    """``[B, 1, Q, K]`` allowed-to-attend as the attention takes it: sdpa a boolean mask, eager an additive one."""
    if packed_attention.is_sdpa(module):
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )


def _sibling_packs(tree: Tree, chunk: list[int], segment: list[tuple[int, int]], pack: bool) -> list[list[int]]:
    """The chunk's rows as forward rows. Rows under one parent whose segments together are at most a
    quarter of the parent's prefix share a forward row (``pack``: the attention takes 4D masks): the
    parent's keys/values are then copied once, not once per row, and the attention each segment spends
    on its siblings' columns (masked) stays small. Every other row runs alone."""
    if not pack:
        return [[r] for r in chunk]
    siblings: dict[int, list[int]] = {}
    for r in chunk:
        siblings.setdefault(tree.row_parent[r], []).append(r)
    packs: list[list[int]] = []
    for parent, rows in siblings.items():
        own = sum(segment[r][1] - segment[r][0] for r in rows)
        if parent >= 0 and len(rows) > 1 and 4 * own <= tree.length[parent]:
            packs.append(rows)
        else:
            packs.extend([r] for r in rows)
    return packs


def _scored_positions(
    packs: list[list[int]],
    segment: list[tuple[int, int]],
    prompt_width: int,
    valid: torch.Tensor,
    out_index: torch.Tensor,
    copies: dict[int, list[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(forward row, column, output index) of every scored response token of the packs' rows and of their
    ``copies`` (rows with the same inputs, each scored at its own positions there): token j of row r is scored at its segment's
    column (prompt tail - 1 + j), and goes to ``out_index[r, j]``."""
    order, forward_row, first_col = [], [], []
    for i, pack in enumerate(packs):
        at = 0
        for r in pack:
            first, end = segment[r]
            for row in [r, *copies.get(r, [])]:
                order.append(row)
                forward_row.append(i)
                first_col.append(at + (prompt_width - first) - 1)  # where the row's response token 0 is scored
            at += end - first
    device = valid.device
    order_t = torch.tensor(order, device=device)
    k, j = valid[order_t].nonzero(as_tuple=True)
    rows = torch.tensor(forward_row, device=device)[k]
    cols = torch.tensor(first_col, device=device)[k] + j
    return rows, cols, out_index[order_t[k], j]
