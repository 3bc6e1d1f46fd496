"""Paths that had never run on a GPU, each one short run of the embedded model through ``trainer.main``
(``trainer.backend=local``, bf16 compute over float32 masters):

- ``compute_log_prob`` with ``rollout_is`` (two mini-batches a step: off-policy, so old log-probs are
  recomputed and the IS weights compare them with the rollout's) under ``use_dynamic_bsz``;
- the trust-region teacher (SDPO);
- DPO's reference model;
- the memory plan checked before start (``trainer.device_memory_gb``) with the optimizer state offloaded.

``MOPD_GPU_TEST_DEVICE=cpu`` runs them on the CPU (a dry run of the test code).
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.test_train_cuda import metrics, train

pytestmark = pytest.mark.gpu
SHORT = (
    "trainer.total_training_steps=2",
    "trainer.test_freq=-1",
    "trainer.val_before_train=false",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=4",
)


def _finite(rows: list[dict], key: str) -> None:
    assert rows and all(torch.isfinite(torch.tensor(r[key])) for r in rows), [r.get(key) for r in rows]


def test_old_log_probs_with_rollout_is_under_token_budgets(device, tmp_path):
    run = tmp_path / "is"
    train(
        run,
        device,
        *SHORT,
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",  # 2 updates a step: off-policy
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=1024",
        "algorithm.rollout_correction.rollout_is=token",
        "actor_rollout_ref.model.use_remove_padding=true",
        config="grpo",
    )
    rows = metrics(run)
    _finite(rows, "actor/loss")
    assert [r["step"] for r in rows] == [1, 2]


def test_trust_region_teacher(device, tmp_path):
    run = tmp_path / "tr"
    train(
        run,
        device,
        *SHORT,
        "actor_rollout_ref.actor.self_distillation.teacher_regularization=trust-region",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        config="sdpo",
    )
    rows = metrics(run)
    _finite(rows, "actor/loss")
    assert all(r["perf/teacher_tokens_run"] > 0 for r in rows)


def test_dpo_reference(device, tmp_path):
    run = tmp_path / "dpo"
    train(
        run,
        device,
        *SHORT,
        "actor_rollout_ref.actor.policy_loss.loss_mode=dpo",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        config="grpo",
    )
    _finite(metrics(run), "actor/loss")


def test_memory_plan_checked_before_start_with_the_optimizer_offloaded(device, tmp_path):
    run = tmp_path / "plan"
    out = train(
        run,
        device,
        *SHORT,
        "trainer.device_memory_gb=16",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true",
        config="mopd",
    )
    assert "[mopd] memory plan fits" in out.stdout
    _finite(metrics(run), "actor/loss")
