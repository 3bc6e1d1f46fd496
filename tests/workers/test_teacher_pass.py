"""The worker's teacher pass: one no-grad pass over a mini-batch in log-prob-sized chunks gives, row for
row, the head inputs the per-micro-batch teacher forward gives (float64: 1e-10), for the EMA and the
trust-region teacher, fixed and token-budget chunks, with and without shared prefixes.
"""

from __future__ import annotations

import pytest
import torch

from tests.workers.test_actor_loss import N, PROMPTS, _with_shared_teacher_prefixes, make_mini_batch
from trainer.main import CONFIG_DIR

pytestmark = pytest.mark.usefixtures("one_thread")


def _worker(*overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer.worker_group import free_port
    from workers.fsdp_worker import ActorRolloutRefWorker

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="mopd", overrides=[
            "trainer.backend=local", "trainer.device=cpu", "actor_rollout_ref.model.dtype=float32",
            f"data.train_batch_size={PROMPTS}", f"actor_rollout_ref.rollout.n={N}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=7", *overrides])
    worker = ActorRolloutRefWorker(OmegaConf.to_container(cfg, resolve=True), 0, 1)
    worker.set_master("127.0.0.1", free_port())
    worker.init_model(total_optimizer_steps=10)
    return worker


@pytest.mark.parametrize("overrides", [
    (),
    ("actor_rollout_ref.ref.shared_prefix=false",),
    ("actor_rollout_ref.actor.self_distillation.teacher_regularization=trust-region",),
    ("actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=40"),
], ids=["shared", "plain", "trust-region", "token-budget"])
def test_teacher_pass_equals_the_per_micro_batch_teacher(overrides):
    worker = _worker(*overrides)
    try:
        for p in worker.actor.parameters():  # a student unlike the teacher, so trust-region mixing shows
            p.data.add_(0.01 * torch.randn_like(p))
        batch = _with_shared_teacher_prefixes(make_mini_batch(worker.actor.config.vocab_size))
        stored = worker._teacher_pass(batch, N)
        assert stored.shape[:2] == batch["response_mask"].shape
        for start in range(0, PROMPTS * N, 2):  # other cuts than the pass's chunks
            part = {k: (v[start:start + 2] if k != "meta" else v) for k, v in batch.items()}
            valid = part["response_mask"].bool()
            torch.testing.assert_close(stored[start:start + 2][valid], worker.teacher.hidden(part), rtol=0, atol=2e-5)
            assert not stored[start:start + 2][~valid].any()
    finally:
        worker.shutdown()
