"""A model that has died: skipped updates made loud, and a stop when they keep coming.

The actor skips an optimizer update whose loss or gradient norm is non-finite (``workers.update_health``)
and reports why; the driver counts them (``actor/skipped_updates`` per step, in every logger), prints the
first one's cause once, and stops the run with one line once ``trainer.max_consecutive_skipped_updates``
updates in a row were skipped. Weights that are non-finite after a step stop the run at once: no later
update can repair them. While the latest updates were skipped, a checkpoint due is not written, so the
newest checkpoint stays the last one taken from a model that was still learning.
"""

from __future__ import annotations

import sys

from mopd.common.errors import TrainingDivergedError

__all__ = ["SkippedUpdateGuard"]

_NONFINITE_WEIGHTS = "non-finite weights"  # the prefix of workers.update_health.NONFINITE_WEIGHTS


class SkippedUpdateGuard:
    def __init__(self, max_consecutive: int | None, lr: float):
        self.max_consecutive = max_consecutive if max_consecutive and max_consecutive > 0 else None
        self.lr = lr
        self.consecutive = 0
        self.total = 0
        self.weights_dead = False
        self.last_cause: str | None = None
        self._reported = False
        self._withheld_save_reported = False

    def after_update(self, step: int, per_rank_causes: list[list[str]]) -> None:
        """Count this step's skipped updates (rank 0's list: every rank skips the same ones; the weight check is
        the only verdict that may differ by rank); print the first skip's cause once."""
        causes = list(per_rank_causes[0]) if per_rank_causes else []
        for ranks_causes in per_rank_causes[1:]:
            causes += [c for c in ranks_causes if c.startswith(_NONFINITE_WEIGHTS) and c not in causes]
        self.weights_dead = self.weights_dead or any(c.startswith(_NONFINITE_WEIGHTS) for c in causes)
        skips = [c for c in causes if not c.startswith(_NONFINITE_WEIGHTS)]
        self.total += len(skips)
        self.consecutive = self.consecutive + len(skips) if skips else 0
        self.last_cause = skips[-1] if skips else self.last_cause
        if skips and not self._reported:
            self._reported = True
            print(
                f"[mopd] warning: step {step} skipped {len(skips)} optimizer update(s): {skips[0]} "
                f"(counted as actor/skipped_updates; shown once per run; the run stops after "
                f"{self.max_consecutive or 'unlimited'} in a row, trainer.max_consecutive_skipped_updates)",
                file=sys.stderr,
                flush=True,
            )

    def stop_if_dead(self, step: int, latest_checkpoint) -> None:
        """Raise when the model cannot learn any more (called once the step is logged: its metrics are kept).

        ``latest_checkpoint()``: (step, path) of the last complete checkpoint, or None."""
        if self.weights_dead:
            raise TrainingDivergedError(
                f"the actor's weights are non-finite after the optimizer step of step {step}: the model cannot "
                f"recover; nothing of this step was checkpointed. Lower actor_rollout_ref.actor.optim.lr "
                f"(now {self.lr:g}) or set actor_rollout_ref.actor.grad_clip; {_where(latest_checkpoint())}"
            )
        if self.max_consecutive is not None and self.consecutive >= self.max_consecutive:
            raise TrainingDivergedError(
                f"the last {self.consecutive} optimizer updates were all skipped (up to step {step}; latest: "
                f"{self.last_cause}): the model no longer learns (trainer.max_consecutive_skipped_updates="
                f"{self.max_consecutive}). Lower actor_rollout_ref.actor.optim.lr (now {self.lr:g}) or check the "
                f"loss inputs; {_where(latest_checkpoint())}"
            )

    def may_save(self, step: int) -> bool:
        """False while the latest updates were skipped: such weights are not trusted as the newest checkpoint."""
        if self.weights_dead:
            return False
        if not self.consecutive:
            return True
        if not self._withheld_save_reported:
            self._withheld_save_reported = True
            print(
                f"[mopd] warning: checkpoint of step {step} not written: its last {self.consecutive} update(s) "
                "were skipped, so the newest checkpoint stays the last one of a model still learning (shown "
                "once per run)",
                file=sys.stderr,
                flush=True,
            )
        return False


def _where(latest) -> str:
    if latest is None:
        return "no checkpoint was written; rerun from the start"
    return (
        f"the last checkpoint, step {latest[0]} at {latest[1]}, ended on an applied update but may already "
        "carry the harm: to start over instead of resuming from it, add trainer.resume_mode=disable"
    )
