"""The ``adv`` stage of the fit loop: token-level rewards (with the KL penalty when
``algorithm.use_kl_in_reward``) -> advantages of ``algorithm.adv_estimator``."""

from __future__ import annotations

from mopd.core.advantages import compute_advantages, token_level_scores
from mopd.core.kl import apply_kl_in_reward, make_kl_controller
from trainer.config_sections import AlgorithmConfig
from workers.rollout_batch import RolloutBatch


class AdvantageStage:
    def __init__(self, algorithm: AlgorithmConfig):
        self.estimator = algorithm.adv_estimator
        self.norm_by_std = algorithm.norm_adv_by_std_in_grpo
        self.gamma = algorithm.gamma
        self.kl_in_reward = algorithm.use_kl_in_reward
        self.kl_kind = algorithm.kl_penalty
        self.kl_controller = make_kl_controller(algorithm.kl_ctrl) if self.kl_in_reward else None

    def __call__(self, batch: RolloutBatch) -> dict[str, float]:
        """Set ``batch.advantages`` (and ``token_level_rewards``); return the stage's metrics."""
        mask = batch.response_mask
        rewards = token_level_scores(batch.scores, mask)
        metrics: dict[str, float] = {}
        if self.kl_in_reward:
            rewards, metrics = apply_kl_in_reward(
                rewards, batch.old_log_probs, batch.ref_log_probs, mask, self.kl_controller, self.kl_kind
            )
        batch.token_level_rewards = rewards
        advantages = compute_advantages(
            self.estimator, rewards, mask, batch.uid, norm_adv_by_std_in_grpo=self.norm_by_std, gamma=self.gamma
        )
        batch.advantages = advantages
        valid = advantages[mask.bool()]
        if valid.numel():
            metrics.update(
                {
                    "critic/advantages/mean": float(valid.mean()),
                    "critic/advantages/max": float(valid.max()),
                    "critic/advantages/min": float(valid.min()),
                }
            )
        metrics["critic/rewards/mean"] = float((rewards * mask).sum(-1).mean()) if rewards.numel() else 0.0
        return metrics

    def state_dict(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict()} if self.kl_controller is not None else {}

    def load_state_dict(self, state: dict | None) -> None:
        if self.kl_controller is not None and state and "kl_controller" in state:
            self.kl_controller.load_state_dict(state["kl_controller"])
