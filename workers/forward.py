"""Running a causal LM on a micro-batch for training: the LM head fused with the loss quantities.

``response_head(module, ..., fn)`` runs the model's own forward (so FSDP2's root hooks gather the
embedding / LM-head weight and the gradient flows back through them as usual) with its output head
temporarily replaced by ``fn(hidden, weight)``: ``hidden`` are the final hidden states at the valid
response positions ``[M, H]``, ``weight`` the (unsharded) head weight ``[V, H]``, and ``fn`` returns
``[M, K]`` per-position values (``mopd.core.fused_head``), never ``[B, T, V]`` logits.
"""

from __future__ import annotations

import contextlib

import torch

from mopd.core.fused_head import fused_head
from workers import packed_attention


class _HeadCall(torch.nn.Module):
    """Stands in for the LM head during one forward; reads the real head's weight at call time, when
    FSDP2 has unsharded it."""

    def __init__(self, head: torch.nn.Module, fn):
        super().__init__()
        object.__setattr__(self, "_head", head)  # not registered: the module tree is unchanged
        self._fn = fn

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._fn(hidden, self._head.weight)


def output_head(module) -> tuple[str, torch.nn.Module]:
    """(attribute name, module) of the model's LM head; refuses heads the fused loss cannot express."""
    head = module.get_output_embeddings()
    name = next((n for n, child in module.named_children() if child is head), None)
    if name is None or not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{type(module).__name__}: the LM head is not a direct Linear child of the model; the fused "
            "loss needs `model.<head>(hidden_states)` as in transformers' *ForCausalLM classes"
        )
    if head.bias is not None or getattr(module.config, "final_logit_softcapping", None):
        raise ValueError(
            f"{type(module).__name__}: an LM head with a bias or a logit soft-cap is not supported by "
            "the fused loss (mopd.core.fused_head computes hidden @ weight.T)"
        )
    return name, head


def response_head(
    module, input_ids, attention_mask, position_ids, response_mask: torch.Tensor, fn, remove_padding: bool = False
) -> torch.Tensor:
    """``fn(hidden [M, H], weight [V, H]) -> [M, K]`` on the valid positions of the last R tokens'
    predecessors (position t-1 scores response token t); rows in row-major order of ``response_mask``.

    ``remove_padding``: the micro-batch's valid tokens are packed into one row, each sequence keeping its
    own position ids (0, 1, ...), with ``attention_mask=None`` and ``use_cache=False``: transformers then
    masks attention block-diagonally (``masking_utils.find_packed_sequence_indices`` for sdpa/eager/flex;
    varlen kernels from the position ids for flash_attention_2); a model loaded for packing with sdpa
    (``packed_attention.PACKED_SDPA``) gets the boundaries and needs no mask. An all-ones mask, or a cache, would
    instead let the packed sequences see each other (tests/workers/test_remove_padding.py). Sequences
    are ``[left-padded prompt | right-padded response]`` rows.
    """
    name, head = output_head(module)
    valid = response_mask.bool()
    width = response_mask.shape[1]
    if remove_padding:
        keep = attention_mask.bool()
        # Packed position of every kept token; the predecessors of the response tokens are kept tokens.
        packed_at = (keep.reshape(-1).cumsum(0) - 1).reshape(keep.shape)
        rows = packed_at[:, -width - 1 : -1][valid]
        inputs = dict(
            input_ids=input_ids[keep].unsqueeze(0),
            attention_mask=None,
            position_ids=position_ids[keep].unsqueeze(0),
            logits_to_keep=0,
            **packed_attention.boundary_kwargs(module, keep.sum(1)),
        )

        def call(hidden, weight):  # hidden: [1, tokens, H]
            return fn(hidden[0, rows], weight)
    else:
        # Columns that are padding in every row (left of the longest prompt, right of the longest
        # response) change nothing but cost compute: drop them. Micro-batches are cut from a batch
        # padded to its longest sequence, so this is often most of the teacher's prompt width.
        used = attention_mask.bool().any(0).nonzero()
        first, last = int(used[0]), int(used[-1])
        width -= attention_mask.shape[1] - 1 - last
        valid = valid[:, :width]
        cols = slice(first, last + 1)
        inputs = dict(
            input_ids=input_ids[:, cols],
            attention_mask=attention_mask[:, cols],
            position_ids=position_ids[:, cols],
            logits_to_keep=width + 1,
        )

        def call(hidden, weight):  # hidden: [B, R + 1, H]
            return fn(hidden[:, :-1][valid], weight)

    setattr(module, name, _HeadCall(head, call))
    try:
        with packed_attention.packed() if remove_padding else contextlib.nullcontext():
            out = module(**inputs, use_cache=False)
    finally:
        setattr(module, name, head)
    return out.logits


def full_head_weight(module) -> torch.Tensor:
    """The module's LM-head weight, unsharded and detached (for a frozen teacher / no-grad use).

    With FSDP2 it stays unsharded until ``model_utils.reshard(module)``: call that once its last use
    (including a backward that reads it) is over.
    """
    if hasattr(module, "unshard"):
        module.unshard()
    return output_head(module)[1].weight.detach()


def scatter_tokens(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-valid-position values ``[M]`` back to ``[B, R]`` (zeros at padding), differentiably."""
    out = torch.zeros(response_mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(response_mask.bool(), values)


@torch.no_grad()
def response_log_probs(
    module,
    input_ids,
    attention_mask,
    position_ids,
    responses,
    response_mask,
    temperature: float,
    remove_padding: bool = False,
    head=None,
) -> torch.Tensor:
    """log pi(response token) ``[B, R]`` (zeros at padding), without gradient. ``head``: the forward to
    run, with ``response_head``'s arguments (default: it; ``shared_prefix.response_head`` shares prompts)."""
    labels = responses[response_mask.bool()]

    def fn(hidden, weight, where=None):  # ``where``: which of the positions ``hidden`` holds (default all)
        return fused_head(hidden, weight, labels if where is None else labels[where], temperature=temperature)[
            0
        ].unsqueeze(-1)

    values = (head or response_head)(module, input_ids, attention_mask, position_ids, response_mask, fn, remove_padding)
    return scatter_tokens(values[:, 0], response_mask)


@torch.no_grad()
def response_hidden(
    module, input_ids, attention_mask, position_ids, response_mask, remove_padding: bool = False
) -> torch.Tensor:
    """Final hidden states at the valid response positions ``[M, H]`` (what the head would read)."""
    return response_head(module, input_ids, attention_mask, position_ids, response_mask, lambda h, w: h, remove_padding)
