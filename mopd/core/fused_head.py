"""The LM head fused with the per-token quantities the losses need, chunk by chunk over positions.

``fused_head(hidden, weight, labels, ...)`` returns, for every position, the label's log-probability,
the entropy and (with a teacher) the top-k divergence of ``mopd.core.losses.topk_divergence`` — the same
formulas, the same tail bucket, every ``alpha`` — computed from the final hidden states ``[N, H]`` and
the LM-head weight ``[V, H]`` without ever holding ``[N, V]`` logits. Forward runs the head on a chunk of
positions, reduces it to the per-position values and drops it; backward recomputes each chunk's logits,
forms d(values)/d(logits) for that chunk only and turns it into the hidden-state and weight gradients
(two matmuls). Peak extra memory: a few ``chunk x V`` float32 temporaries plus the weight gradient,
which every method must return. The teacher's small top-k support ``[N, k]`` is kept from forward, so
its head is not recomputed in backward (except for a full-vocabulary divergence, ``topk=None``).

Logits are ``hidden @ weight.T / temperature`` in float32 (float64 for float64 inputs): the rule
``mopd.core.losses`` applies to logits handed to it. Positions are the rows of ``hidden``: callers pass only
the valid (unmasked) response positions.
"""

from __future__ import annotations

import torch

from mopd.core.losses import _buckets, bucket_divergence  # one home for the divergence maths

# Bytes of one chunk x V float32 temporary: small on CPU (caches), larger on GPU (matmul efficiency).
# Larger chunks reuse each read of the [V, H] weight over more positions (the matmuls are memory-bound
# at a few dozen rows); two such temporaries are alive at a time.
_CHUNK_BYTES = {"cpu": 64 * 1024 * 1024, "cuda": 256 * 1024 * 1024}


def _chunk_rows(rows: int, vocab: int, device: torch.device, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
        return chunk_size
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES["cuda"])
    return max(1, min(rows, budget // (4 * max(vocab, 1))))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    z = (hidden @ weight.t()).to(dtype)
    return z.div_(temperature) if temperature != 1.0 else z


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, labels, teacher_hidden, teacher_weight, temperature, alpha, topk, add_tail, chunk_size
    ):
        ctx.set_materialize_grads(False)
        rows, vocab = hidden.shape[0], weight.shape[0]
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        with_teacher = teacher_hidden is not None
        log_probs = torch.empty(rows, dtype=dtype, device=hidden.device)
        entropy = torch.empty_like(log_probs)
        divergence = torch.empty(rows if with_teacher else 0, dtype=dtype, device=hidden.device)
        keep_support = with_teacher and topk is not None and topk < vocab
        index = torch.empty(rows, topk if keep_support else 0, dtype=torch.long, device=hidden.device)
        teacher_support = torch.empty(index.shape, dtype=dtype, device=hidden.device)
        chunk = _chunk_rows(rows, vocab, hidden.device, chunk_size)
        for start in range(0, rows, chunk):
            r = slice(start, min(start + chunk, rows))
            log_p = _log_softmax_(_logits(hidden[r], weight, temperature, dtype))
            log_probs[r] = log_p.gather(-1, labels[r].unsqueeze(-1)).squeeze(-1)
            entropy[r] = _entropy(log_p, log_p.exp())
            if with_teacher:
                t_log_p = _log_softmax_(_logits(teacher_hidden[r], teacher_weight, temperature, dtype))
                if keep_support:
                    idx = log_p.topk(topk, dim=-1).indices
                    s, t = log_p.gather(-1, idx), t_log_p.gather(-1, idx)
                    index[r], teacher_support[r] = idx, t
                else:
                    s, t = log_p, t_log_p
                divergence[r] = bucket_divergence(*_buckets(s, t, not keep_support, add_tail), alpha)
                del t_log_p, s, t
            del log_p
        ctx.save_for_backward(hidden, weight, labels, teacher_hidden, teacher_weight, index, teacher_support)
        ctx.settings = (temperature, alpha, topk, add_tail, chunk, dtype, keep_support)
        return log_probs, entropy, divergence

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_log_probs, g_entropy, g_divergence):
        hidden, weight, labels, teacher_hidden, teacher_weight, index, teacher_support = ctx.saved_tensors
        temperature, alpha, topk, add_tail, chunk, dtype, keep_support = ctx.settings
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if teacher_hidden is None:
            g_divergence = None
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        # The weight gradient accumulates in the compute dtype (float32 for bf16 weights).
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
        rows = hidden.shape[0]
        for start in range(0, rows, chunk):
            r = slice(start, min(start + chunk, rows))
            log_p = _log_softmax_(_logits(hidden[r], weight, temperature, dtype))
            p = log_p.exp()
            # d/dz of sum_i g_i * value_i = -p * coef + (entropy term) + (sparse terms).
            coef = torch.zeros(p.shape[0], 1, dtype=dtype, device=p.device)
            sparse = []
            if g_log_probs is not None:  # d log p_y / dz = onehot(y) - p
                g = g_log_probs[r].to(dtype).unsqueeze(-1)
                coef += g
                sparse.append((labels[r].unsqueeze(-1), g))
            g_support = idx = None
            if g_divergence is not None:
                g_support, idx = _divergence_support_grad(
                    log_p,
                    r,
                    teacher_hidden,
                    teacher_weight,
                    index,
                    teacher_support,
                    keep_support,
                    temperature,
                    alpha,
                    add_tail,
                    dtype,
                )
                g_support = g_support * g_divergence[r].to(dtype).unsqueeze(-1)
                coef += g_support.sum(-1, keepdim=True)
            if g_entropy is not None:  # dH/dz = -p (log p + H), in log_p's memory
                entropy = _entropy(log_p, p).unsqueeze(-1)
                grad = log_p.add_(entropy).mul_(p).mul_(-g_entropy[r].to(dtype).unsqueeze(-1))
                grad.sub_(p.mul_(coef))
            else:
                del log_p
                grad = p.mul_(-coef)
            if g_support is not None:
                if idx is None:
                    grad.add_(g_support)
                else:
                    sparse.append((idx, g_support))
            for sparse_idx, values in sparse:
                grad.scatter_add_(-1, sparse_idx, values.expand(sparse_idx.shape))
            if temperature != 1.0:
                grad.div_(temperature)
            if need_hidden:
                grad_hidden[r] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                h = hidden[r]
                if h.dtype == dtype:
                    grad_weight.addmm_(grad.t(), h)
                else:  # low-precision matmul (as a bf16 head's backward would), float32 accumulation
                    grad_weight.add_(grad.to(h.dtype).t() @ h)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


def _log_softmax_(z: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last dim; ``z`` is consumed (one fused kernel: logsumexp is several passes)."""
    return torch.log_softmax(z, dim=-1)


def _entropy(log_p: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """-sum(p log p) per row, as a row-wise dot product (no further vocabulary-sized temporary)."""
    return -torch.bmm(p.unsqueeze(1), log_p.unsqueeze(2)).reshape(-1)


def _divergence_support_grad(
    log_p, r, teacher_hidden, teacher_weight, index, teacher_support, keep_support, temperature, alpha, add_tail, dtype
):
    """d(divergence)/d(student log-probs on the support) for one chunk: ``[n, k]`` (or ``[n, V]`` and
    index None for the full vocabulary, whose teacher chunk is recomputed)."""
    if keep_support:
        idx = index[r]
        s, t = log_p.gather(-1, idx), teacher_support[r]
    else:
        idx, s, t = None, log_p, _log_softmax_(_logits(teacher_hidden[r], teacher_weight, temperature, dtype))
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        value = bucket_divergence(*_buckets(s, t, idx is None, add_tail), alpha)
        (g_support,) = torch.autograd.grad(value.sum(), s)
    return g_support, idx


def fused_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    alpha: float = 0.5,
    topk: int | None = 100,
    add_tail: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(label log-probs, entropies, divergences or None) per row of ``hidden`` ``[N, H]``.

    ``weight`` ``[V, H]`` is the LM head (the embedding when tied); gradients flow to ``hidden`` and
    ``weight`` from all three outputs. The teacher's ``teacher_hidden`` ``[N, H_t]`` and
    ``teacher_weight`` ``[V, H_t]`` (no gradient) score the same labels; the divergence is
    ``mopd.core.losses.topk_divergence`` of the two heads' logits (alpha 0 = KL(teacher||student),
    1 = KL(student||teacher), between: generalized JSD; ``topk=None``: the full vocabulary).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_head needs hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if (teacher_hidden is None) != (teacher_weight is None):
        raise ValueError("fused_head: give both teacher_hidden and teacher_weight, or neither")
    if teacher_weight is not None and teacher_weight.shape[0] != weight.shape[0]:
        raise ValueError(
            f"the teacher's head has {teacher_weight.shape[0]} rows but the student's {weight.shape[0]}: "
            "distillation needs the same vocabulary"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be positive or None, got {topk}")
    if teacher_hidden is not None:
        teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
    log_probs, entropy, divergence = _FusedHead.apply(
        hidden,
        weight,
        labels.long(),
        teacher_hidden,
        teacher_weight,
        float(temperature),
        float(alpha),
        topk,
        add_tail,
        chunk_size,
    )
    return log_probs, entropy, divergence if teacher_hidden is not None else None
