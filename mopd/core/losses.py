"""Losses: top-k distillation divergences, the self-distillation loss, PPO-clip (preference and SFT
losses: ``mopd.core.sequence_losses``).

All tensors are at response positions: ``[B, T]`` per token, ``[B, T, V]`` logits already divided by the
rollout temperature. The exact formulas are in ``docs/algorithm_core.md`` §4.

Memory. A naive implementation holds a float32 log-softmax over ``T x V`` for both models (5 GB at
4,096 tokens and Qwen's 151,936-token vocabulary) plus its autograd copies. Here the vocabulary-sized
work runs in chunks of positions inside a custom autograd function: each chunk is upcast, reduced to the
small ``[n, k+1]`` bucket distributions and differentiated locally, and its input gradient is written
into one preallocated buffer that backward only rescales. Peak extra memory is one gradient buffer in
the logits' dtype plus ``chunk x V`` float32 temporaries (``benchmarks/distill_loss_memory.py``).
"""

from __future__ import annotations

import math

import torch

from mopd.core.config import SelfDistillationConfig

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

# Bytes of float32 temporaries one chunk may hold per vocabulary-sized tensor.
_CHUNK_BYTES = 16 * 1024 * 1024  # below glibc's mmap threshold cap: chunks reuse heap pages
# The top-k log-mass is clamped below 0 so the tail bucket's log-probability stays finite.
_TAIL_LOG_MASS_CAP = -1e-7
# Log-probabilities of exactly-zero probabilities are floored here so 0 * log 0 terms give 0, not NaN.
_LOG_FLOOR = -1e30


def _auto_chunk(num_positions: int, vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
        return chunk_size
    return max(1, min(num_positions, _CHUNK_BYTES // (4 * max(vocab, 1))))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------
# Bucket distributions and divergences on small tensors
# ----------------------------------------------------------------------------------------------------
def _support_log_probs(
    student: torch.Tensor, teacher: torch.Tensor, topk: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Full-vocabulary log-probabilities of both sides on the student's top-k support ``[n, k]``.

    Returns (student log-probs, teacher log-probs, support index or None for the full vocabulary,
    the student's log-normaliser). Only ``[n, k]`` results are kept; the ``[n, V]`` work is transient.
    """
    student_lse = torch.logsumexp(student, dim=-1, keepdim=True)
    teacher_lse = torch.logsumexp(teacher, dim=-1, keepdim=True)
    if topk is None or topk >= student.shape[-1]:
        return student - student_lse, teacher - teacher_lse, None, student_lse
    index = student.topk(topk, dim=-1).indices
    return student.gather(-1, index) - student_lse, teacher.gather(-1, index) - teacher_lse, index, student_lse


def _buckets(s: torch.Tensor, t: torch.Tensor, full: bool, add_tail: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if full:
        return s, t
    if not add_tail:
        return torch.log_softmax(s, dim=-1), torch.log_softmax(t, dim=-1)
    return torch.cat([s, _tail_log_prob(s)], dim=-1), torch.cat([t, _tail_log_prob(t)], dim=-1)


def _tail_log_prob(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_probs))), computed stably; the mass outside the support."""
    log_mass = torch.logsumexp(log_probs, dim=-1, keepdim=True).clamp(max=_TAIL_LOG_MASS_CAP)
    return torch.log(-torch.expm1(log_mass))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p||q) over the last dim, with 0 * log 0 = 0."""
    log_p = log_p.clamp(min=_LOG_FLOOR)
    log_q = log_q.clamp(min=_LOG_FLOOR)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def bucket_divergence(s: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Generalized JSD between two log-distributions over the last dim (see module docs)."""
    s, t = s.clamp(min=_LOG_FLOOR), t.clamp(min=_LOG_FLOOR)
    if alpha == 0.0:
        return _kl(t, s)
    if alpha == 1.0:
        return _kl(s, t)
    mixture = torch.logsumexp(torch.stack([s + math.log(1.0 - alpha), t + math.log(alpha)]), dim=0)
    return alpha * _kl(t, mixture) + (1.0 - alpha) * _kl(s, mixture)


# ----------------------------------------------------------------------------------------------------
# Chunked, memory-bounded autograd function
# ----------------------------------------------------------------------------------------------------
def _scale_grad_buffer(ctx, grad_out: torch.Tensor) -> torch.Tensor | None:
    """Per-position gradient (formed in forward) times the incoming per-position gradient, in place.

    In place because a second logits-sized copy would double the peak memory; the price is that the
    graph can be differentiated once (as every training step does). Recompute the loss to go again.
    """
    if getattr(ctx, "consumed", False):
        raise RuntimeError(
            "mopd.core.losses: this loss reuses its gradient buffer in place, so its graph can be "
            "differentiated only once; recompute the loss to differentiate again"
        )
    ctx.consumed = True
    grad = ctx.grad_buffer
    if grad is None:
        return None
    ctx.grad_buffer = None  # freed with the returned gradient, not held by the graph
    grad = grad.view(ctx.out_shape)
    return grad.mul_(grad_out.unsqueeze(-1).to(grad.dtype))


def _chain_through_log_softmax(logits, lse, index, g_support, out) -> None:
    """Write d/dlogits into ``out`` given g = d/d(log-probs on the support).

    log p_j = z_j - logsumexp(z), so d/dz = scatter(g) - softmax(z) * sum(g). Done in place in the
    output slice: no autograd graph (and no temporaries) over the vocabulary.
    """
    buf = out if out.dtype == logits.dtype else torch.empty_like(logits)
    torch.sub(logits, lse, out=buf)
    buf.exp_().mul_(-g_support.sum(dim=-1, keepdim=True))
    if index is None:
        buf.add_(g_support)
    else:
        buf.scatter_add_(-1, index, g_support)
    if buf is not out:
        out.copy_(buf)


def _run_chunks(ctx, logits: torch.Tensor, chunk_size: int | None, compute) -> torch.Tensor:
    """Drive ``compute(rows, z, grad_out)`` over chunks of positions of ``logits`` ``[..., V]``.

    ``z`` is the chunk upcast for computing; ``grad_out`` is the chunk's slice of one logits-sized
    gradient buffer (None when no gradient is needed) that ``compute`` fills with d(value)/d(z).
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    n = flat.shape[0]
    dtype = _compute_dtype(logits.dtype)
    out = torch.empty(n, dtype=dtype, device=logits.device)
    grad = torch.empty_like(flat) if ctx.needs_input_grad[0] else None
    chunk = _auto_chunk(n, vocab, chunk_size)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        out[rows] = compute(rows, flat[rows].detach().to(dtype), None if grad is None else grad[rows])
    ctx.grad_buffer = grad
    ctx.out_shape = logits.shape
    return out.reshape(logits.shape[:-1])


class _ChunkedDivergence(torch.autograd.Function):
    """Per-position divergence; the student's gradient is formed chunk by chunk in forward.

    Each position's divergence depends only on that position's logits, so d(loss)/d(logits) is the
    per-position gradient (computed here) times the incoming per-position gradient (applied in backward).
    """

    @staticmethod
    def forward(ctx, student, teacher, alpha, topk, add_tail, chunk_size):
        flat_t = teacher.reshape(-1, teacher.shape[-1])

        def compute(rows, z_s, grad_out):
            z_t = flat_t[rows].detach().to(z_s.dtype)
            s, t, index, lse = _support_log_probs(z_s, z_t, topk)
            with torch.enable_grad():
                s = s.requires_grad_(grad_out is not None)
                value = bucket_divergence(*_buckets(s, t, index is None, add_tail), alpha)
                if grad_out is not None:
                    (g_support,) = torch.autograd.grad(value.sum(), s)
                    _chain_through_log_softmax(z_s, lse, index, g_support, grad_out)
            return value.detach()

        return _run_chunks(ctx, student, chunk_size, compute)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return (_scale_grad_buffer(ctx, grad_out),) + (None,) * 5


def topk_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    alpha: float,
    topk: int | None,
    add_tail: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-position divergence ``[B, T]`` on the student's top-k support (``topk=None``: full vocabulary).

    alpha 0 = KL(teacher||student), 1 = KL(student||teacher), between = generalized JSD with
    M = (1-alpha) S + alpha T. With ``add_tail`` a (k+1)-th bucket holds each side's remaining mass,
    otherwise both sides renormalise over the k. Gradient flows to the student only.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)} (a teacher with a different vocabulary cannot be distilled)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be positive or None, got {topk}")
    return _ChunkedDivergence.apply(student_logits, teacher_logits.detach(), float(alpha), topk, add_tail, chunk_size)


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[label] in chunks, gradient (onehot - softmax) formed in forward."""

    @staticmethod
    def forward(ctx, logits, labels, chunk_size):
        flat_labels = labels.reshape(-1, 1)

        def compute(rows, z, grad_out):
            label = flat_labels[rows]
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            if grad_out is not None:
                _chain_through_log_softmax(
                    z, lse, label, torch.ones(label.shape, dtype=z.dtype, device=z.device), grad_out
                )
            return (z.gather(-1, label) - lse).squeeze(-1)

        return _run_chunks(ctx, logits, chunk_size, compute)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return _scale_grad_buffer(ctx, grad_out), None, None


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """``log_softmax(logits)[labels]`` per position, ``[B, T]``, differentiable, chunked over positions."""
    return _ChunkedTokenLogProbs.apply(logits, labels.long(), chunk_size)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) per position, ``[B, T]`` (for logging; no gradient)."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    dtype = _compute_dtype(logits.dtype)
    out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)
    chunk = _auto_chunk(flat.shape[0], vocab, chunk_size)
    for start in range(0, flat.shape[0], chunk):
        log_probs = torch.log_softmax(flat[start : start + chunk].to(dtype), dim=-1)
        out[start : start + chunk] = -(log_probs.exp() * log_probs.clamp(min=_LOG_FLOOR)).sum(-1)
    return out.reshape(logits.shape[:-1])


# ----------------------------------------------------------------------------------------------------
# Aggregation and weights
# ----------------------------------------------------------------------------------------------------
def agg_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    normalizer: float | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` loss matrix to a scalar (formulas in ``docs/algorithm_core.md`` §4).

    ``normalizer`` replaces the local token / sequence / row count so that a mini-batch split across
    micro-batches and ranks is normalised by its global count. An all-masked input gives exactly 0.
    """
    mask = mask.to(values.dtype)
    # where(), not multiplication, so that inf/NaN at masked positions cannot leak into the sum.
    masked = torch.where(mask > 0, values * mask, torch.zeros_like(values))
    if mode == "token-mean":
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1.0)
        return masked.sum() / denom
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        seq = masked.sum(-1)
        if mode == "seq-mean-token-mean":
            seq = seq / mask.sum(-1).clamp(min=1.0)
        denom = normalizer if normalizer is not None else (mask.sum(-1) > 0).sum().clamp(min=1).to(values.dtype)
        return seq.sum() / denom
    if mode == "seq-mean-token-sum-norm":
        rows = normalizer if normalizer is not None else max(values.shape[0], 1)
        return masked.sum() / (rows * (horizon if horizon is not None else values.shape[-1]))
    raise ValueError(f"loss_agg_mode must be one of {list(LOSS_AGG_MODES)}, got {mode!r}")


def importance_weights(log_probs: torch.Tensor, old_log_probs: torch.Tensor, clip: float) -> torch.Tensor:
    """Detached ``min(pi_theta / pi_old, clip)`` per token."""
    ratio = torch.exp((log_probs.detach() - old_log_probs.detach()).clamp(-20.0, 20.0))
    return ratio.clamp(max=clip)


def rollout_is_weights(
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    level: str = "token",
    threshold: float = 2.0,
) -> torch.Tensor:
    """Truncated importance weights correcting for the rollout engine's numerics (``rollout_is``).

    ``token``: w_t = min(pi_old / pi_rollout, threshold) per token; ``sequence``: one weight per
    sequence from the summed log-ratio over its valid tokens. Detached, zero at padding.
    """
    mask = response_mask.to(old_log_probs.dtype)
    log_ratio = (old_log_probs.detach() - rollout_log_probs.detach()) * mask
    if level == "token":
        weights = torch.exp(log_ratio.clamp(-20.0, 20.0))
    elif level == "sequence":
        weights = torch.exp(log_ratio.sum(-1, keepdim=True).clamp(-20.0, 20.0)).expand_as(log_ratio)
    else:
        raise ValueError(f"algorithm.rollout_correction.rollout_is must be 'token' or 'sequence', got {level!r}")
    return weights.clamp(max=threshold) * mask


def step_level_values(values: torch.Tensor, mask: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """Re-weight token values so that every reasoning step counts equally within its row.

    A valid token (mask > 0, step id >= 0) of a step with n_s tokens, in a row with T valid tokens and S
    steps, gets ``mean_s * T / (S * n_s)``: the row still sums to T times a mean, but that mean is now the
    mean over steps of the step means. (The release replaced each token by its step mean, which leaves
    every row sum, hence the loss and its gradient, unchanged: ``step_level_kl`` had no effect.)
    """
    rows, width = values.shape
    valid = (mask > 0) & (step_ids >= 0)
    # One bucket per (row, step); step ids are < width. Invalid tokens go to a scratch bucket.
    offsets = torch.arange(rows, device=values.device).unsqueeze(1) * width
    bucket = torch.where(valid, step_ids + offsets, torch.full_like(step_ids, rows * width)).reshape(-1)
    zeros = torch.zeros(rows * width + 1, dtype=values.dtype, device=values.device)
    sums = zeros.index_add(0, bucket, torch.where(valid, values, torch.zeros_like(values)).reshape(-1))
    counts = zeros.index_add(0, bucket, valid.to(values.dtype).reshape(-1))
    step_size = counts.gather(0, bucket).reshape(rows, width).clamp(min=1.0)
    step_avg = (sums / counts.clamp(min=1.0)).gather(0, bucket).reshape(rows, width)
    row_tokens = valid.sum(-1, keepdim=True).to(values.dtype)
    row_steps = (counts[:-1].reshape(rows, width) > 0).sum(-1, keepdim=True).to(values.dtype).clamp(min=1.0)
    return torch.where(valid, step_avg * row_tokens / (row_steps * step_size), values)


# ----------------------------------------------------------------------------------------------------
# The self-distillation loss
# ----------------------------------------------------------------------------------------------------
def self_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    distillation_mask: torch.Tensor,
    config: SelfDistillationConfig,
    *,
    old_log_probs: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
    loss_agg_mode: str = "token-mean",
    normalizer: float | None = None,
    horizon: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MOPD/SDPO loss: teacher-to-student divergence on the student's own tokens (docs §4)."""
    student_logp = divergence = teacher_logp = None
    if (not config.full_logit_distillation) or (old_log_probs is not None and config.is_clip is not None):
        student_logp = token_log_probs(
            student_logits if not config.full_logit_distillation else student_logits.detach(),
            responses,
            chunk_size=chunk_size,
        )
    if config.full_logit_distillation:
        divergence = topk_divergence(
            student_logits,
            teacher_logits,
            alpha=config.alpha,
            topk=config.distillation_topk,
            add_tail=config.distillation_add_tail,
            chunk_size=chunk_size,
        )
    else:
        with torch.no_grad():
            teacher_logp = token_log_probs(teacher_logits.detach(), responses, chunk_size=chunk_size)
    return self_distillation_loss_from_tokens(
        student_logp,
        divergence,
        teacher_logp,
        response_mask,
        distillation_mask,
        config,
        old_log_probs=old_log_probs,
        rollout_is_weights=rollout_is_weights,
        step_ids=step_ids,
        loss_agg_mode=loss_agg_mode,
        normalizer=normalizer,
        horizon=horizon,
    )


def self_distillation_loss_from_tokens(
    student_logp: torch.Tensor | None,
    divergence: torch.Tensor | None,
    teacher_logp: torch.Tensor | None,
    response_mask: torch.Tensor,
    distillation_mask: torch.Tensor,
    config: SelfDistillationConfig,
    *,
    old_log_probs: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    step_ids: torch.Tensor | None = None,
    loss_agg_mode: str = "token-mean",
    normalizer: float | None = None,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``self_distillation_loss`` from per-token inputs ``[B, T]`` (what ``mopd.core.fused_head`` computes
    without logits): the divergence (full-logit mode) or the teacher's token log-probs (estimator mode),
    and the student's token log-probs (differentiable in estimator mode; for IS weights otherwise)."""
    mask = response_mask.to(torch.float32) * distillation_mask.to(torch.float32).reshape(-1, 1)
    metrics: dict[str, float] = {}
    if config.full_logit_distillation:
        per_token = divergence
    else:
        # REINFORCE-style reverse-KL estimator: value (s - t) * s, gradient (s - t) * ds.
        per_token = (student_logp - teacher_logp).detach() * student_logp
        metrics["self_distillation/teacher_minus_student_logp"] = _masked_mean_float(
            teacher_logp - student_logp.detach(), mask
        )
    metrics["self_distillation/divergence_mean"] = _masked_mean_float(per_token.detach(), mask)

    weighted = per_token
    if old_log_probs is not None and config.is_clip is not None:
        weights = importance_weights(student_logp, old_log_probs, config.is_clip)
        weighted = weighted * weights.to(weighted.dtype)
        metrics["self_distillation/is_weight_mean"] = _masked_mean_float(weights, mask)
        metrics["self_distillation/is_clip_fraction"] = _masked_mean_float(
            (weights >= config.is_clip).to(torch.float32), mask
        )
    if rollout_is_weights is not None:
        weighted = weighted * rollout_is_weights.detach().to(weighted.dtype)
    if config.step_level_kl:
        if step_ids is None:
            raise ValueError("step_level_kl=true needs step_ids (mopd.core.reprompt.compute_step_ids)")
        weighted = step_level_values(weighted, mask, step_ids)
        rows = mask.sum(-1) > 0
        steps_per_row = [
            int(torch.unique(step_ids[i][(mask[i] > 0) & (step_ids[i] >= 0)]).numel())
            for i in range(mask.shape[0])
            if rows[i]
        ]
        metrics["self_distillation/avg_steps_per_sample"] = (
            sum(steps_per_row) / len(steps_per_row) if steps_per_row else 0.0
        )
    loss = agg_loss(weighted, mask, loss_agg_mode, normalizer=normalizer, horizon=horizon)
    metrics["self_distillation/empty_target_batch"] = float(mask.sum().item() == 0)
    return loss, metrics


def _masked_mean_float(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(values.dtype)
    total = mask.sum()
    if total.item() == 0:
        return 0.0
    return float((torch.where(mask > 0, values, torch.zeros_like(values)).sum() / total).item())


# ----------------------------------------------------------------------------------------------------
# PPO clipped policy loss
# ----------------------------------------------------------------------------------------------------
def ppo_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float | None = 3.0,
    loss_agg_mode: str = "token-mean",
    rollout_is_weights: torch.Tensor | None = None,
    normalizer: float | None = None,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip with asymmetric ratio bounds and dual clip for negative advantages."""
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    mask = response_mask.to(log_probs.dtype)
    log_ratio = (log_probs - old_log_probs.detach()).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss = torch.maximum(unclipped, clipped)
    metrics = {
        "actor/pg_clipfrac": _masked_mean_float((clipped > unclipped).to(mask.dtype), mask),
        "actor/ppo_kl": _masked_mean_float(-log_ratio.detach(), mask),
        "actor/pg_clipfrac_lower": 0.0,
    }
    if clip_ratio_c is not None:
        lower_bound = -advantages * clip_ratio_c
        dual = torch.minimum(loss, lower_bound)
        metrics["actor/pg_clipfrac_lower"] = _masked_mean_float(
            ((loss > lower_bound) & (advantages < 0)).to(mask.dtype), mask
        )
        loss = torch.where(advantages < 0, dual, loss)
    if rollout_is_weights is not None:
        loss = loss * rollout_is_weights.detach()
    return agg_loss(loss, mask, loss_agg_mode, normalizer=normalizer, horizon=horizon), metrics
