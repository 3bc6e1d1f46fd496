"""The actor's loss modes (``actor_rollout_ref.actor.policy_loss.loss_mode``) and their families.

The one home of these lists: the config check (``trainer/config_schema.py``) and the loss dispatch
(``workers/actor.py``) both read them here.
"""

DISTILLATION_MODES = ("mopd", "sdpo")  # the teacher's token distributions, distilled into the student
PPO_MODES = ("grpo", "vanilla")  # PPO-clip on advantages
PREFERENCE_MODES = ("dpo", "simpo")  # pairs formed within one prompt's rollouts (kept in one micro-batch)
SFT_MODES = ("verified_sft",)  # supervised on the successful rollouts
LOSS_MODES = DISTILLATION_MODES + PPO_MODES + PREFERENCE_MODES + SFT_MODES
GROUP_MODES = ("mopd", "grpo", "vanilla", "dpo", "simpo")  # need >= 2 samples per prompt
