"""The actor's optimizer and learning-rate schedule (``actor_rollout_ref.actor.optim``)."""

from __future__ import annotations

import math

import torch

from workers.config import OptimConfig


def build_optimizer(model, optim_cfg: OptimConfig, total_optimizer_steps: int):
    """AdamW over the trainable parameters and its schedule: linear warm-up, then constant or cosine down to
    ``min_lr_ratio`` at ``total_optimizer_steps`` (the driver's count of updates)."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    total = max(1, int(total_optimizer_steps))
    warmup = optim_cfg.lr_warmup_steps
    if warmup is None or warmup < 0:
        warmup = int(optim_cfg.lr_warmup_steps_ratio * total)
    style, floor = optim_cfg.warmup_style, optim_cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if style == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
