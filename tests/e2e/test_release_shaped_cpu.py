"""A CPU run at world size 4 shaped like the release: micro-batches of one sequence, packed sequences,
gradient checkpointing, token-bounded generation and log-prob passes, the optimizer state offloaded outside
the update, and the memory plan checked before the workers start (planned for 8 GB devices)."""

from __future__ import annotations

import pytest
import torch
from test_train_cpu import fixture_dir, metrics, train  # noqa: F401 (the module's fixture)


@pytest.mark.slow
def test_four_ray_workers_train_with_release_shaped_batches_and_budgets(fixture_dir, tmp_path):  # noqa: F811
    run = tmp_path / "release-shaped"
    result = train(
        fixture_dir,
        run,
        "trainer.backend=ray",
        "trainer.n_gpus_per_node=4",
        "trainer.device=cpu",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",  # the release's micro-batch
        "actor_rollout_ref.model.use_remove_padding=true",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        "actor_rollout_ref.rollout.generate_max_token_len_per_gpu=64",  # ~1 row per generate() call here
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "algorithm.rollout_correction.rollout_is=token",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true",
        "trainer.device_memory_gb=8",
        "trainer.val_before_train=true",
        "trainer.test_freq=2",  # validation goes through the bounded engine too
        config="mopd",
    )
    assert "[mopd] memory plan fits" in result.stdout
    rows = [r for r in metrics(run) if "actor/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert torch.isfinite(torch.tensor(row["actor/loss"])) and row["actor/grad_norm"] > 0
        assert row["perf/teacher_tokens_run"] > 0
