"""KL to the reference policy: per-token estimators, the loss term, and the in-reward penalty's controllers.

Names as in verl (``actor.kl_loss_type``, ``algorithm.kl_penalty``), for log-probs ``logp`` (the policy)
and ``ref`` (the frozen initial model), d = logp - ref:

| type | per-token value | estimates |
|---|---|---|
| ``kl`` / ``k1`` | d | KL(pi || ref), unbiased, high variance, can be negative |
| ``abs`` | abs(d) | |
| ``mse`` / ``k2`` | d^2 / 2 | low bias for small d |
| ``low_var_kl`` / ``k3`` | exp(-d) - (-d) - 1, clamped to [-10, 10] | KL(pi || ref), unbiased, >= 0 (Schulman's k3) |

Only with the RL losses (``grpo``, ``vanilla``): in MOPD/SDPO the reference model *is* the teacher.
"""

from __future__ import annotations

import math

import torch

KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
KL_CONTROLLERS = ("fixed", "adaptive")


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str) -> torch.Tensor:
    """The per-token KL estimate of ``kind`` (gradients flow through ``log_probs``)."""
    diff = log_probs - ref_log_probs
    if kind in ("kl", "k1"):
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("mse", "k2"):
        return 0.5 * diff.square()
    if kind in ("low_var_kl", "k3"):
        # exp(ref - logp) - (ref - logp) - 1; clamped as verl does (a rare huge ratio must not dominate)
        neg = (-diff).clamp(min=-20.0, max=20.0)
        return (neg.exp() - neg - 1.0).clamp(min=-10.0, max=10.0)
    raise ValueError(f"a KL type must be one of {list(KL_TYPES)}, got {kind!r}")


class FixedKLController:
    """beta stays at ``kl_coef``."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s proportional controller: beta grows when the KL is above ``target_kl``, shrinks
    below it, by at most 20% of the error per ``horizon`` samples."""

    def __init__(self, kl_coef: float, target_kl: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = float(target_kl), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def uses_reference_kl(config: dict) -> bool:
    """Whether a trainer config asks for a KL penalty to the frozen reference (as a loss or in the reward): the
    one rule for loading the reference, computing its log-probs and planning its memory."""
    return bool(config["actor_rollout_ref"]["actor"]["use_kl_loss"] or config["algorithm"]["use_kl_in_reward"])


def make_kl_controller(cfg: dict) -> FixedKLController:
    """From ``algorithm.kl_ctrl`` ({type, kl_coef, target_kl, horizon})."""
    if cfg["type"] == "fixed":
        return FixedKLController(cfg["kl_coef"])
    if cfg["type"] == "adaptive":
        return AdaptiveKLController(cfg["kl_coef"], cfg["target_kl"], cfg["horizon"])
    raise ValueError(f"algorithm.kl_ctrl.type must be one of {list(KL_CONTROLLERS)}, got {cfg['type']!r}")


def apply_kl_in_reward(
    token_scores: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    controller: FixedKLController,
    kind: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token rewards = scores - beta * KL(pi_old || ref) per token; then the controller sees the batch's KL
    (the mean over sequences of each sequence's token-mean KL)."""
    mask = response_mask.to(torch.float32)
    kld = kl_penalty(old_log_probs.float(), ref_log_probs.float(), kind) * mask
    beta = controller.value
    rewards = token_scores.float() - beta * kld
    per_seq = kld.sum(-1) / mask.sum(-1).clamp(min=1.0)
    current = float(per_seq.mean().item()) if per_seq.numel() else 0.0
    if not math.isfinite(current):
        raise FloatingPointError("the KL of the policy to the reference is not finite (algorithm.use_kl_in_reward)")
    controller.update(current, n_steps=int(mask.shape[0]))
    return rewards, {"critic/kl": current, "critic/kl_coef": beta}
