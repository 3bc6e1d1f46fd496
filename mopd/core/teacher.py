"""Teacher regularisation: the EMA update and the trust-region logit mix (``teacher_regularization``).

- ``ema``: the teacher is a separate copy, updated once per training step
  θ_T ← (1 − r)·θ_T + r·θ_S (r = ``teacher_update_rate``; r = 0 keeps the initial model frozen).
- ``trust-region``: the teacher's logits are (1 − r)·z_ref + r·z_student, with the reference frozen at
  the initial weights and the student's logits taken without gradient. Mixing logits (not
  probabilities) gives a normalised geometric mixture of the two distributions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def ema_update_(teacher_params: Iterable[torch.Tensor], student_params: Iterable[torch.Tensor], rate: float) -> None:
    """In place: every teacher tensor moves a fraction ``rate`` of the way to the student's.

    Works on plain tensors and on FSDP2 shards alike (each rank updates its local shard); the two
    iterables must list matching tensors in the same order.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"teacher_update_rate must be in [0, 1], got {rate}")
    teacher, student = list(teacher_params), list(student_params)
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} parameters but the student has {len(student)}")
    for t, s in zip(teacher, student):
        if t.shape != s.shape:
            raise ValueError(f"teacher/student parameter shapes differ: {tuple(t.shape)} vs {tuple(s.shape)}")
    if rate == 0.0 or not teacher:
        return
    # lerp in the teacher's dtype: t + rate * (s - t)
    torch._foreach_lerp_(teacher, [s.to(t.dtype) for t, s in zip(teacher, student)], rate)


def trust_region_logits(reference_logits: torch.Tensor, student_logits: torch.Tensor, rate: float) -> torch.Tensor:
    """(1 − rate)·reference + rate·student, both without gradient."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"teacher_update_rate must be in [0, 1], got {rate}")
    return torch.lerp(reference_logits.detach(), student_logits.detach().to(reference_logits.dtype), rate)
